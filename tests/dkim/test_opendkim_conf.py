"""opendkim.conf read unchanged: the guide's files, every option, every error message."""

from __future__ import annotations

import gzip
import re
import socket
from pathlib import Path

import pytest

from postward.core.config_file import ConfigError
from postward.dkim import opendkim_names
from postward.dkim.opendkim_conf import (
    DEFAULT_SIGN_HEADERS,
    Actions,
    KeyChoice,
    MissingKey,
    OpenDkimConfig,
    load_opendkim_conf,
)
from postward.dkim.opendkim_values import MilterSocket, parse_socket
from tests.dkim.guide_files import (
    GUIDE_CONF,
    GUIDE_KEY_TABLE,
    GUIDE_SIGNING_TABLE,
    GUIDE_TRUSTED_HOSTS,
)

# The active lines of Debian 12's stock /etc/opendkim.conf.
DEBIAN_CONF = """\
# This is a basic configuration for signing and verifying. It can easily be
# adapted to suit a basic installation. See opendkim.conf(5) and
# /usr/share/doc/opendkim/examples/opendkim.conf.sample for complete
# documentation of available configuration parameters.
Syslog\t\t\tyes
SyslogSuccess\t\tyes
#LogWhy\t\t\tno

Canonicalization\trelaxed/simple
#Mode\t\t\tsv
#SubDomains\t\tno
OversignHeaders\t\tFrom
UserID\t\t\topendkim
UMask\t\t\t007
Socket\t\t\tlocal:/run/opendkim/opendkim.sock
PidFile\t\t\t/run/opendkim/opendkim.pid
TrustAnchorFile\t\t/usr/share/dns/root.key
"""

SOCKET = "Socket inet:8891@127.0.0.1\n"


def conf(tmp_path: Path, body: str, socket_line: bool = True) -> Path:
    """opendkim.conf with ``body`` (a Socket line appended after it unless asked not to)."""
    path = tmp_path / "opendkim.conf"
    has_socket = re.search(r"(?im)^\s*socket\s", body)
    path.write_text(body + (SOCKET if socket_line and not has_socket else ""))
    return path


def load(tmp_path: Path, body: str, **kw: object) -> OpenDkimConfig:
    return load_opendkim_conf(conf(tmp_path, body), **kw)  # type: ignore[arg-type]


def errors(tmp_path: Path, body: str, socket_line: bool = True, **kw: object) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_opendkim_conf(conf(tmp_path, body, socket_line), **kw)  # type: ignore[arg-type]
    return [str(p) for p in e.value.problems]


def one_error(tmp_path: Path, body: str, **kw: object) -> str:
    found = errors(tmp_path, body, **kw)
    assert len(found) == 1, found
    return found[0]


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# --- the guide's files ---------------------------------------------------------------------------

@pytest.fixture
def guide(tmp_path: Path) -> Path:
    """The guide's four files, laid out under tmp_path as they are under / on the server."""
    etc = tmp_path / "etc"
    (etc / "opendkim").mkdir(parents=True)
    (etc / "opendkim.conf").write_text(GUIDE_CONF)
    (etc / "opendkim" / "KeyTable").write_text(GUIDE_KEY_TABLE)
    (etc / "opendkim" / "SigningTable").write_text(GUIDE_SIGNING_TABLE)
    (etc / "opendkim" / "TrustedHosts").write_text(GUIDE_TRUSTED_HOSTS)
    return tmp_path


def test_the_guides_files_load_unchanged(guide: Path) -> None:
    c = load_opendkim_conf(guide / "etc" / "opendkim.conf", root=guide)
    assert c.socket == MilterSocket("inet", "localhost", 8891)
    assert c.socket.pymilter_spec == "inet:8891@localhost" and c.socket.is_loopback
    assert (c.mode_sign, c.mode_verify) == (True, True)
    assert (c.header_canon, c.body_canon) == ("relaxed", "relaxed")
    assert (c.log_why, c.syslog, c.syslog_success) == (True, True, True)
    assert c.minimum_key_bits == 1024
    assert c.pid_file == Path("/var/run/opendkim/opendkim.pid")
    assert c.temporary_directory == Path("/var/tmp")
    assert c.umask == 0o022
    assert (c.user, c.group) == ("opendkim", "opendkim")
    assert c.internal_hosts.matches("127.0.0.1", "localhost")
    assert not c.internal_hosts.matches("192.0.2.1", "mail.example.com")
    assert c.external_ignore_list is not None
    assert c.external_ignore_list.matches("127.0.0.1", None)
    assert c.signing_keys_for("alice@tristor.ro") == [KeyChoice(
        "tristor.ro", "mail", Path("/etc/opendkim/mail"), "rsa", "/etc/opendkim/KeyTable:1",
        None, "/etc/opendkim/SigningTable:1")]
    assert c.signing_keys_for("Bob@TRISTOR.RO")[0].domain == "tristor.ro"
    assert c.signing_keys_for("alice@sub.tristor.ro") == []
    assert c.signing_keys_for("alice@example.com") == []
    assert c.signing_table is not None and c.signing_table.lookup("x@tristor.ro") == [
        "tristor.ro"]
    assert not c.single_key


def test_the_guides_key_table_problem_names_its_own_line(guide: Path) -> None:
    (guide / "etc" / "opendkim" / "KeyTable").write_text(
        GUIDE_KEY_TABLE + "other.ro other.ro:mail\n")
    with pytest.raises(ConfigError) as e:
        load_opendkim_conf(guide / "etc" / "opendkim.conf", root=guide)
    assert [str(p) for p in e.value.problems] == [
        "/etc/opendkim/KeyTable:2: KeyTable: 'other.ro': expected DOMAIN:SELECTOR:KEYPATH after "
        "the key name, got 'other.ro:mail'; a line is NAME DOMAIN:SELECTOR:KEYPATH (e.g. "
        "'example.com example.com:mail:/etc/opendkim/mail')"]


def test_debians_stock_config_loads(tmp_path: Path) -> None:
    c = load_opendkim_conf(conf(tmp_path, DEBIAN_CONF))
    assert c.socket == MilterSocket("local", path="/run/opendkim/opendkim.sock")
    assert c.socket.pymilter_spec == "unix:/run/opendkim/opendkim.sock"
    assert (c.header_canon, c.body_canon) == ("relaxed", "simple")
    assert c.oversign_headers == ("from",)
    assert (c.user, c.group, c.umask) == ("opendkim", None, 0o007)
    assert c.trust_anchor_file == Path("/usr/share/dns/root.key")
    assert c.key_table is None and c.signing_table is None
    assert c.signing_keys_for("a@example.com") == []


# --- defaults ------------------------------------------------------------------------------------

def test_defaults(tmp_path: Path) -> None:
    c = load(tmp_path, "")
    assert (c.mode_sign, c.mode_verify) == (True, True)
    assert (c.header_canon, c.body_canon) == ("simple", "simple")
    assert c.actions == Actions("accept", "tempfail", "tempfail", "accept", "accept",
                                "tempfail", "reject")
    assert c.authserv_id == socket.gethostname()
    assert c.internal_hosts.matches("127.0.0.1", None)
    assert c.internal_hosts.matches("::1", None)
    assert not c.internal_hosts.matches("127.0.0.2", None)
    assert c.external_ignore_list is None and c.peer_list is None
    assert c.minimum_key_bits == 1024
    assert c.sign_headers == DEFAULT_SIGN_HEADERS
    assert c.oversign_headers == ("from", "to", "subject", "date")
    assert c.signature_algorithm == "rsa-sha256"
    assert (c.dns_timeout, c.maximum_headers, c.maximum_signatures_to_verify) == (5, 65536, 3)
    assert (c.require_safe_keys, c.subdomains, c.remove_old_signatures) == (True, False, False)
    assert (c.always_add_ar_header, c.software_header, c.multiple_signatures) == (
        False, False, False)
    assert (c.syslog, c.syslog_success, c.log_why, c.syslog_facility) == (
        False, False, False, "mail")
    assert (c.pid_file, c.temporary_directory, c.umask) == (None, Path("/tmp"), None)
    assert (c.user, c.group, c.milter_debug) == (None, None, 0)
    assert (c.nameservers, c.resolver_configuration, c.trust_anchor_file) == ((), None, None)
    assert (c.key_table, c.signing_table, c.key_table_ed25519, c.domains) == (
        None, None, None, None)
    assert c.path == tmp_path / "opendkim.conf"


# --- every option --------------------------------------------------------------------------------

@pytest.mark.parametrize(("line", "attr", "expected"), [
    ("Mode s", "mode_sign", True), ("Mode s", "mode_verify", False),
    ("Mode v", "mode_sign", False), ("Mode vs", "mode_verify", True),
    ("Canonicalization relaxed/relaxed", "body_canon", "relaxed"),
    ("Canonicalization relaxed", "header_canon", "relaxed"),
    ("Canonicalization relaxed", "body_canon", "simple"),
    ("Canonicalization Simple/Relaxed", "body_canon", "relaxed"),
    ("MinimumKeyBits 2048", "minimum_key_bits", 2048),
    ("MinimumKeyBits 0", "minimum_key_bits", 0),
    ("AlwaysAddARHeader yes", "always_add_ar_header", True),
    ("AlwaysAddARHeader TRUE", "always_add_ar_header", True),
    ("AlwaysAddARHeader 1", "always_add_ar_header", True),
    ("AlwaysAddARHeader No", "always_add_ar_header", False),
    ("AlwaysAddARHeader false", "always_add_ar_header", False),
    ("AlwaysAddARHeader 0", "always_add_ar_header", False),
    ("AuthservID mx.example.com", "authserv_id", "mx.example.com"),
    ("AuthservID HOSTNAME", "authserv_id", socket.gethostname()),
    ("SignatureAlgorithm ed25519-sha256", "signature_algorithm", "ed25519-sha256"),
    ("SignatureAlgorithm RSA-SHA256", "signature_algorithm", "rsa-sha256"),
    ("LogWhy yes", "log_why", True),
    ("Syslog yes", "syslog", True),
    ("SyslogSuccess yes", "syslog_success", True),
    ("SyslogFacility LOCAL3", "syslog_facility", "local3"),
    ("PidFile /run/postward/dkim.pid", "pid_file", Path("/run/postward/dkim.pid")),
    ("TemporaryDirectory /var/tmp", "temporary_directory", Path("/var/tmp")),
    ("UMask 007", "umask", 0o007), ("UMask 0", "umask", 0), ("UMask 7", "umask", 7),
    ("UMask 0027", "umask", 0o027),
    ("UserID opendkim", "user", "opendkim"), ("UserID opendkim", "group", None),
    ("UserID opendkim:mail", "group", "mail"),
    ("SubDomains yes", "subdomains", True),
    ("RemoveOldSignatures yes", "remove_old_signatures", True),
    ("RequireSafeKeys no", "require_safe_keys", False),
    ("MilterDebug 6", "milter_debug", 6),
    ("Nameservers 127.0.0.1, ::1", "nameservers", ("127.0.0.1", "::1")),
    ("ResolverConfiguration /etc/unbound/unbound.conf", "resolver_configuration",
     "/etc/unbound/unbound.conf"),
    ("TrustAnchorFile /usr/share/dns/root.key", "trust_anchor_file",
     Path("/usr/share/dns/root.key")),
    ("DNSTimeout 10", "dns_timeout", 10),
    ("MaximumHeaders 0", "maximum_headers", 0),
    ("MaximumSignaturesToVerify 5", "maximum_signatures_to_verify", 5),
    ("X-Header yes", "software_header", True),
    ("SoftwareHeader yes", "software_header", True),
    ("MultipleSignatures yes", "multiple_signatures", True),
    ("AutoRestart no", "path", None),  # accepted: systemd restarts us
    ("Background yes", "path", None),  # accepted: we never fork
    ("SignHeaders From,To,Subject", "sign_headers", ("from", "to", "subject")),
    ("SignHeaders To,Subject,to", "sign_headers", ("from", "to", "subject")),
    ("SignHeaders *,+Sender,-List-Id,-List-Archive", "sign_headers",
     (*(h for h in DEFAULT_SIGN_HEADERS if h not in ("list-id", "list-archive")), "sender")),
    ("OversignHeaders From", "oversign_headers", ("from",)),
    ("OversignHeaders csl:From,Reply-To", "oversign_headers", ("from", "reply-to")),
])
def test_option(tmp_path: Path, line: str, attr: str, expected: object) -> None:
    c = load(tmp_path, f"{line}\n")
    if attr != "path":
        assert getattr(c, attr) == expected


def test_names_and_spacing_as_opendkim_reads_them(tmp_path: Path) -> None:
    c = load(tmp_path, "  mode\t\tv  # verify only\r\nSYSLOG yes#no\n\n#Syslog no\nlogwhy    1\n")
    assert (c.mode_sign, c.mode_verify, c.syslog, c.log_why) == (False, True, True, True)


def test_actions(tmp_path: Path) -> None:
    c = load(tmp_path, "On-BadSignature r\nOn-Default tempfail\nOn-NoSignature Accept\n"
                       "On-KeyNotFound q\nOn-Security d\n")
    assert c.actions == Actions(bad_signature="reject", dns_error="tempfail",
                                internal_error="tempfail", key_not_found="quarantine",
                                no_signature="accept", security="discard",
                                signature_error="tempfail")
    assert load(tmp_path, "On-DNSError accept\nOn-InternalError reject\n"
                          "On-SignatureError accept\n").actions == Actions(
        dns_error="accept", internal_error="reject", signature_error="accept")


def test_oversign_default_keeps_only_signed_fields(tmp_path: Path) -> None:
    c = load(tmp_path, "SignHeaders From,Subject\n")
    assert c.oversign_headers == ("from", "subject")


def test_header_list_from_a_file(tmp_path: Path) -> None:
    path = write(tmp_path / "headers", "From\nTo # recipients\n\nMessage-ID\n")
    assert load(tmp_path, f"SignHeaders {path}\n").sign_headers == ("from", "to", "message-id")


@pytest.mark.parametrize(("value", "attr", "ip", "host", "expected"), [
    ("192.0.2.0/24,!192.0.2.1", "peer_list", "192.0.2.2", None, True),
    ("192.0.2.0/24,!192.0.2.1", "peer_list", "192.0.2.1", None, False),
    ("csl:::1,.example.com", "internal_hosts", "::1", None, True),
    ("csl:::1,.example.com", "internal_hosts", None, "mail.example.com", True),
    ("10.0.0.0/8", "internal_hosts", "127.0.0.1", None, False),  # the default is replaced
    ("mail.example.com", "external_ignore_list", "192.0.2.1", "mail.example.com", True),
])
def test_peer_list_options(tmp_path: Path, value: str, attr: str, ip: str | None,
                           host: str | None, expected: bool) -> None:
    plist = getattr(load(tmp_path, f"{attr.replace('_', ' ').title().replace(' ', '')} "
                                   f"{value}\n"), attr)
    assert plist.matches(ip, host) is expected


def test_peer_list_file_problem_names_its_line(tmp_path: Path) -> None:
    hosts = write(tmp_path / "TrustedHosts", "127.0.0.1\n::1\n10.1.2.3/8\nlocalhost\n")
    assert one_error(tmp_path, f"InternalHosts {hosts}\n") == (
        f"{hosts}:3: InternalHosts: '10.1.2.3/8' has bits set after the /8 prefix, so OpenDKIM "
        f"never matches it; write '10.0.0.0/8'")


# --- the socket ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected", "spec", "loopback"), [
    ("inet:8891@localhost", MilterSocket("inet", "localhost", 8891), "inet:8891@localhost",
     True),
    ("inet:8891@127.0.0.1", MilterSocket("inet", "127.0.0.1", 8891), "inet:8891@127.0.0.1",
     True),
    ("inet:8891@[127.0.0.1]", MilterSocket("inet", "127.0.0.1", 8891),
     "inet:8891@127.0.0.1", True),
    ("INET:8891@192.0.2.1", MilterSocket("inet", "192.0.2.1", 8891), "inet:8891@192.0.2.1",
     False),
    ("inet:8891", MilterSocket("inet", "", 8891), "inet:8891", False),
    ("inet:8891@mail.example.com", MilterSocket("inet", "mail.example.com", 8891),
     "inet:8891@mail.example.com", False),
    ("inet6:8891@[::1]", MilterSocket("inet6", "::1", 8891), "inet6:8891@[::1]", True),
    ("inet6:8891@::1", MilterSocket("inet6", "::1", 8891), "inet6:8891@[::1]", True),
    ("inet6:8891@[2001:DB8::1]", MilterSocket("inet6", "2001:db8::1", 8891),
     "inet6:8891@[2001:db8::1]", False),
    ("inet6:8891", MilterSocket("inet6", "", 8891), "inet6:8891", False),
    ("local:/run/opendkim/opendkim.sock", MilterSocket("local", path="/run/opendkim/"
                                                                     "opendkim.sock"),
     "unix:/run/opendkim/opendkim.sock", True),
    ("unix:/run/x.sock", MilterSocket("local", path="/run/x.sock"), "unix:/run/x.sock", True),
    ("/run/x.sock", MilterSocket("local", path="/run/x.sock"), "unix:/run/x.sock", True),
])
def test_sockets(tmp_path: Path, value: str, expected: MilterSocket, spec: str,
                 loopback: bool) -> None:
    sock = load(tmp_path, f"Socket {value}\n").socket
    assert sock == expected
    assert sock.pymilter_spec == spec == str(sock)
    assert sock.is_loopback is loopback


@pytest.mark.parametrize(("value", "phrase"), [
    ("inet:smtp@localhost", "'smtp' is not a port number (1-65535)"),
    ("inet:0@localhost", "'0' is not a port number"),
    ("inet:65536@localhost", "'65536' is not a port number"),
    ("inet:8891@", "has '@' but no host"),
    ("inet:8891@::1", "::1 is an IPv6 address; write inet6:8891@[::1]"),
    ("inet6:8891@127.0.0.1", "127.0.0.1 is an IPv4 address; write inet:8891@127.0.0.1"),
    ("inet:8891@[localhost]", "'[localhost]' is neither an IP address nor a hostname"),
    ("tcp:8891@localhost", "unknown socket type 'tcp'"),
    ("local:run/x.sock", "local socket path 'run/x.sock' is relative"),
    ("local:/" + "x" * 120, "longer than 107 bytes"),
])
def test_bad_sockets(tmp_path: Path, value: str, phrase: str) -> None:
    problem = one_error(tmp_path, f"Socket {value}\n")
    assert problem.startswith(f"{tmp_path / 'opendkim.conf'}:1: Socket: ")
    assert phrase in problem


def test_socket_is_required(tmp_path: Path) -> None:
    assert one_error(tmp_path, "Mode sv\n", socket_line=False) == (
        f"{tmp_path / 'opendkim.conf'}:0: Socket is required (OpenDKIM requires it too): add "
        f"e.g. 'Socket inet:8891@localhost'")


def test_socket_override(tmp_path: Path) -> None:
    path = conf(tmp_path, "Mode sv\n", socket_line=False)
    c = load_opendkim_conf(path, socket_override="inet6:9000@[::1]")
    assert c.socket == MilterSocket("inet6", "::1", 9000)
    assert load(tmp_path, "Socket inet:8891@localhost\n", socket_override="local:/x.sock"
                ).socket == parse_socket("/x.sock")
    assert errors(tmp_path, "Mode sv\n", socket_line=False, socket_override="inet:x") == [
        "(socket given on the command line):0: 'x' is not a port number (1-65535) in "
        "'inet:x'; write inet:PORT@HOST, inet6:PORT@HOST or local:/path"]


# --- reading the file ----------------------------------------------------------------------------

def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_opendkim_conf(tmp_path / "nope.conf")
    assert [str(p) for p in e.value.problems] == [
        f"{tmp_path / 'nope.conf'}:0: cannot read: No such file or directory"]


def test_include(tmp_path: Path) -> None:
    inner = write(tmp_path / "inner.conf", "Mode v\nSyslog yes\n")
    c = load(tmp_path, f"Include {inner}\nLogWhy yes\n")
    assert (c.mode_sign, c.syslog, c.log_why) == (False, True, True)


def test_include_problems(tmp_path: Path) -> None:
    inner = write(tmp_path / "inner.conf", "Frobnicate 1\nMode v\n")
    c = str(tmp_path / "opendkim.conf")
    assert errors(tmp_path, f"Include {inner}\nMode s\nInclude /nonexistent.conf\n"
                            f"Include inner.conf\n") == [
        f"{c}:2: Mode: set twice (first at {inner}:2); OpenDKIM would silently use the later "
        f"one: keep one of them",
        f"{c}:3: Include: cannot read /nonexistent.conf: No such file or directory",
        f"{c}:4: Include: 'inner.conf' is a relative path, which OpenDKIM opens relative to "
        f"the directory it was started in; give the absolute path",
        f"{inner}:1: unknown option 'Frobnicate'; OpenDKIM would refuse it too: see "
        f"opendkim.conf(5)",
    ]


def test_include_loops_and_depth(tmp_path: Path) -> None:
    loop = tmp_path / "loop.conf"
    write(loop, f"Include {loop}\n")
    assert errors(tmp_path, f"Include {loop}\n") == [
        f"{loop}:1: Include: {loop} includes itself (through {tmp_path / 'opendkim.conf'} -> "
        f"{loop}); remove this Include"]
    for n in range(7):
        write(tmp_path / f"level{n}.conf", f"Include {tmp_path / f'level{n + 1}.conf'}\n")
    write(tmp_path / "level7.conf", "Mode v\n")
    problem = one_error(tmp_path, f"Include {tmp_path / 'level0.conf'}\n")
    # OpenDKIM's limit: the file and five levels of Includes below it
    assert problem.startswith(f"{tmp_path / 'level4.conf'}:1: Include: nested more than 5 ")


def test_non_utf8_config_line(tmp_path: Path) -> None:
    path = tmp_path / "opendkim.conf"
    path.write_bytes(b"Mode sv\nSyslog \xe9\nLogWhy maybe\n" + SOCKET.encode())
    with pytest.raises(ConfigError) as e:
        load_opendkim_conf(path)
    assert [str(p) for p in e.value.problems] == [
        f"{path}:2: this line is not UTF-8 text; save the file as UTF-8",
        f"{path}:3: LogWhy: 'maybe' is not a yes/no value; write yes or no (true/false and "
        f"1/0 work too)"]


# --- error messages ------------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "line", "message"), [
    ("Mode S", 1, "Mode: unknown mode letter 'S' in 'S'; Mode takes s (sign) and/or v "
                  "(verify), e.g. sv"),
    ("Canonicalization fancy", 1, "Canonicalization: unknown canonicalization 'fancy' in "
                                  "'fancy'; write relaxed, simple or header/body such as "
                                  "relaxed/relaxed"),
    ("Canonicalization relaxed/", 1, "Canonicalization: unknown canonicalization '' in "
                                     "'relaxed/'"),
    ("MinimumKeyBits lots", 1, "MinimumKeyBits: 'lots' is not a whole number; write digits "
                               "only, e.g. 5"),
    ("MinimumKeyBits -1", 1, "MinimumKeyBits: '-1' is not a whole number"),
    ("AlwaysAddARHeader maybe", 1, "AlwaysAddARHeader: 'maybe' is not a yes/no value; write "
                                   "yes or no (true/false and 1/0 work too)"),
    ("AlwaysAddARHeader on", 1, "AlwaysAddARHeader: 'on' is not a yes/no value"),
    ("AuthservID two words", 1, "AuthservID: 'two words' cannot be an authserv-id"),
    ("SignatureAlgorithm rsa-sha1", 1, "SignatureAlgorithm: rsa-sha1 is refused: RFC 8301 "
                                       "forbids signing with SHA-1; write rsa-sha256"),
    ("SignatureAlgorithm rsa-sha512", 1, "SignatureAlgorithm: unknown signing algorithm "
                                         "'rsa-sha512'; write rsa-sha256 or ed25519-sha256"),
    ("SyslogFacility mailx", 1, "SyslogFacility: 'mailx' is not a syslog facility"),
    ("PidFile run/x.pid", 1, "PidFile: 'run/x.pid' is a relative path"),
    ("TrustAnchorFile root.key", 1, "TrustAnchorFile: 'root.key' is a relative path"),
    ("UMask 22", 1, "UMask: '22' is ambiguous: OpenDKIM reads it as decimal 22, octal 22 was "
                    "probably meant; write 022"),
    ("UMask 0778", 1, "UMask: '0778' is not an octal mask; write e.g. 022 or 007"),
    ("UMask 01777", 1, "UMask: 01777 is larger than 0777"),
    ("UserID opendkim:open:dkim", 1, "UserID: 'opendkim:open:dkim' is not user or "
                                     "user:group"),
    ("AutoRestart yes", 1, "AutoRestart: postward-dkim does not restart itself; systemd "
                           "restarts it (Restart= in its unit): write AutoRestart no, or "
                           "remove the line"),
    ("DNSTimeout 0", 1, "DNSTimeout: 0 means 'wait forever' to OpenDKIM"),
    ("MaximumSignaturesToVerify 0", 1, "MaximumSignaturesToVerify: 0 is too small; give at "
                                       "least 1"),
    ("Nameservers 127.0.0.1,dns.example", 1, "Nameservers: 'dns.example' is not an IP "
                                             "address"),
    ("On-BadSignature bounce", 1, "On-BadSignature: 'bounce' is not an action; write accept, "
                                  "reject, tempfail, discard or quarantine"),
    ("On-Default maybe", 1, "On-Default: 'maybe' is not an action"),
    ("Mode sv\nLogWhy\n", 2, "LogWhy: has no value; give one or remove the line (OpenDKIM "
                             "refuses an empty value too)"),
    ("Mode sv\nLogWhy   # why not\n", 2, "LogWhy: has no value"),
    ("Foo bar", 1, "unknown option 'Foo'; OpenDKIM would refuse it too: see opendkim.conf(5)"),
    ("SigningTabel x", 1, "unknown option 'SigningTabel' (did you mean SigningTable?)"),
    ("KeyFileEd25519 /k", 1, "unknown option 'KeyFileEd25519' (did you mean "
                             "KeyTableEd25519?)"),
    ("Syslog=yes", 1, "unknown option 'Syslog=yes': opendkim.conf lines are 'Name value', not "
                      "'Name=value'; write 'Syslog yes'"),
    ("Quarantine yes", 1, "Quarantine is an OpenDKIM option postward-dkim does not implement; "
                          "remove it"),
    ("SendReports yes", 1, "SendReports is an OpenDKIM option postward-dkim does not "
                           "implement (postward-dkim sends no failure reports); remove it"),
    ("sendreports yes", 1, "SendReports is an OpenDKIM option"),
    ("Mode sv\nmode v", 2, "Mode: set twice (first at {conf}:1); OpenDKIM would silently use "
                           "the later one: keep one of them"),
    ("SignHeaders +Sender", 1, "SignHeaders: '+Sender': +Name and -Name change the default "
                               "list, which needs '*' in the list too (e.g. *,+Sender)"),
    ("SignHeaders *,Sender", 1, "SignHeaders: 'Sender': with '*' in the list a plain name is "
                                "ignored by OpenDKIM; write +Sender to add it"),
    ("SignHeaders From,Bad:Name", 1, "SignHeaders: 'Bad:Name' is not a header field name"),
    ("SignHeaders refile:/etc/x", 1, "SignHeaders: cannot read /etc/x"),
    ("OversignHeaders *", 1, "OversignHeaders: '*' (the default list) means nothing here; "
                             "remove it"),
    ("OversignHeaders From,X-Foo", 1, "OversignHeaders: x-foo not in SignHeaders; "
                                      "oversigning a field that is not signed makes bad "
                                      "signatures (see opendkim.conf(5)): add it to "
                                      "SignHeaders, e.g. *,+x-foo"),
    ("InternalHosts ::1,127.0.0.1", 1, "InternalHosts: unknown data set type ':'"),
    ("PeerList ldap://x/y", 1, "PeerList: ldap: data sets are an OpenDKIM feature"),
])
def test_error_messages(tmp_path: Path, body: str, line: int, message: str) -> None:
    path = tmp_path / "opendkim.conf"
    problem = one_error(tmp_path, body + "\n")
    assert problem.startswith(f"{path}:{line}: {message.format(conf=path)}")


def test_header_names_in_a_csl_list_are_checked(tmp_path: Path) -> None:
    problem = one_error(tmp_path, "SignHeaders From,Bad Name\n")
    assert problem == (f"{tmp_path / 'opendkim.conf'}:1: SignHeaders: 'Bad Name' is not a "
                       f"header field name (printable ASCII without ':' or spaces)")


def test_missing_data_set_file(tmp_path: Path) -> None:
    assert errors(tmp_path, "KeyTable refile:/nonexistent/KeyTable\n"
                            "SigningTable refile:/nonexistent/SigningTable\n") == [
        f"{tmp_path / 'opendkim.conf'}:1: KeyTable: cannot read /nonexistent/KeyTable: No such "
        f"file or directory",
        f"{tmp_path / 'opendkim.conf'}:2: SigningTable: cannot read /nonexistent/SigningTable: "
        f"No such file or directory"]


def test_refile_header_list_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "h", "From\n")
    assert one_error(tmp_path, f"SignHeaders refile:{path}\n") == (
        f"{tmp_path / 'opendkim.conf'}:1: SignHeaders: a refile: list cannot name header "
        f"fields (OpenDKIM cannot use one either); use csl:From,To or a file:")


def test_all_problems_at_once_in_file_then_line_order(tmp_path: Path) -> None:
    keys = write(tmp_path / "KeyTable", "a example.com:s\n")
    found = errors(tmp_path, f"Syslog maybe\nKeyTable {keys}\nSigningTable csl:x@y=a\n"
                             f"Mode q\n")
    c = tmp_path / "opendkim.conf"
    # ('a' is on a KeyTable line, if a bad one: the SigningTable's use of it is no problem)
    assert [p.split(": ", 1)[0] for p in found] == [f"{c}:1", f"{c}:4", f"{keys}:1"]


@pytest.mark.parametrize("name", opendkim_names.NOT_IMPLEMENTED)
def test_every_unimplemented_option_is_refused_by_name(tmp_path: Path, name: str) -> None:
    problem = one_error(tmp_path, f"{name} 1\n")
    assert problem.startswith(f"{tmp_path / 'opendkim.conf'}:1: {name} is an OpenDKIM option "
                              f"postward-dkim does not implement")
    assert problem.endswith("; remove it")


def test_the_name_sets_do_not_overlap() -> None:
    implemented = {n.lower() for n in opendkim_names.IMPLEMENTED}
    refused = {n.lower() for n in opendkim_names.NOT_IMPLEMENTED}
    assert not implemented & refused
    assert len(implemented) == len(opendkim_names.IMPLEMENTED)
    assert len(refused) == len(opendkim_names.NOT_IMPLEMENTED)


MANPAGE = Path("/usr/share/man/man5/opendkim.conf.5.gz")


@pytest.mark.skipif(not MANPAGE.exists(), reason="opendkim's manual is not installed")
def test_every_option_in_the_manual_is_implemented_or_refused() -> None:
    text = gzip.decompress(MANPAGE.read_bytes()).decode("utf-8", "replace")
    documented = re.findall(r"^\.TP\s*\n\.I (\S+) \(", text, re.MULTILINE)
    assert len(documented) > 130
    missing = [n for n in documented if opendkim_names.canonical(n) is None]
    assert missing == []


# --- options that go together --------------------------------------------------------------------

@pytest.fixture
def tables(tmp_path: Path) -> dict[str, str]:
    return {
        "keys": write(tmp_path / "KeyTable", "main example.com:rsa:/etc/dkim/rsa.key\n"),
        "ed": write(tmp_path / "KeyTableEd25519", "main example.com:ed:/etc/dkim/ed.key\n"),
        "signing": write(tmp_path / "SigningTable", "*@example.com main\n"),
    }


def test_key_table_ed25519_adds_a_second_signature(tmp_path: Path,
                                                   tables: dict[str, str]) -> None:
    c = load(tmp_path, f"KeyTable {tables['keys']}\nKeyTableEd25519 {tables['ed']}\n"
                       f"SigningTable refile:{tables['signing']}\n")
    assert [(k.selector, k.algorithm, k.key_path) for k in c.signing_keys_for("a@example.com")
            ] == [("rsa", "rsa", Path("/etc/dkim/rsa.key")),
                  ("ed", "ed25519", Path("/etc/dkim/ed.key"))]


def test_ed25519_signature_algorithm_marks_the_key_table(tmp_path: Path,
                                                         tables: dict[str, str]) -> None:
    c = load(tmp_path, f"KeyTable {tables['keys']}\nSigningTable refile:{tables['signing']}\n"
                       f"SignatureAlgorithm ed25519-sha256\n")
    assert [k.algorithm for k in c.signing_keys_for("a@example.com")] == ["ed25519"]


def test_multiple_signatures(tmp_path: Path) -> None:
    keys = write(tmp_path / "KeyTable", "a example.com:a:/a\nb example.com:b:/b\n")
    signing = write(tmp_path / "SigningTable", "*@example.com a\nboss@* b\n")
    body = f"KeyTable {keys}\nSigningTable refile:{signing}\n"
    assert [k.selector for k in load(tmp_path, body).signing_keys_for("boss@example.com")
            ] == ["a"]
    assert [k.selector for k in load(tmp_path, body + "MultipleSignatures yes\n")
            .signing_keys_for("boss@example.com")] == ["a", "b"]


def test_percent_key_name_missing_from_the_key_table(tmp_path: Path) -> None:
    keys = write(tmp_path / "KeyTable", "example.com example.com:s:/k\n")
    signing = write(tmp_path / "SigningTable", "*@* %\n")
    c = load(tmp_path, f"KeyTable {keys}\nSigningTable refile:{signing}\n")
    assert len(c.signing_keys_for("a@example.com")) == 1
    with pytest.raises(MissingKey):
        c.signing_keys_for("a@example.org")


def test_multiple_signatures_is_for_signing_tables_only(tmp_path: Path) -> None:
    c = load(tmp_path, "Domain example.com,a.example.com\nKeyFile /k\nSelector s\n"
                       "SubDomains yes\nMultipleSignatures yes\n")
    assert [k.domain for k in c.signing_keys_for("u@x.a.example.com")] == ["a.example.com"]


def test_single_key(tmp_path: Path) -> None:
    c = load(tmp_path, "Domain example.com, example.net\nKeyFile /etc/dkim/k.pem\n"
                       "Selector mail\nSubDomains yes\n")
    assert c.single_key and c.subdomains
    assert c.domains is not None and c.domains.keys() == ("example.com", "example.net")
    [choice] = c.signing_keys_for("a@example.net")
    assert (choice.domain, choice.selector, choice.key_path, choice.algorithm) == (
        "example.net", "mail", Path("/etc/dkim/k.pem"), "rsa")
    assert choice.source == f"{tmp_path / 'opendkim.conf'}:2"
    assert [(k.domain, k.signer) for k in c.signing_keys_for("a@b.example.com")] == [
        ("example.com", "@example.com")]
    assert c.signing_keys_for("a@example.org") == []


def test_single_key_domain_file(tmp_path: Path) -> None:
    domains = write(tmp_path / "domains", "example.com\nbad!domain\n")
    assert one_error(tmp_path, f"Domain {domains}\nKeyFile /k\nSelector s\n") == (
        f"{domains}:2: Domain: 'bad!domain' is not a domain name (nor '*', every domain)")


def test_single_key_refile_domains(tmp_path: Path) -> None:
    domains = write(tmp_path / "domains", "*.example.com\n")
    c = load(tmp_path, f"Domain refile:{domains}\nKeyFile /k\nSelector s\n")
    assert [k.domain for k in c.signing_keys_for("a@x.example.com")] == ["x.example.com"]
    assert c.signing_keys_for("a@example.com") == []
    assert one_error(tmp_path, f"Domain refile:{domains}\nKeyFile /k\nSelector s\n"
                               f"SubDomains yes\n").startswith(
        f"{tmp_path / 'opendkim.conf'}:4: SubDomains cannot extend a refile: Domain list")


@pytest.mark.parametrize(("body", "line", "message"), [
    ("KeyTable {keys}\nSigningTable refile:{signing}\nKeyFile /etc/dkim/k.pem", 3,
     "KeyFile is ignored by OpenDKIM when KeyTable is set (the KeyTable names each key's "
     "file); postward refuses the combination: remove one"),
    ("KeyTable {keys}\nSigningTable refile:{signing}\nSelector mail", 3,
     "Selector is ignored by OpenDKIM when KeyTable is set"),
    ("KeyTable {keys}\nSigningTable refile:{signing}\nDomain example.com", 3,
     "Domain is ignored by OpenDKIM when KeyTable is set (the SigningTable chooses the "
     "domains)"),
    ("SigningTable refile:{signing}", 1,
     "SigningTable needs a KeyTable naming the keys (OpenDKIM refuses it too): add KeyTable"),
    ("KeyTable {keys}", 1, "KeyTable needs a SigningTable to choose which key signs which "
                           "sender (OpenDKIM refuses it too): add SigningTable"),
    ("KeyTableEd25519 {ed}", 1, "KeyTableEd25519 adds Ed25519 keys under the key names the "
                                "SigningTable chooses; set KeyTable and SigningTable"),
    ("KeyTable {keys}\nSigningTable refile:{signing}\nKeyTableEd25519 {ed}\n"
     "SignatureAlgorithm ed25519-sha256", 3, "KeyTableEd25519: with SignatureAlgorithm "
                                             "ed25519-sha256 the KeyTable already holds "
                                             "Ed25519 keys"),
    ("KeyFile /k", 1, "KeyFile needs Selector (OpenDKIM refuses one without the other)"),
    ("Selector s", 1, "Selector needs KeyFile (OpenDKIM refuses one without the other)"),
    ("KeyFile /k\nSelector s", 1, "KeyFile and Selector sign nothing without Domain: add "
                                  "Domain, the domains to sign for"),
    ("Domain example.com", 1, "Domain needs KeyFile and Selector (OpenDKIM refuses it alone)"),
    ("Domain example.com\nKeyFile k.pem\nSelector s", 2, "KeyFile: 'k.pem' is a relative path"),
    ("Domain example.com\nKeyFile /k\nSelector bad/sel", 3, "Selector: 'bad/sel' is not a "
                                                            "selector"),
])
def test_combinations(tmp_path: Path, tables: dict[str, str], body: str, line: int,
                      message: str) -> None:
    problem = one_error(tmp_path, body.format(**tables) + "\n")
    assert problem.startswith(f"{tmp_path / 'opendkim.conf'}:{line}: {message}")


@pytest.mark.parametrize("body", [
    "Mode v\nKeyTable {keys}",  # no SigningTable: OpenDKIM checks that only when signing
    "Mode v\nKeyFile /k",
    "Mode v\nDomain example.com",
])
def test_verify_only_accepts_what_signing_needs_more_of(tmp_path: Path, tables: dict[str, str],
                                                        body: str) -> None:
    assert not load(tmp_path, body.format(**tables) + "\n").mode_sign


def test_signing_table_names_a_missing_key(tmp_path: Path, tables: dict[str, str]) -> None:
    signing = write(tmp_path / "Signing2", "*@example.com main\n*@example.net mian\n")
    assert one_error(tmp_path, f"KeyTable {tables['keys']}\nSigningTable refile:{signing}\n"
                     ) == (f"{signing}:2: SigningTable: key name 'mian' is not in the KeyTable "
                           f"({tables['keys']}); add it there or correct the name")


def test_names_ignore_case(tmp_path: Path, tables: dict[str, str]) -> None:
    c = load(tmp_path, f"keytable {tables['keys']}\nSIGNINGTABLE refile:{tables['signing']}\n")
    assert [k.selector for k in c.signing_keys_for("a@example.com")] == ["rsa"]
