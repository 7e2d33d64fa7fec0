"""postward-filter as Postfix runs it (``python -I -S /opt/postward/lib/postward-filter.py``
with dspam's arguments, as the pipe user, installed and byte-compiled as the Debian package
does), in front of a real postward-classifierd, Redis and Dovecot LDA (the guide's
UntrustedDeliveryAgent). Every fault of ours must end in exit 75 with nothing delivered, so
Postfix keeps the message; every success only after the agent delivered."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from postward.classifier import filter_client
from tests.classifier.daemon_fixture import PYTHON, ROOT, ClassifierDaemon

pytestmark = pytest.mark.integration

USER = "bob@receiver.test"
SPAM_WORDS = "cheap viagra pills best price offer click now casino winner"
HAM_WORDS = "project meeting agenda minutes tuesday team regards report budget review"


def message(subject: str, words: str, extra_headers: str = "") -> bytes:
    return (f"From: someone@sender.test\nTo: {USER}\nSubject: {subject}\n{extra_headers}"
            f"Message-ID: <{abs(hash(subject))}@sender.test>\n\n"
            f"{words}\n{words.upper()}\n").encode()


def corpus(directory: Path, words: str, count: int = 20) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (directory / f"{i}.eml").write_bytes(message(f"{words.split()[i % 5]} {i}", words))
    return directory


# The package's install lines for the pipe client: a file of the checkout, its name in
# /opt/postward/lib. The tests install from these lines, so they run the layout the package has.
_INSTALL_LINE = re.compile(r"^\s*install -D -m 0644 (daemons/postward/classifier/\S+) "
                           r"\$\(VENV\)/lib/(\S+)$", re.M)
LAUNCHER = "postward-filter.py"


def install_as_packaged(directory: Path, compile_: bool = True) -> Path:
    """The pipe client as debian/rules installs it into ``directory`` (root's, world-readable,
    like /opt/postward/lib) and, with ``compile_``, byte-compiled as postward.postinst does;
    the launcher's path."""
    lines = _INSTALL_LINE.findall((ROOT / "debian" / "rules").read_text())
    assert {name for _src, name in lines} >= {LAUNCHER, "filter_client.py"}, lines
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    directory.chmod(0o755)
    for source, name in lines:
        shutil.copyfile(ROOT / source, directory / name)
        (directory / name).chmod(0o644)
    postinst = (ROOT / "debian" / "postward.postinst").read_text()
    assert re.search(r"-m compileall .*/opt/postward/lib\b", postinst), postinst
    if compile_:
        subprocess.run([PYTHON, "-m", "compileall", "-q", str(directory)], check=True,
                       timeout=60)
    return directory / LAUNCHER


def filter_argv(daemon: ClassifierDaemon, *args: str) -> list[str]:
    """The command of the guide's master.cf line for this daemon: the client installed as
    packaged in the daemon's own world-readable directory (removed with it)."""
    launcher = daemon.socket_dir / "lib" / LAUNCHER
    if not launcher.exists():
        install_as_packaged(launcher.parent)
    return [PYTHON, "-I", "-S", str(launcher), f"--socket={daemon.socket_path}", *args]


@pytest.fixture
def world(make_classifierd, make_dovecot, redis_server, testbed_dir):  # type: ignore[no-untyped-def]
    dovecot = make_dovecot(users=[USER])
    agent = shlex.join([*dovecot.lda_command, "-f", "%s", "-d", "%u"])
    daemon: ClassifierDaemon = make_classifierd(redis_url=redis_server.url,
                                                delivery_agent=agent)
    daemon.train("spam", corpus(testbed_dir / "spam", SPAM_WORDS))
    daemon.train("innocent", corpus(testbed_dir / "ham", HAM_WORDS))
    return daemon, dovecot


def run_filter(daemon: ClassifierDaemon, msg: bytes, *args: str, user: str = "mail"
               ) -> subprocess.CompletedProcess[bytes]:
    argv = filter_argv(daemon,
                       *(args or ("--deliver=innocent,spam", "--user", USER, "-i",
                                  "-f", "someone@sender.test", "--", USER)))
    # As Postfix's pipe(8) runs it: user= and that user's group.
    return subprocess.run(argv, input=msg, capture_output=True, timeout=60, user=user,
                          group=user, extra_groups=[])


def test_spam_is_filed_into_spam_and_ham_into_inbox(world) -> None:  # type: ignore[no-untyped-def]
    daemon, dovecot = world
    assert run_filter(daemon, message("offer", SPAM_WORDS)).returncode == 0
    assert run_filter(daemon, message("notes", HAM_WORDS)).returncode == 0
    [spam] = dovecot.wait_for(USER, "Spam", 1, timeout=20)
    [ham] = dovecot.wait_for(USER, "INBOX", 1, timeout=20)
    assert b"X-DSPAM-Result: Spam" in spam and b"X-DSPAM-Signature: " in spam
    assert b"X-DSPAM-Result: Innocent" in ham and b"X-DSPAM-Factors: " in ham


def test_forged_verdict_headers_are_removed(world) -> None:  # type: ignore[no-untyped-def]
    daemon, dovecot = world
    forged = message("offer", SPAM_WORDS, "X-DSPAM-Result: Innocent\n"
                                          "X-DSPAM-Reclassified: Innocent\n\tfolded\n")
    assert run_filter(daemon, forged).returncode == 0
    [got] = dovecot.wait_for(USER, "Spam", 1, timeout=20)
    assert b"Reclassified" not in got and got.count(b"X-DSPAM-Result") == 1


def test_daemon_down_exits_75_and_delivers_nothing(world) -> None:  # type: ignore[no-untyped-def]
    daemon, dovecot = world
    daemon.stop()
    done = run_filter(daemon, message("notes", HAM_WORDS))
    assert done.returncode == 75, done.stderr
    assert b"cannot reach postward-classifierd" in done.stderr
    assert dovecot.mailbox_messages(USER, "INBOX") == []


def test_redis_down_exits_75(world, redis_server) -> None:  # type: ignore[no-untyped-def]
    daemon, dovecot = world
    redis_server.stop()
    done = run_filter(daemon, message("notes", HAM_WORDS))
    assert done.returncode == 75, done.stderr
    assert dovecot.mailbox_messages(USER, "INBOX") == []
    redis_server.start()
    assert run_filter(daemon, message("notes", HAM_WORDS)).returncode == 0


def test_agent_failures_are_passed_on_or_deferred(world, make_classifierd, redis_server) -> None:  # type: ignore[no-untyped-def]
    daemon, _dovecot = world
    # Dovecot's own verdict on an unknown user (67) is Postfix's to bounce.
    done = run_filter(daemon, message("x", HAM_WORDS), "--deliver=innocent,spam", "--user",
                      "nobody@receiver.test", "--", "nobody@receiver.test")
    assert done.returncode == 67, done.stderr
    # An agent that cannot run at all is our fault: deferred.
    broken = make_classifierd("broken-agent", redis_url=redis_server.url,
                              delivery_agent="/nonexistent/deliver -d %u")
    done = run_filter(broken, message("x", HAM_WORDS))
    assert done.returncode == 75 and b"cannot run '/nonexistent/deliver'" in done.stderr


def test_an_agent_exec_fails_other_than_oserror_the_child_exits_75() -> None:
    """execv() raises ValueError (not OSError) for an empty name or a NUL byte; the forked
    child must still exit 75 and never return into the filter's own code."""
    assert filter_client.deliver("", b"Subject: x\n\nbody\n") == 75
    assert filter_client.deliver("/bin/true\tnul\0byte", b"Subject: x\n\nbody\n") == 75


def test_an_unexpected_fault_defers_never_bounces(world) -> None:  # type: ignore[no-untyped-def]
    """A fault nothing else catches (here: stdout, where --stdout writes, is a closed pipe)
    exits 75, which Postfix retries; a traceback's exit 1 would make pipe(8) bounce."""
    daemon, _dovecot = world
    argv = filter_argv(daemon, "--stdout", "--user", USER)
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, user="mail", group="mail", extra_groups=[])
    assert proc.stdout is not None and proc.stdin is not None and proc.stderr is not None
    proc.stdout.close()  # nobody reads: the filter's write gets EPIPE
    proc.stdin.write(message("x", HAM_WORDS) * 2000)
    proc.stdin.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 75, err
    assert b"internal error: BrokenPipeError" in err, err


def test_malformed_and_oversized_messages_are_delivered(world, make_classifierd,  # type: ignore[no-untyped-def]
                                                        redis_server) -> None:
    daemon, dovecot = world
    garbage = (b"Content-Type: multipart/mixed; boundary=\"nope\nSubject: \xff\xfe\n\n"
               b"--nope\nContent-Transfer-Encoding: base64\n\n%%%not base64\x00\x01\n")
    assert run_filter(daemon, garbage).returncode == 0
    agent = shlex.join([*dovecot.lda_command, "-d", "%u"])
    small = make_classifierd("small", redis_url=redis_server.url, delivery_agent=agent,
                             extra="max_message_size = 2048\n")
    big = message("big", HAM_WORDS) + b"x" * 5000 + b"\n"
    done = run_filter(small, big)
    assert done.returncode == 0, done.stderr
    assert b"delivering unclassified" in done.stderr
    inbox = dovecot.wait_for(USER, "INBOX", 2, timeout=20)
    assert any(b"x" * 5000 in m and b"X-DSPAM-Result" not in m for m in inbox)


def test_a_bad_option_defers_never_bounces(world) -> None:  # type: ignore[no-untyped-def]
    daemon, _dovecot = world
    done = run_filter(daemon, message("x", HAM_WORDS), "--no-such-option")
    assert done.returncode == 75 and b"unknown option" in done.stderr


def test_classify_stdout_and_retrain_by_signature(world) -> None:  # type: ignore[no-untyped-def]
    daemon, _dovecot = world
    done = run_filter(daemon, message("offer", SPAM_WORDS), "--classify", "--user", USER)
    assert done.returncode == 0 and b'result="spam"' in done.stdout
    tagged = run_filter(daemon, message("notes", HAM_WORDS), "--stdout", "--user", USER)
    assert tagged.returncode == 0 and tagged.stdout.startswith(b"X-DSPAM-Result: Innocent")
    # dovecot-antispam's / our IMAPSieve script's call: the message, with CRLF line ends.
    retrain = run_filter(daemon, tagged.stdout.replace(b"\n", b"\r\n"), "--user", USER,
                         "--deliver=", "--class=spam", "--source=error")
    assert retrain.returncode == 0, retrain.stderr
    assert b"relearnt from innocent to spam" in daemon.log_text().encode()
