"""The real-Postfix test bed itself: delivery, bulk load, snippets, relay refusal, isolation,
teardown. If these fail, every Postfix-based test of postward would fail for the wrong reason."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from tests.testbed.mail import SmtpRejected, make_message, send, smtp_source, try_send
from tests.testbed.net import free_port, wait_until
from tests.testbed.postfix import (
    PostfixInstance,
    SmtpSink,
    SnippetError,
    parse_main_cf,
    parse_master_cf,
)
from tests.testbed.postfix_fixtures import MakePostfix


def _pgrep(*args: str) -> list[str]:
    proc = subprocess.run(["pgrep", "-a", *args], capture_output=True, text=True)
    return proc.stdout.splitlines()


def _banner(host: str, port: int) -> str:
    result = try_send(host, port, "a@sender.test", [], b"")
    return result.banner.text


# --------------------------------------------------------------------------------------------
# Snippet parsing (no daemons)


def test_main_cf_fragment_syntax() -> None:
    text = (
        "# comment\n"
        "postward_policy_service = inet:127.0.0.1:10040\n"
        "\n"
        "smtpd_recipient_restrictions =\n"
        "    permit_mynetworks,\n"
        "  # a comment inside a continued value is skipped, as Postfix does\n"
        "    reject_unauth_destination,\n"
        "\tcheck_policy_service $postward_policy_service\n"
    )
    assert parse_main_cf(text) == [
        ("postward_policy_service", "inet:127.0.0.1:10040"),
        ("smtpd_recipient_restrictions",
         "permit_mynetworks, reject_unauth_destination, "
         "check_policy_service $postward_policy_service"),
    ]
    with pytest.raises(SnippetError, match=":2:"):
        parse_main_cf("a = b\nnot a parameter\n", "x.main.cf")
    with pytest.raises(SnippetError, match="continuation"):
        parse_main_cf("  leading = whitespace\n")


def test_master_cf_fragment_syntax() -> None:
    text = (
        "postward  unix  -  n  n  -  10  pipe\n"
        "  flags=Rq user=nobody argv=/bin/cat\n"
        "127.0.0.1:10026 inet n - n - - smtpd -o content_filter=\n"
    )
    entries = parse_master_cf(text)
    assert [key for key, _ in entries] == ["postward/unix", "127.0.0.1:10026/inet"]
    assert entries[0][1].endswith("pipe flags=Rq user=nobody argv=/bin/cat")
    with pytest.raises(SnippetError):
        parse_master_cf("smtp inet n - n\n")


# --------------------------------------------------------------------------------------------
# A running instance


@pytest.mark.integration
def test_message_goes_through_postfix_into_the_maildir(postfix: PostfixInstance) -> None:
    token = uuid.uuid4().hex
    msg = make_message("alice@sender.test", "bob@example.test", subject=f"roundtrip {token}",
                       body=f"body line {token}\n", headers={"X-Test-Token": token})
    result = send(postfix.address, postfix.port, "alice@sender.test", ["bob@example.test"], msg)
    assert result.rcpt["bob@example.test"].code == 250
    assert result.queue_id

    [delivered] = postfix.maildir.wait_for(1, recipient="bob@example.test")
    got = delivered.message
    assert f"body line {token}" in delivered.body
    assert got["Subject"] == f"roundtrip {token}"
    assert got["X-Test-Token"] == token
    assert got["Message-ID"] == msg["Message-ID"]
    assert got["Delivered-To"] == "bob@example.test"
    assert got["Return-Path"] == "<alice@sender.test>"
    received = str(got["Received"])
    assert f"by {postfix.hostname} (Postfix)" in received
    assert result.queue_id in received
    assert delivered.path.is_relative_to(postfix.mail_dir / "example.test")
    postfix.wait_for_log(rf"{result.queue_id}: to=<bob@example.test>, relay=virtual.*"
                         r"status=sent")


@pytest.mark.integration
def test_smtp_source_bulk_delivery(postfix: PostfixInstance) -> None:
    smtp_source(postfix.address, postfix.port, count=20, sessions=4, size=2000,
                sender="bulk@sender.test", recipient="bulk@example.test")
    postfix.maildir.wait_for(20, recipient="bulk@example.test")
    postfix.wait_for_empty_queue()
    messages = postfix.maildir.messages(recipient="bulk@example.test")
    assert len(messages) == 20
    assert all(len(m.raw) > 2000 for m in messages)
    assert postfix.maildir.messages(recipient="nobody-else@example.test") == []


@pytest.mark.integration
def test_unknown_domain_is_refused_at_rcpt_and_nothing_is_queued(postfix: PostfixInstance) -> None:
    result = try_send(postfix.address, postfix.port, "spammer@sender.test",
                      ["victim@elsewhere.test"], make_message())
    reply = result.rcpt["victim@elsewhere.test"]
    assert reply.permanent and reply.code == 554
    assert "Relay access denied" in reply.text
    assert result.data is None  # no recipient accepted, so no DATA
    with pytest.raises(SmtpRejected) as refused:
        send(postfix.address, postfix.port, "spammer@sender.test", ["victim@elsewhere.test"],
             make_message())
    assert refused.value.code == 554
    postfix.wait_for_log(r"NOQUEUE: reject: RCPT from .*: 554 5\.7\.1 <victim@elsewhere\.test>")
    assert postfix.queue_ids() == []
    assert postfix.maildir.messages() == []


@pytest.mark.integration
def test_per_recipient_replies_include_temporary_failures(make_postfix: MakePostfix) -> None:
    postfix = make_postfix(overrides={
        "smtpd_recipient_restrictions":
            "check_recipient_access inline:{ { later@example.test = 450 4.2.0 try later } }, "
            "permit",
    })
    result = try_send(postfix.address, postfix.port, "a@sender.test",
                      ["later@example.test", "now@example.test"], make_message())
    assert result.rcpt["later@example.test"].temporary
    assert "try later" in result.rcpt["later@example.test"].text
    assert result.rcpt["now@example.test"].code == 250
    assert result.delivered
    postfix.maildir.wait_for(1, recipient="now@example.test")
    assert postfix.maildir.messages(recipient="later@example.test") == []


@pytest.mark.integration
def test_snippets_and_overrides_are_applied(
    make_postfix: MakePostfix, testbed_dir: Path, loopback: str
) -> None:
    policy_port = free_port(loopback)
    reinject_port = free_port(loopback)
    main_snippet = testbed_dir / "example.main.cf"
    main_snippet.write_text(
        "# addresses go through postward_* parameters, so they change in one place\n"
        "postward_policy_service = inet:127.0.0.1:10040\n"
        "postward_banner = snippet banner\n"
        "smtpd_recipient_restrictions =\n"
        "    reject_unauth_destination,\n"
        "    check_policy_service $postward_policy_service\n"
        "smtpd_helo_required = yes\n"
    )
    master_snippet = testbed_dir / "example.master.cf"
    master_snippet.write_text(
        "# the public smtpd: the test bed maps smtp/inet onto its own listener\n"
        "smtp      inet  n       -       y       -       -       smtpd\n"
        "    -o { smtpd_banner = $myhostname $postward_banner }\n"
        "# a second listener, moved to a private address by service_renames\n"
        "127.0.0.1:10026 inet n  -       n       -       -       smtpd\n"
        "    -o { smtpd_banner = $myhostname reinjection }\n"
    )
    postfix = make_postfix(
        snippets=[main_snippet, master_snippet],
        overrides={"postward_policy_service": f"inet:{loopback}:{policy_port}"},
        service_renames={"127.0.0.1:10026/inet": f"{loopback}:{reinject_port}"},
    )
    assert postfix.postconf("postward_policy_service") == f"inet:{loopback}:{policy_port}"
    assert postfix.postconf("smtpd_helo_required") == "yes"
    assert postfix.postconf("smtpd_recipient_restrictions", expand=True).endswith(
        f"check_policy_service inet:{loopback}:{policy_port}")
    # chroot is forced off, also for entries a snippet brings in with chroot = y
    assert postfix.master_entry(f"{postfix.smtp_service}/inet").split()[4] == "n"
    assert postfix.master_entry("127.0.0.1:10026/inet") == ""
    assert _banner(postfix.address, postfix.port) == f"{postfix.hostname} snippet banner"
    assert _banner(loopback, reinject_port) == f"{postfix.hostname} reinjection"


@pytest.mark.integration
def test_reload_applies_a_changed_parameter(postfix: PostfixInstance) -> None:
    assert _banner(postfix.address, postfix.port) == f"{postfix.hostname} ESMTP Postfix"
    postfix.update({"smtpd_banner": "$myhostname reloaded"})
    assert _banner(postfix.address, postfix.port) == f"{postfix.hostname} reloaded"


@pytest.mark.integration
def test_relay_to_smtp_sink(make_postfix: MakePostfix, smtp_sink: SmtpSink) -> None:
    postfix = make_postfix(relay_routes={"relay.test": smtp_sink.nexthop})
    result = send(postfix.address, postfix.port, "a@sender.test",
                  ["x@relay.test", "y@relay.test"], make_message(body="relayed\n"))
    [captured] = smtp_sink.wait_for(1)
    assert captured.recipients == ["x@relay.test", "y@relay.test"]
    assert captured.message["X-Client-Addr"] == postfix.address  # smtp_bind_address
    assert "relayed" in captured.body
    assert result.queue_id in str(captured.message.get_all("Received")[1])
    postfix.wait_for_empty_queue()


@pytest.mark.integration
def test_deferred_mail_stays_queued_until_flush(
    make_postfix: MakePostfix, testbed_dir: Path, loopback: str
) -> None:
    port = free_port(loopback)
    refusing = SmtpSink(testbed_dir / "refusing-sink", loopback, port, extra_args=["-r", "RCPT"])
    with refusing:
        postfix = make_postfix(relay_routes={"relay.test": refusing.nexthop})
        result = send(postfix.address, postfix.port, "a@sender.test", ["x@relay.test"],
                      make_message(body="deferred\n"))
        postfix.wait_for_log(rf"{result.queue_id}: to=<x@relay\.test>.*status=deferred")
        assert postfix.queue_ids() == [result.queue_id]
        assert not postfix.queue_is_empty()
    with SmtpSink(testbed_dir / "accepting-sink", loopback, port) as accepting:
        postfix.flush()
        [captured] = accepting.wait_for(1)
        assert "deferred" in captured.body
        postfix.wait_for_empty_queue()


@pytest.mark.integration
def test_two_instances_run_at_once(make_postfix: MakePostfix) -> None:
    first, second = make_postfix(), make_postfix()
    assert first.port != second.port
    assert first.queue_dir != second.queue_dir and first.data_dir != second.data_dir
    send(first.address, first.port, "a@sender.test", ["one@example.test"], make_message())
    send(second.address, second.port, "a@sender.test", ["two@example.test"], make_message())
    [one] = first.maildir.wait_for(1)
    [two] = second.maildir.wait_for(1)
    assert one.recipients == ["one@example.test"]
    assert two.recipients == ["two@example.test"]
    assert first.hostname in str(one.message["Received"])
    assert second.hostname in str(two.message["Received"])
    assert first.running() and second.running()


@pytest.mark.integration
def test_stop_leaves_no_process(testbed_dir: Path, loopback: str) -> None:
    postfix = PostfixInstance(testbed_dir / "postfix", loopback)
    try:
        postfix.start()
        # make master spawn smtpd, cleanup, trivial-rewrite and virtual as well
        send(postfix.address, postfix.port, "a@sender.test", ["b@example.test"], make_message())
        postfix.maildir.wait_for(1)
        group = str(postfix.master_pid)
        assert len(_pgrep("-g", group)) >= 5
    finally:
        postfix.stop()
    assert not postfix.running()
    assert postfix.pids() == []
    # Dead children stay zombies until PID 1 reaps them: poll until pgrep sees nothing at all.
    wait_until(lambda: not _pgrep("-g", group), timeout=15, what="process group empty")
    assert _pgrep("-f", str(postfix.config_dir)) == []
    assert postfix.pids(zombies=True) == []
    with pytest.raises(OSError):
        try_send(postfix.address, postfix.port, "a@sender.test", ["b@example.test"], b"x")
