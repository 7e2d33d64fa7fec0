"""A real Dovecot (IMAP, LMTP, LDA, Pigeonhole Sieve and IMAPSieve) for tests, private to one test.

What it is for: the spam classifier (postward's dspam replacement) hands classified mail to
Dovecot's LDA (``deliver -d user``, the guide's ``UntrustedDeliveryAgent``) or LMTP, a Sieve rule
files it into ``Spam`` by its ``X-DSPAM-Result`` header, and users retrain by moving mail into or
out of ``Spam`` over IMAP, which makes IMAPSieve pipe the message to a program.

Isolation: the configuration is one complete, standalone file written from Python (nothing is
read from /etc/dovecot), and every path Dovecot uses is private: ``base_dir`` (its sockets and
pid file), ``state_dir``, ``log_path``, the users' homes and Maildirs, the Sieve scripts. The
listeners are on the test session's private loopback address and free ports only, and
``instance_name`` names the instance in ``ps``. A system Dovecot started by Debian's postinst
(``/run/dovecot``, ports 143/993) and other test instances share nothing with it but binaries.

How it runs: ``dovecot -F`` (foreground) as root under :class:`ManagedProcess`. Dovecot master
does not leave its process group in the foreground, so all its children stop with the group.

Why ``base_dir`` is a short directory in /tmp and not in the test directory: it holds unix
sockets (``login/imap``, ``auth-userdb``, ...), and a socket path has at most 107 bytes, which
pytest's per-test directories exceed. It is removed again by :meth:`DovecotInstance.stop`.

Users live in a passwd-file (``{PLAIN}`` passwords), all with one system uid/gid (default
``mail``, as the guide's ``userdb { driver = static; args = uid=mail gid=mail ... }``). Each user's
home is ``<dir>/home/<user>``, mail is ``maildir:~/Maildir`` (Maildir++ layout: ``Spam`` is
``~/Maildir/.Spam``), and the personal Sieve script is ``~/.dovecot.sieve`` as in the guide (a
symlink into ``~/sieve/``, the way ManageSieve would install it).
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from secrets import token_hex
from typing import Any

from tests.testbed.net import free_port, wait_until
from tests.testbed.process import DaemonFailed, ManagedProcess

DOVECOT = "/usr/sbin/dovecot"
DELIVER = "/usr/lib/dovecot/deliver"
SIEVEC = "/usr/bin/sievec"

DEFAULT_USERS: tuple[str, ...] = ("alice", "bob", "carol")
DEFAULT_PASSWORD = "testbed-password"
# Owner of every user's mail (uid and gid); the guide uses uid=mail gid=mail.
DEFAULT_MAIL_USER = "mail"

# LDA exit codes (sysexits.h), as Dovecot's deliver returns them.
EX_OK = 0
EX_NOUSER = 67
EX_TEMPFAIL = 75

# How long stop() lets master shut down by itself before SIGKILL (see DovecotInstance.stop).
STOP_GRACE = 0.3

# The guide's personal Sieve script (~/.dovecot.sieve), verbatim: file mail the classifier marked
# as spam into "Spam", unless it was retrained as innocent.
GUIDE_SPAM_SIEVE = """\
require ["regex", "fileinto", "imap4flags"];
# Catch mail tagged as Spam, except Spam retrained and delivered to the mailbox
if allof (header :regex "X-DSPAM-Result" "^(Spam|Virus|Bl[ao]cklisted)$",
          not header :contains "X-DSPAM-Reclassified" "Innocent") {
  # Mark as read
  setflag "\\\\Seen";
  # Move into the Junk folder
  fileinto "Spam";
  # Stop processing here
  stop;
}
"""

# Stand-in IMAPSieve scripts in the style of Dovecot's documentation (the antispam plugin's
# replacement): pipe the message to "report-spam"/"report-ham" with the user and the mailboxes.
# The classifier's own scripts will replace them (``report_spam_sieve=`` / ``report_ham_sieve=``).
STANDIN_REPORT_SPAM_SIEVE = """\
require ["vnd.dovecot.pipe", "copy", "imapsieve", "environment", "variables"];

if environment :matches "imap.user" "*" {
  set "username" "${1}";
}
if environment :matches "imap.mailbox" "*" {
  set "mailbox" "${1}";
}
if environment :matches "imap.cause" "*" {
  set "cause" "${1}";
}
pipe :copy "report-spam" ["${username}", "${mailbox}", "${cause}"];
"""

STANDIN_REPORT_HAM_SIEVE = """\
require ["vnd.dovecot.pipe", "copy", "imapsieve", "environment", "variables"];

if environment :matches "imap.mailbox" "*" {
  set "mailbox" "${1}";
}
# Deleting spam is not retraining it as ham.
if string "${mailbox}" "Trash" {
  stop;
}
if environment :matches "imap.user" "*" {
  set "username" "${1}";
}
if environment :matches "imap.cause" "*" {
  set "cause" "${1}";
}
pipe :copy "report-ham" ["${username}", "${mailbox}", "${cause}"];
"""

_USER = re.compile(r"[a-z0-9][a-z0-9._+-]*(@[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?)?")
_PIPE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def recording_program(directory: Path, kind: str) -> str:
    """A pipe program (``/bin/sh``) that records each run in ``directory`` as two files:
    ``<kind>.<ns>.<pid>.eml`` (what it read on stdin) and then ``….args`` (its arguments,
    NUL-separated). The ``.args`` file appears last, by rename, so a reader that sees it sees a
    complete record. Read them back with :func:`read_reports`."""
    return f"""\
#!/bin/sh
# Stand-in for a spam/ham report program, written by tests/testbed/dovecot.py.
# Dovecot's program client runs it with an almost empty environment: name the PATH.
PATH=/usr/bin:/bin
export PATH
set -e
out='{directory}'
name="{kind}.$(date +%s%N).$$"
cat > "$out/.$name.eml"
mv "$out/.$name.eml" "$out/$name.eml"
printf '%s\\0' "$@" > "$out/.$name.args"
mv "$out/.$name.args" "$out/$name.args"
"""


@dataclass(frozen=True)
class Report:
    """One run of a recording pipe program: which one, its arguments and its stdin."""

    kind: str
    argv: tuple[str, ...]
    message: bytes
    path: Path


def read_reports(directory: Path, kind: str | None = None) -> list[Report]:
    """Complete records of :func:`recording_program` runs, oldest first."""
    found = []
    for args in sorted(directory.glob("*.args"), key=lambda p: int(p.name.split(".")[1])):
        this_kind = args.name.split(".")[0]
        if kind is not None and this_kind != kind:
            continue
        argv = tuple(a.decode() for a in args.read_bytes().split(b"\0")[:-1])
        eml = args.with_suffix(".eml")
        found.append(Report(this_kind, argv, eml.read_bytes(), eml))
    return found


@dataclass(frozen=True)
class LmtpReply:
    """The LMTP server's answer to one single-recipient transaction: the first reply that was
    not a success (RCPT 550 for an unknown user, say), else the reply to DATA."""

    code: int
    text: str
    stage: str  # "rcpt" or "data" (or "mail")

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300


def _maildir_files(folder: Path) -> list[Path]:
    """Complete messages of one Maildir folder (``new/`` and ``cur/``; ``tmp/`` is unfinished),
    oldest first."""
    files = []
    for sub in ("new", "cur"):
        with contextlib.suppress(FileNotFoundError):
            files += [p for p in (folder / sub).iterdir() if p.is_file()]

    def key(p: Path) -> tuple[int, str]:
        try:
            return (p.stat().st_mtime_ns, p.name)
        except FileNotFoundError:
            return (0, p.name)
    return sorted(files, key=key)


class DovecotInstance:
    """A private Dovecot in ``directory`` with IMAP and LMTP on ``address``.

    ``users``: user names (all with ``DEFAULT_PASSWORD``) or ``{user: password}``. Names are
    lower-case, optionally with ``@domain`` (what Postfix passes as ``-d ${recipient}``).

    ``user_sieve``: every user's personal script (``~/.dovecot.sieve``); default the guide's
    X-DSPAM-Result rule, ``None`` for no personal script. ``sieve_before``: a global script run
    before it (compiled with sievec), or ``None``.

    IMAPSieve: ``report_spam_sieve`` runs when a message is copied, moved or appended into
    ``spam_mailbox``; ``report_ham_sieve`` when one is copied or moved out of it into any other
    mailbox. Each is the script's text, or a :class:`Path` to a script that is copied into the
    instance (Dovecot writes the compiled ``.svbin`` next to a script: never into the repo).
    ``None`` leaves that rule out. ``pipe_programs`` (name -> text or Path) fill
    ``sieve_pipe_bin_dir``; the programs run as the mail user. With ``record_reports=True`` the
    stand-in scripts and two :func:`recording_program` programs are installed (where not given)
    and :meth:`reports` reads what they received.

    ``submission_host``: where Sieve redirects/vacation replies and LDA bounces go (``addr:port``
    of a test Postfix, say); without it they fail instead of reaching the machine's sendmail.
    ``extra_config``: appended verbatim to dovecot.conf (later settings win).
    """

    def __init__(
        self,
        directory: Path,
        address: str,
        *,
        users: Sequence[str] | Mapping[str, str] = DEFAULT_USERS,
        mail_user: str = DEFAULT_MAIL_USER,
        user_sieve: str | None = GUIDE_SPAM_SIEVE,
        sieve_before: str | Path | None = None,
        spam_mailbox: str = "Spam",
        report_spam_sieve: str | Path | None = None,
        report_ham_sieve: str | Path | None = None,
        pipe_programs: Mapping[str, str | Path] | None = None,
        record_reports: bool = False,
        submission_host: str | None = None,
        extra_config: str = "",
        debug: bool = False,
        name: str = "dovecot",
    ) -> None:
        self.directory = Path(directory)
        self.address = address
        self.name = name
        if isinstance(users, Mapping):
            self.users = dict(users)
        else:
            self.users = {u: DEFAULT_PASSWORD for u in users}
        for user in self.users:
            if not _USER.fullmatch(user):
                raise ValueError(f"{user!r}: user names are lower-case 'name' or 'name@domain'")
        self.mail_user = pwd.getpwnam(mail_user)
        self.user_sieve = user_sieve
        self.sieve_before = sieve_before
        self.spam_mailbox = spam_mailbox
        self.pipe_programs: dict[str, str | Path] = dict(pipe_programs or {})
        self.reports_dir = self.directory / "reports"
        self.record_reports = record_reports
        if record_reports:
            report_spam_sieve = report_spam_sieve or STANDIN_REPORT_SPAM_SIEVE
            report_ham_sieve = report_ham_sieve or STANDIN_REPORT_HAM_SIEVE
            for kind in ("spam", "ham"):
                self.pipe_programs.setdefault(f"report-{kind}",
                                              recording_program(self.reports_dir, kind))
        for program in self.pipe_programs:
            if not _PIPE_NAME.fullmatch(program):
                raise ValueError(f"{program!r}: a pipe program name is a plain file name")
        self.report_spam_sieve = report_spam_sieve
        self.report_ham_sieve = report_ham_sieve
        self.submission_host = submission_host
        self.extra_config = extra_config
        self.debug = debug

        self.imap_port = free_port(address)
        self.lmtp_port = free_port(address)
        self.hostname = f"{name}-{self.imap_port}.testbed.test"
        self.config_dir = self.directory / "etc"
        self.conf = self.config_dir / "dovecot.conf"
        self.passwd_file = self.config_dir / "users"
        self.home_root = self.directory / "home"
        self.state_dir = self.directory / "state"
        self.global_sieve_dir = self.directory / "sieve-global"
        self.pipe_bin_dir = self.directory / "sieve-pipe"
        self.log_path = self.directory / "dovecot.log"
        # Runtime directory (sockets, master.pid): short (see the module docstring), made by
        # configure() and removed by stop().
        tmp = tempfile.gettempdir()
        self.base_dir = Path(tmp if len(tmp) <= 20 else "/tmp") / f"postward-dc-{token_hex(6)}"
        self._process: ManagedProcess | None = None

    # -- paths -------------------------------------------------------------------------------

    @property
    def lmtp_socket(self) -> Path:
        """The LMTP unix socket (mode 0666), for Postfix's ``lmtp:unix:PATH``."""
        return self.base_dir / "lmtp"

    @property
    def lmtp_nexthop(self) -> str:
        """How Postfix names the LMTP TCP listener: ``lmtp:inet:[address]:port``."""
        return f"lmtp:inet:[{self.address}]:{self.lmtp_port}"

    @property
    def lda_command(self) -> list[str]:
        """The LDA for this instance, for a Postfix pipe or a classifier's delivery agent:
        append ``-d USER`` (and ``-f SENDER``, ``-a RECIPIENT``, ``-m MAILBOX`` as wanted)."""
        return [DELIVER, "-c", str(self.conf)]

    def home(self, user: str) -> Path:
        return self.home_root / user

    def maildir(self, user: str, mailbox: str = "INBOX") -> Path:
        """The Maildir folder of ``mailbox`` (Maildir++: ``~/Maildir/.Name``, hierarchy
        separator ``/`` becomes ``.``; ASCII mailbox names only)."""
        root = self.home(user) / "Maildir"
        if mailbox.upper() == "INBOX":
            return root
        return root / ("." + mailbox.replace("/", "."))

    def password(self, user: str) -> str:
        return self.users[user]

    # -- configuration -----------------------------------------------------------------------

    def _plugin_settings(self) -> list[tuple[str, str, str]]:
        """(name, value, why) of the plugin {} section."""
        settings: list[tuple[str, str, str]] = [
            ("sieve", "file:~/sieve;active=~/.dovecot.sieve",
             "Dovecot's default, spelled out: the guide's ~/.dovecot.sieve"),
            ("sieve_plugins", "sieve_imapsieve sieve_extprograms",
             "IMAPSieve and vnd.dovecot.pipe"),
            ("sieve_global_extensions", "+vnd.dovecot.pipe +vnd.dovecot.environment",
             "only admin (global) scripts may pipe; personal scripts may not"),
            ("sieve_pipe_bin_dir", str(self.pipe_bin_dir), "pipe \"name\" runs only programs here"),
        ]
        if self.sieve_before is not None:
            settings.append(("sieve_before", str(self.global_sieve_dir / "before.sieve"), ""))
        number = 0
        if self.report_spam_sieve is not None:
            number += 1
            settings += [
                (f"imapsieve_mailbox{number}_name", self.spam_mailbox,
                 "moved or appended into Spam: report spam"),
                (f"imapsieve_mailbox{number}_causes", "COPY APPEND",
                 "MOVE counts as COPY"),
                (f"imapsieve_mailbox{number}_before",
                 f"file:{self.global_sieve_dir / 'report-spam.sieve'}", ""),
            ]
        if self.report_ham_sieve is not None:
            number += 1
            settings += [
                (f"imapsieve_mailbox{number}_name", "*", "moved out of Spam: report ham"),
                (f"imapsieve_mailbox{number}_from", self.spam_mailbox, ""),
                (f"imapsieve_mailbox{number}_causes", "COPY", ""),
                (f"imapsieve_mailbox{number}_before",
                 f"file:{self.global_sieve_dir / 'report-ham.sieve'}", ""),
            ]
        return settings

    def config_text(self) -> str:
        """The complete dovecot.conf."""
        a = self.address
        uid = self.mail_user.pw_uid
        if self.submission_host:
            outgoing = f"submission_host = {self.submission_host}"
        else:
            outgoing = ("# No submission_host: never the machine's sendmail. Redirects, vacation\n"
                        "# replies and bounces fail (temporarily) instead.\n"
                        "sendmail_path = /bin/false")
        plugin = []
        for key, value, why in self._plugin_settings():
            if why:
                plugin.append(f"  # {why}")
            plugin.append(f"  {key} = {value}")
        plugin_text = "\n".join(plugin)
        debug = ("mail_debug = yes\nauth_verbose = yes\nauth_debug = yes\nverbose_ssl = no\n"
                 if self.debug else "")
        return f"""\
# Written by tests/testbed/dovecot.py: a complete, standalone configuration (nothing from
# /etc/dovecot). Everything below is private to this instance.
instance_name = postward-{self.name}-{self.imap_port}
base_dir = {self.base_dir}
state_dir = {self.state_dir}
# No syslog on test machines. The LDA is not started by master and writes this file itself,
# after dropping to the mail user when run as that user: the file belongs to that user.
log_path = {self.log_path}
hostname = {self.hostname}
postmaster_address = postmaster@testbed.test
{outgoing}

protocols = imap lmtp
# Only the private loopback address; every inet_listener below names it again.
listen = {a}
# Not ssl-cert's snakeoil certificate, which a --no-install-recommends install lacks.
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
# A failed login is answered after 2 s by default: a fixed sleep in every negative test.
auth_failure_delay = 0
{debug}
# One system user owns all mail (the guide: uid=mail gid=mail); Dovecot's default
# first_valid_uid = 500 would refuse uid {uid}.
first_valid_uid = {uid}
first_valid_gid = 1
mail_location = maildir:~/Maildir
namespace inbox {{
  inbox = yes
  separator = /
}}

passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.passwd_file}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {self.passwd_file}
}}

# Sieve's fileinto "Spam" creates the folder on first use (the guide relies on it).
lda_mailbox_autocreate = yes
lda_mailbox_autosubscribe = yes

protocol lda {{
  mail_plugins = $mail_plugins sieve
}}
protocol lmtp {{
  mail_plugins = $mail_plugins sieve
}}
protocol imap {{
  mail_plugins = $mail_plugins imap_sieve
}}

service imap-login {{
  inet_listener imap {{
    address = {a}
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = {a}
    port = {self.lmtp_port}
  }}
  # {self.lmtp_socket}, for Postfix's lmtp client (which runs as postfix).
  unix_listener lmtp {{
    mode = 0666
  }}
}}
# Protocols not in "protocols" start no service, but say so: no stray listeners.
service pop3-login {{
  inet_listener pop3 {{
    port = 0
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service submission-login {{
  inet_listener submission {{
    port = 0
  }}
}}
service stats {{
  # Default 0660 group dovecot: an LDA run as the mail user (the guide's pipe, user=mail)
  # prints "net_connect_unix(.../stats-writer) failed: Permission denied" on every delivery.
  unix_listener stats-writer {{
    mode = 0666
  }}
}}

plugin {{
{plugin_text}
}}
{self.extra_config}
"""

    def _passwd_text(self) -> str:
        uid, gid = self.mail_user.pw_uid, self.mail_user.pw_gid
        # user:password:uid:gid:gecos:home:shell:extra
        return "".join(f"{user}:{{PLAIN}}{password}:{uid}:{gid}::{self.home(user)}::\n"
                       for user, password in self.users.items())

    def _chown(self, path: Path) -> None:
        os.chown(path, self.mail_user.pw_uid, self.mail_user.pw_gid)

    def _install(self, target: Path, source: str | Path, mode: int = 0o644) -> None:
        if isinstance(source, Path):
            shutil.copyfile(source, target)
        else:
            target.write_text(source)
        target.chmod(mode)

    def _compile(self, script: Path) -> None:
        """Pre-compile a global script with sievec: the mail user cannot write the ``.svbin``
        into the (root's) global script directory, so Dovecot would compile it on every run
        and log an error that it cannot save the binary."""
        proc = subprocess.run([SIEVEC, "-c", str(self.conf), str(script)],
                              capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0:
            raise ValueError(f"sievec {script} failed ({proc.returncode}):\n"
                             f"{proc.stdout}{proc.stderr}")

    def configure(self) -> None:
        """Write the configuration, the users, homes, Sieve scripts and pipe programs."""
        for d in (self.directory, self.config_dir, self.home_root, self.global_sieve_dir,
                  self.pipe_bin_dir):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o755)  # Dovecot's processes run as the mail user, dovecot and dovenull
        self.state_dir.mkdir(exist_ok=True)
        self.base_dir.mkdir(mode=0o755, exist_ok=True)
        self.base_dir.chmod(0o755)  # login processes (dovenull) reach base_dir/login
        self.conf.write_text(self.config_text())
        self.passwd_file.write_text(self._passwd_text())
        # Read by the auth process, which runs as "dovecot"; test passwords only.
        self.passwd_file.chmod(0o644)
        self.log_path.touch()
        self._chown(self.log_path)
        for user in self.users:
            home = self.home(user)
            home.mkdir(exist_ok=True)
            self._chown(home)
            if self.user_sieve is not None:
                self.set_user_sieve(user, self.user_sieve)
        for program, source in self.pipe_programs.items():
            self._install(self.pipe_bin_dir / program, source, 0o755)
        if self.record_reports:
            self.reports_dir.mkdir(exist_ok=True)
            self._chown(self.reports_dir)  # the recording programs run as the mail user
        scripts = {"before.sieve": self.sieve_before,
                   "report-spam.sieve": self.report_spam_sieve,
                   "report-ham.sieve": self.report_ham_sieve}
        for filename, source in scripts.items():
            if source is not None:
                target = self.global_sieve_dir / filename
                self._install(target, source)
                self._compile(target)

    def set_user_sieve(self, user: str, script: str | None) -> None:
        """Install ``script`` as ``user``'s active personal script (``None``: remove it). Dovecot
        recompiles it on the next delivery."""
        home = self.home(user)
        active = home / ".dovecot.sieve"
        with contextlib.suppress(FileNotFoundError):
            active.unlink()
        if script is None:
            return
        scripts = home / "sieve"
        scripts.mkdir(exist_ok=True)
        self._chown(scripts)
        target = scripts / "postward.sieve"
        target.write_text(script)
        self._chown(target)
        # A symlink into ~/sieve, as ManageSieve makes it (a plain file works too).
        active.symlink_to("sieve/postward.sieve")
        os.lchown(active, self.mail_user.pw_uid, self.mail_user.pw_gid)

    # -- lifecycle ---------------------------------------------------------------------------

    def _greets(self) -> bool:
        with socket.create_connection((self.address, self.imap_port), timeout=2) as s:
            s.settimeout(2)
            greeting = s.recv(512)
            with contextlib.suppress(OSError):
                s.sendall(b"a LOGOUT\r\n")
            return greeting.startswith(b"* OK")

    def start(self, timeout: float = 30.0) -> DovecotInstance:
        self.configure()
        self._process = ManagedProcess(
            self.name, [DOVECOT, "-F", "-c", str(self.conf)],
            self.directory / "dovecot.out",
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, cwd=self.directory)
        try:
            # Master binds all listeners before it forks anything; an IMAP greeting also proves
            # imap-login (and so the login chroot) works.
            self._process.start(ready=self._greets, timeout=timeout)
        except DaemonFailed as e:
            self.stop()
            raise DaemonFailed(f"{e}\n--- {self.log_path} ---\n{self.log_tail()}") from None
        return self

    def running(self) -> bool:
        return self._process is not None and self._process.running()

    @property
    def master_pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def stop(self, timeout: float = 10.0) -> None:
        """Stop master and every Dovecot process of this instance; remove ``base_dir``.

        SIGTERM goes to the whole process group (master, its children and any pipe program
        they run), and whatever is left after ``STOP_GRACE`` seconds gets SIGKILL. Why not wait
        for master: on SIGTERM it SIGQUITs its log process and then sleep(1)s for it to go, a
        fixed second per stop unless the log process happened to exit first (with the group
        signalled it usually has: ~15 ms, but 1 s in about one stop out of five). By then every
        other process has long exited on its own SIGTERM, and nothing of the instance outlives
        the test anyway.
        """
        process = self._process
        if process is not None and process.proc is not None and process.running():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.proc.wait(STOP_GRACE)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        if process is not None:
            process.stop(timeout)  # reaps master; a no-op for a group that is gone
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> DovecotInstance:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- delivery ----------------------------------------------------------------------------

    def run_lda(
        self,
        user: str,
        message: bytes,
        *,
        sender: str | None = None,
        mailbox: str | None = None,
        as_user: str | None = None,
        extra_args: Sequence[str] = (),
        timeout: float = 30.0,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``deliver -c CONF -d user`` with ``message`` on stdin.

        As root (default) the LDA looks ``user`` up and switches to its uid; ``as_user="mail"``
        runs it as that system user instead, as the guide's Postfix pipe (``user=mail:mail``)
        does. ``mailbox`` is ``-m`` (deliver there instead of INBOX).
        """
        argv = [*self.lda_command, "-d", user]
        if sender is not None:
            argv += ["-f", sender]
        if mailbox is not None:
            argv += ["-m", mailbox]
        argv += list(extra_args)
        entry = pwd.getpwnam(as_user) if as_user is not None else None
        return subprocess.run(
            argv, input=message, capture_output=True, timeout=timeout, check=False, cwd="/",
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            user=entry.pw_uid if entry else None, group=entry.pw_gid if entry else None,
            extra_groups=[] if entry else None)

    def deliver_lda(self, user: str, message: bytes, **options: Any) -> int:
        """Deliver through the LDA; the exit status: 0 delivered, 67 (EX_NOUSER) unknown user,
        75 (EX_TEMPFAIL) try again later. Options as :meth:`run_lda`."""
        return self.run_lda(user, message, **options).returncode

    def lmtp_deliver(self, user: str, message: bytes, *, sender: str = "sender@sender.test",
                     unix: bool = False, timeout: float = 30.0) -> LmtpReply:
        """One LMTP transaction for ``user`` over TCP (or the unix socket)."""
        if unix:
            client = smtplib.LMTP(str(self.lmtp_socket), timeout=timeout)
        else:
            client = smtplib.LMTP(self.address, self.lmtp_port, timeout=timeout)
        with client:
            client.ehlo_or_helo_if_needed()
            code, text = client.mail(sender)
            if code != 250:
                return LmtpReply(code, text.decode(errors="replace"), "mail")
            code, text = client.rcpt(user)
            if code not in (250, 251):
                return LmtpReply(code, text.decode(errors="replace"), "rcpt")
            code, text = client.data(message)
            return LmtpReply(code, text.decode(errors="replace"), "data")

    # -- reading -----------------------------------------------------------------------------

    def imap(self, user: str, password: str | None = None) -> imaplib.IMAP4:
        """A logged-in IMAP connection (``with dovecot.imap("alice") as imap:`` logs out)."""
        conn = imaplib.IMAP4(self.address, self.imap_port, timeout=30)
        try:
            conn.login(user, password if password is not None else self.users[user])
        except Exception:
            with contextlib.suppress(Exception):
                conn.shutdown()
            raise
        return conn

    def mailbox_messages(self, user: str, mailbox: str = "INBOX") -> list[bytes]:
        """The messages in ``mailbox``, oldest first, read from the Maildir directly (no IMAP
        session: reading does not mark anything as seen or trigger any plugin)."""
        found = []
        for path in _maildir_files(self.maildir(user, mailbox)):
            with contextlib.suppress(FileNotFoundError):  # expunged or renamed meanwhile
                found.append(path.read_bytes())
        return found

    def wait_for(self, user: str, mailbox: str = "INBOX", count: int = 1,
                 timeout: float = 20.0) -> list[bytes]:
        """Poll until ``mailbox`` holds at least ``count`` messages; return them all."""
        def enough() -> list[bytes] | None:
            messages = self.mailbox_messages(user, mailbox)
            return messages if len(messages) >= count else None
        return wait_until(enough, timeout=timeout,
                          what=f"{count} message(s) in {user}'s {mailbox}")

    def reports(self, kind: str | None = None) -> list[Report]:
        """What the recording pipe programs received (``record_reports=True``)."""
        return read_reports(self.reports_dir, kind) if self.reports_dir.is_dir() else []

    def wait_for_reports(self, kind: str, count: int = 1, timeout: float = 20.0) -> list[Report]:
        def enough() -> list[Report] | None:
            found = self.reports(kind)
            return found if len(found) >= count else None
        return wait_until(enough, timeout=timeout, what=f"{count} {kind} report(s)")

    # -- log ---------------------------------------------------------------------------------

    def log_text(self) -> str:
        """Dovecot's log (master, services and LDA runs) plus anything master printed."""
        text = ""
        with contextlib.suppress(FileNotFoundError):
            text = self.log_path.read_text(errors="replace")
        with contextlib.suppress(FileNotFoundError):
            out = (self.directory / "dovecot.out").read_text(errors="replace")
            if out:
                text += out
        return text

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_for_log(self, needle: str, timeout: float = 20.0) -> str:
        return wait_until(lambda: self.log_text() if needle in self.log_text() else None,
                          timeout=timeout, what=f"{needle!r} in {self.log_path}")
