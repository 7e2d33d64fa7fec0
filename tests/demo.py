"""The demo: start a real Redis, real DNS (unbound + rbldnsd) and a real Postfix wired with
postward's snippets, push real mail through them, print what happened, and remove it all.

    bash .ci/setup && .venv/bin/python -m tests.demo

Everything runs on a random private loopback address in a temporary directory; the machine's own
Postfix, Redis and resolver are never touched. Each daemon adds its own scene as it lands.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from postward.core.config_values import HostPort
from postward.core.dns import Resolver
from postward.core.metrics import Metrics
from postward.core.redis_store import RedisStore
from postward.core.settings import DnsSettings, RedisSettings
from tests.classifier.daemon_fixture import ClassifierDaemon
from tests.classifier.test_pipe_filter import HAM_WORDS, SPAM_WORDS, USER, corpus, message
from tests.classifier.test_postfix_dovecot import _installed_here
from tests.dkim.dkim_fixtures import DkimKeys, dkim_local_zones
from tests.dkim.milter_fixture import DkimDaemon, KeySpec
from tests.dkim.peers import DkimPeers, generate_key
from tests.dkim.test_milter_postfix import xclient_send
from tests.policyd.daemon_fixture import PolicyDaemon
from tests.policyd.test_postfix_integration import guide_rules_with_greylist, smtp_as
from tests.testbed.dns_fixtures import (
    CLIENT_CLEAN,
    CLIENT_ON_ONE,
    CLIENT_ON_THREE,
    DEFAULT_ZONES,
    DNSBL_ZONES,
)
from tests.testbed.dns_servers import DnsTestbed
from tests.testbed.dovecot import DovecotInstance
from tests.testbed.mail import make_message, send, smtp_source
from tests.testbed.net import private_loopback, wait_until
from tests.testbed.postfix import PostfixInstance
from tests.testbed.postfix_fixtures import SNIPPETS
from tests.testbed.redis_server import RedisServer


def say(text: str = "") -> None:
    print(text, flush=True)


@contextmanager
def started(thing):  # type: ignore[no-untyped-def]
    thing.start()
    try:
        yield thing
    finally:
        thing.stop()


@contextmanager
def workspace() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="postward-demo-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def dnsbl_scene(dns: DnsTestbed, redis: RedisServer) -> None:
    say("== DNSBL lookups through postward's resolver, shared through Redis")
    settings = DnsSettings(nameservers=(HostPort(dns.address, dns.port),), timeout=2.0)
    for round_no in (1, 2):
        metrics = Metrics("demo")
        store = RedisStore.from_settings(RedisSettings(url=redis.url), metrics)
        resolver = Resolver(settings, metrics, store=store)
        try:
            for client in (CLIENT_ON_THREE, CLIENT_ON_ONE, CLIENT_CLEAN):
                reverse = ".".join(reversed(client.split(".")))
                listed, sources = [], set()
                for zone in DNSBL_ZONES:
                    a = await resolver.query(f"{reverse}.{zone}", "A")
                    sources.add("Redis cache" if a.from_cache else "unbound -> rbldnsd")
                    if a.ok:
                        listed.append(f"{zone}={a.records[0]}")
                where = " + ".join(sorted(sources))
                say(f"  round {round_no}: {client:<15} listed on {len(listed)} "
                    f"({', '.join(listed) or 'none'})  [from {where}]")
            hits = metrics.value("postward_demo_dns_cache_hits_total", {"type": "A"})
            say(f"  round {round_no}: {int(hits)} of 9 answers came from the shared cache")
        finally:
            await resolver.close()
            await store.close()
    say()


def mail_scene(postfix: PostfixInstance) -> None:
    say("== Mail through a real Postfix")
    host, port = postfix.smtp_service.rsplit(":", 1)
    msg = make_message(sender="alice@sender.test", recipients="bob@example.test",
                       subject="postward demo")
    result = send(host, int(port), "alice@sender.test", ["bob@example.test"], msg)
    say(f"  smtplib: RCPT {result.rcpt['bob@example.test'].code}, "
        f"DATA {result.data.code if result.data else '-'} ({result.queue_id or 'no queue id'})")
    delivered = postfix.maildir.wait_for(1, timeout=30)
    say(f"  delivered to {postfix.maildir.root}: Subject: {delivered[0].message['Subject']}")
    smtp_source(host, int(port), count=20, sessions=2, size=2000,
                sender="bulk@sender.test", recipient="bob@example.test")
    postfix.maildir.wait_for(21, timeout=60)
    say("  smtp-source: 20 more messages over 2 sessions, all 21 delivered")
    say()


def policyd_scene(root: Path, address: str, redis: RedisServer, dns: DnsTestbed) -> None:
    say("== postward-policyd behind Postfix, running the guide's postfwd.cf")
    say("   (test-bed DNSBLs; 'ask(127.0.0.1:10023)' changed to 'greylist()')")
    (root / "policyd").mkdir()
    policyd = PolicyDaemon(root / "policyd", address, guide_rules_with_greylist(), redis.url,
                           dns.nameserver).start()
    postfix = PostfixInstance(root / "postfix-policyd", address,
                              snippets=[SNIPPETS / "policyd.main.cf"],
                              overrides={"postward_policy_service": policyd.service,
                                         "smtpd_authorized_xclient_hosts": "127.0.0.0/8"},
                              name="postfix-policyd")
    try:
        postfix.start()
        for client, what in ((CLIENT_ON_THREE, "on 3 DNSBLs"), (CLIENT_ON_ONE, "on 1 DNSBL"),
                             (CLIENT_CLEAN, "on none")):
            code, text = smtp_as(postfix, client, "bob@example.test")
            say(f"  {client:<15} {what:<11} RCPT -> {code} {' '.join(text.split())[:110]}")
        say("  retrying the greylisted client until the 1 s delay has passed ...")
        wait_until(lambda: smtp_as(postfix, CLIENT_ON_ONE, "carol@example.test")[0] == 250,
                   timeout=30, interval=0.5, what="greylisted client accepted")
        [msg] = postfix.maildir.wait_for(1, timeout=30, recipient="carol@example.test")
        say(f"  {CLIENT_ON_ONE:<15} accepted on retry; delivered with X-Greylist: "
            f"{msg.message['X-Greylist']}")
    finally:
        postfix.stop()
        policyd.stop()
    say()


def dkim_scene(root: Path, address: str, redis: RedisServer, dns: DnsTestbed,
               keys: DkimKeys) -> None:
    say("== postward-dkim: the guide's opendkim.conf, KeyTable, SigningTable, TrustedHosts")
    rx_dkim = DkimDaemon(root / "dkim-rx", address, redis_url=redis.url,
                         nameserver=dns.nameserver).start()
    tx_dkim = DkimDaemon(root / "dkim-tx", address, redis_url=redis.url,
                         nameserver=dns.nameserver, trusted_hosts=["127.0.0.1", address],
                         keys=[KeySpec("example.test", keys.rsa2048.selector,
                                       keys.rsa2048.private_pem),
                               KeySpec("example.test", keys.ed25519.selector,
                                       keys.ed25519.private_pem, "ed25519")]).start()
    receiver = PostfixInstance(root / "postfix-rx", address, domains=["receiver.test"],
                               snippets=[SNIPPETS / "dkim.main.cf"],
                               overrides={"postward_dkim_milter": rx_dkim.milter},
                               name="postfix-rx")
    sender = None
    try:
        receiver.start()
        sender = PostfixInstance(root / "postfix-tx", address, domains=["sender.test"],
                                 relay_routes={"receiver.test": receiver.nexthop},
                                 snippets=[SNIPPETS / "dkim.main.cf"],
                                 overrides={"postward_dkim_milter": tx_dkim.milter},
                                 name="postfix-tx").start()
        say(f"  sending Postfix {sender.smtp_service} + postward-dkim {tx_dkim.milter} (signs)")
        say(f"  receiving Postfix {receiver.smtp_service} + postward-dkim {rx_dkim.milter} "
            f"(verifies)")
        message = make_message("alice@example.test", "bob@receiver.test",
                               subject="signed by postward").as_bytes()
        code, _ = xclient_send(sender, "alice@example.test", "bob@receiver.test", message)
        say(f"  alice@example.test -> bob@receiver.test from an InternalHost: DATA {code}")
        [got] = receiver.maildir.wait_for(1, timeout=30)
        for sig in got.message.get_all("DKIM-Signature", []):
            tags = dict(t.strip().split("=", 1) for t in " ".join(str(sig).split()).split(";")
                        if "=" in t)
            say(f"  DKIM-Signature: a={tags['a']} d={tags['d']} s={tags['s']} "
                f"c={tags['c']} h={tags['h']}")
        results = " ".join(str(got.message["Authentication-Results"]).split())
        say(f"  at the receiver: Authentication-Results: {results}")
        peers = DkimPeers(dns.nameserver, root / "peers")
        say(f"  OpenDKIM says:   {peers.opendkim_verify(got.raw).results}")
        say(f"  Mail::DKIM says: {peers.mail_dkim_verify(got.raw).results} "
            f"(it knows no Ed25519)")
    finally:
        if sender is not None:
            sender.stop()
        receiver.stop()
        tx_dkim.stop()
        rx_dkim.stop()
    say()


def classifier_scene(root: Path, address: str, redis: RedisServer) -> None:
    say("== postward-filter in place of dspam: the guide's pipe line, map and Sieve rule")
    dovecot_files = SNIPPETS / "dovecot"
    dovecot = DovecotInstance(root / "dovecot", address, users=[USER],
                              user_sieve=(dovecot_files / "dspam.sieve").read_text(),
                              report_spam_sieve=dovecot_files / "report-spam.sieve",
                              report_ham_sieve=dovecot_files / "report-ham.sieve").start()
    agent = " ".join([*dovecot.lda_command, "-f", "%s", "-d", "%u"])
    daemon = ClassifierDaemon(root / "classifierd", redis.url, agent).start()
    postfix = None
    try:
        retrain = dovecot.pipe_bin_dir / "postward-retrain"
        retrain.write_text(_installed_here((dovecot_files / "postward-retrain").read_text(),
                                           daemon))
        retrain.chmod(0o755)
        master = root / "classifier.master.cf"
        master.write_text(_installed_here((SNIPPETS / "classifier.master.cf").read_text(),
                                          daemon).replace("user=postward", "user=mail"))
        access = root / "dspam_filter_access"
        access.write_text((SNIPPETS / "dspam_filter_access").read_text())
        postfix = PostfixInstance(root / "postfix-mx", address, domains=["receiver.test"],
                                  snippets=[SNIPPETS / "classifier.main.cf", master],
                                  overrides={"postward_filter_access": f"pcre:{access}"},
                                  name="postfix-mx").start()
        for label, words in (("spam", SPAM_WORDS), ("innocent", HAM_WORDS)):
            out = daemon.train(label, corpus(root / f"corpus-{label}", words))
            say(f"  postward classifier train --global --class {label}: {out.strip()}")
        host, port = postfix.smtp_service.rsplit(":", 1)
        for subject, words in (("a great offer", SPAM_WORDS), ("meeting notes", HAM_WORDS)):
            send(host, int(port), "someone@sender.test", [USER], message(subject, words))
        for mailbox in ("Spam", "INBOX"):
            [got] = dovecot.wait_for(USER, mailbox, 1, timeout=30)
            fields = dict(line.split(": ", 1) for line in got.decode().split("\n")
                          if line.startswith("X-DSPAM-") and ": " in line)
            say(f"  {mailbox:<5}: X-DSPAM-Result: {fields['X-DSPAM-Result']}, Probability "
                f"{fields['X-DSPAM-Probability']}, Signature {fields['X-DSPAM-Signature']}")
        imap = dovecot.imap(USER)
        imap.select("INBOX")
        [uid] = imap.uid("SEARCH", None, "ALL")[1][0].split()
        imap.uid("MOVE", uid, "Spam")
        imap.logout()
        wait_until(lambda: "relearnt" in daemon.log_text(), timeout=20,
                   what="the IMAP move retrained")
        say("  IMAP: moved the ham into Spam -> IMAPSieve -> postward-retrain: "
            "'relearnt from innocent to spam'")
    finally:
        if postfix is not None:
            postfix.stop()
        daemon.stop()
        daemon.remove()
        dovecot.stop()
    say()


def main() -> int:
    address = private_loopback()
    say(f"postward demo on private address {address}")
    say()
    with workspace() as root, ExitStack() as stack:
        (root / "redis").mkdir()
        redis = stack.enter_context(started(RedisServer(root / "redis", address)))
        say(f"redis-server   {redis.url}")
        (root / "keys").mkdir()
        keys = DkimKeys(*(generate_key(root / "keys", domain, selector, algorithm, bits)
                          for domain, selector, algorithm, bits in (
                              ("example.test", "rsa2048", "rsa", 2048),
                              ("example.test", "rsa1024", "rsa", 1024),
                              ("example.test", "ed", "ed25519", 256),
                              ("other.test", "sel", "rsa", 2048))))
        dns = stack.enter_context(started(DnsTestbed(root / "dns", address, DEFAULT_ZONES,
                                                     dkim_local_zones(keys))))
        say(f"unbound        {dns.nameserver} (rbldnsd behind it: {', '.join(DNSBL_ZONES)})")
        postfix = stack.enter_context(started(PostfixInstance(root / "postfix", address)))
        say(f"postfix        {postfix.smtp_service} delivering example.test to a Maildir")
        say()
        asyncio.run(dnsbl_scene(dns, redis))
        mail_scene(postfix)
        policyd_scene(root, address, redis, dns)
        dkim_scene(root, address, redis, dns, keys)
        classifier_scene(root, address, redis)
    say("everything stopped and removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
