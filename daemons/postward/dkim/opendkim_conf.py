"""opendkim.conf and the data sets it names, read unchanged into one typed, frozen config.

postward-dkim takes over from OpenDKIM without the admin rewriting anything: the guide's
/etc/opendkim.conf, KeyTable, SigningTable and TrustedHosts load as they are. Everything is read
and checked at load time, data set files included; every problem found is reported at once, as
``file:line: message`` (the data file's own line where the problem is in one), by raising
:class:`postward.core.config_file.ConfigError`.

Options OpenDKIM knows but postward does not implement are refused by name (see
opendkim_names.py); the syntax and its few deliberate strictnesses are in opendkim_syntax.py,
opendkim_values.py, datasets.py, keytables.py and peerlist.py. Combinations OpenDKIM accepts
while silently ignoring part of them are refused too: KeyFile, Selector or Domain next to a
KeyTable (OpenDKIM then ignores them), and KeyFile + Selector without Domain (signs nothing).

Defaults are OpenDKIM's, except: InternalHosts is 127.0.0.1 and ::1 (OpenDKIM: 127.0.0.1),
OversignHeaders is From, To, Subject, Date (OpenDKIM: none), and AuthservID is this host's name
(OpenDKIM: the MTA's name as the MTA reports it, which a milter only learns per message).
"""

from __future__ import annotations

import dataclasses
import socket as socket_module
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from postward.core.config_file import ConfigError, Problem
from postward.dkim import opendkim_values as v
from postward.dkim.datasets import DataSet, Origin, inline_dataset, load_dataset
from postward.dkim.header_lists import (
    DEFAULT_OVERSIGN_HEADERS,
    DEFAULT_SIGN_HEADERS,
    sign_and_oversign,
)
from postward.dkim.keytables import (
    KeyChoice,
    KeyTable,
    MissingKey,
    SigningTable,
    choose_keys,
    is_domain_name,
    key_table_from,
    signing_table_from,
    single_key_tables,
    unknown_key_problems,
)
from postward.dkim.opendkim_syntax import RawOption, read_conf
from postward.dkim.opendkim_values import Action, Canon, MilterSocket
from postward.dkim.peerlist import PeerList, peer_list_from

__all__ = ["DEFAULT_OVERSIGN_HEADERS", "DEFAULT_SIGN_HEADERS", "Actions", "KeyChoice",
           "MilterSocket", "MissingKey", "OpenDkimConfig", "load_opendkim_conf"]

T = TypeVar("T")

DEFAULT_INTERNAL_HOSTS = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class Actions:
    """What to do with a message in each trouble case (On-*). Defaults are OpenDKIM's."""

    bad_signature: Action = "accept"
    dns_error: Action = "tempfail"
    internal_error: Action = "tempfail"
    key_not_found: Action = "accept"
    no_signature: Action = "accept"
    security: Action = "tempfail"
    signature_error: Action = "reject"


_ACTION_OPTIONS = {
    "On-BadSignature": "bad_signature", "On-DNSError": "dns_error",
    "On-InternalError": "internal_error", "On-KeyNotFound": "key_not_found",
    "On-NoSignature": "no_signature", "On-Security": "security",
    "On-SignatureError": "signature_error",
}


@dataclass(frozen=True)
class OpenDkimConfig:
    """Everything postward-dkim takes from opendkim.conf. Header names are lower case.

    ``key_table`` and ``signing_table`` are also set for the single-key form (KeyFile,
    Selector, Domain; ``single_key`` is then true), built in memory so that signing has one
    path: :meth:`signing_keys_for`.
    """

    path: Path
    socket: MilterSocket
    authserv_id: str
    internal_hosts: PeerList
    mode_sign: bool = True
    mode_verify: bool = True
    header_canon: Canon = "simple"
    body_canon: Canon = "simple"
    domains: DataSet | None = None
    key_table: KeyTable | None = None
    key_table_ed25519: KeyTable | None = None
    signing_table: SigningTable | None = None
    single_key: bool = False
    multiple_signatures: bool = False
    subdomains: bool = False
    external_ignore_list: PeerList | None = None
    peer_list: PeerList | None = None
    minimum_key_bits: int = 1024
    sign_headers: tuple[str, ...] = DEFAULT_SIGN_HEADERS
    oversign_headers: tuple[str, ...] = DEFAULT_OVERSIGN_HEADERS
    actions: Actions = field(default_factory=Actions)
    always_add_ar_header: bool = False
    signature_algorithm: Literal["rsa-sha256", "ed25519-sha256"] = "rsa-sha256"
    software_header: bool = False
    remove_old_signatures: bool = False
    require_safe_keys: bool = True
    maximum_headers: int = 65536  # bytes of header block; 0: no limit
    maximum_signatures_to_verify: int = 3
    dns_timeout: int = 5
    nameservers: tuple[str, ...] = ()  # kept; the daemon normally uses postward.conf's [dns]
    resolver_configuration: str | None = None
    trust_anchor_file: Path | None = None
    syslog: bool = False
    syslog_success: bool = False
    syslog_facility: str = "mail"
    log_why: bool = False
    milter_debug: int = 0
    pid_file: Path | None = None
    temporary_directory: Path = Path("/tmp")
    umask: int | None = None  # None: leave the process umask alone
    user: str | None = None
    group: str | None = None

    def signing_keys_for(self, sender_address: str) -> list[KeyChoice]:
        """The keys to sign mail from ``sender_address`` (bare user@domain) with, in order:
        SigningTable -> KeyTable, each followed by its KeyTableEd25519 twin; "%" replaced by
        the sender's domain. [] when nothing matches. Raises MissingKey (see keytables)."""
        if self.signing_table is None or self.key_table is None:
            return []
        algorithm = "ed25519" if self.signature_algorithm == "ed25519-sha256" else "rsa"
        return choose_keys(sender_address, self.signing_table, self.key_table,
                           self.key_table_ed25519, algorithm)


class _Builder:
    """Turns raw options into config values, collecting every problem on the way."""

    def __init__(self, options: dict[str, RawOption], problems: list[Problem],
                 root: Path | None) -> None:
        self.options, self.problems, self.root = options, problems, root

    def fail(self, name: str, message: str) -> None:
        self.problems.append(self.options[name].problem(message))

    def value(self, name: str, parse: Callable[[str], T], default: T) -> T:
        option = self.options.get(name)
        if option is None:
            return default
        try:
            return parse(option.value)
        except ValueError as e:
            self.fail(name, str(e))
            return default

    def dataset(self, name: str) -> DataSet | None:
        option = self.options.get(name)
        if option is None:
            return None
        return load_dataset(option.value, Origin(name, option.path, option.line),
                            self.problems, self.root)

    def peer_list(self, name: str) -> PeerList | None:
        ds = self.dataset(name)
        return peer_list_from(ds, self.problems) if ds is not None else None


def _actions(b: _Builder) -> Actions:
    actions = Actions()
    if "On-Default" in b.options:
        every = b.value("On-Default", v.parse_action, "accept")
        actions = Actions(*(every for _ in dataclasses.fields(Actions)))
    changes = {attr: b.value(name, v.parse_action, getattr(actions, attr))
               for name, attr in _ACTION_OPTIONS.items() if name in b.options}
    return dataclasses.replace(actions, **changes)


def _socket(b: _Builder, path: Path, override: str | None) -> MilterSocket | None:
    configured = b.value("Socket", v.parse_socket, None)
    if override is None:
        if "Socket" not in b.options:
            b.problems.append(Problem(str(path), 0, "Socket is required (OpenDKIM requires "
                                      "it too): add e.g. 'Socket inet:8891@localhost'"))
        return configured
    try:
        return v.parse_socket(override)
    except ValueError as e:
        b.problems.append(Problem("(socket given on the command line)", 0, str(e)))
        return None


def _check_domains(b: _Builder, domains: DataSet) -> None:
    if domains.kind == "refile":
        return
    for e in domains.entries:
        if e.key != "*" and not is_domain_name(e.key):
            b.problems.append(Problem(e.path, e.line, f"Domain: {e.key!r} is not a domain name "
                                      f"(nor '*', every domain)"))


def _ignored_by_key_table(b: _Builder) -> None:
    what = {"KeyFile": "the KeyTable names each key's file",
            "Selector": "the KeyTable names each key's selector",
            "Domain": "the SigningTable chooses the domains"}
    for name, why in what.items():
        if name in b.options:
            b.fail(name, f"{name} is ignored by OpenDKIM when KeyTable is set ({why}); "
                         f"postward refuses the combination: remove one")


def _single_key(b: _Builder, domains: DataSet | None, subdomains: bool,
                signing: bool) -> tuple[KeyTable, SigningTable] | None:
    key_file = b.value("KeyFile", v.parse_abs_path, None)
    selector = b.value("Selector", _selector, None)
    given = {n for n in ("KeyFile", "Selector", "Domain") if n in b.options}
    if not signing or not given:
        return None
    if given == {"Domain"}:
        b.fail("Domain", "Domain needs KeyFile and Selector (OpenDKIM refuses it alone)")
    elif "KeyFile" in given and "Selector" not in given:
        b.fail("KeyFile", "KeyFile needs Selector (OpenDKIM refuses one without the other)")
    elif "Selector" in given and "KeyFile" not in given:
        b.fail("Selector", "Selector needs KeyFile (OpenDKIM refuses one without the other)")
    elif "Domain" not in given:
        b.fail("KeyFile", "KeyFile and Selector sign nothing without Domain: add Domain, "
                          "the domains to sign for")
    if domains is None or key_file is None or selector is None:
        return None
    if subdomains and domains.kind == "refile":
        b.fail("SubDomains", "SubDomains cannot extend a refile: Domain list; write the "
                             "subdomains as patterns (*.example.com) and drop SubDomains")
        return None
    return single_key_tables(domains, selector, str(key_file), subdomains,
                             b.options["KeyFile"].where)


def _selector(text: str) -> str:
    if not is_domain_name(text):
        raise ValueError(f"{text!r} is not a selector (letters, digits, '-', '_' and dots)")
    return text


def _table_combinations(b: _Builder, sign: bool, algorithm: str) -> None:
    """The combinations of KeyTable, SigningTable and KeyTableEd25519 that cannot work."""
    if "KeyTable" in b.options:
        _ignored_by_key_table(b)
        if "SigningTable" not in b.options and sign:
            b.fail("KeyTable", "KeyTable needs a SigningTable to choose which key signs which "
                               "sender (OpenDKIM refuses it too): add SigningTable")
    elif "SigningTable" in b.options:
        b.fail("SigningTable", "SigningTable needs a KeyTable naming the keys (OpenDKIM "
                               "refuses it too): add KeyTable")
    if "KeyTableEd25519" not in b.options:
        return
    if "KeyTable" not in b.options or "SigningTable" not in b.options:
        b.fail("KeyTableEd25519", "KeyTableEd25519 adds Ed25519 keys under the key names the "
                                  "SigningTable chooses; set KeyTable and SigningTable")
    elif algorithm == "ed25519-sha256":
        b.fail("KeyTableEd25519", "with SignatureAlgorithm ed25519-sha256 the KeyTable "
                                  "already holds Ed25519 keys; remove one of the two")


def _tables(b: _Builder, sign: bool, algorithm: str) -> dict[str, object]:
    """The config fields about choosing keys: the tables, Domain, SubDomains, MultipleSignatures.

    The single-key form becomes an equivalent KeyTable and SigningTable (keytables.py)."""
    subdomains = b.value("SubDomains", v.parse_bool, False)
    multiple = b.value("MultipleSignatures", v.parse_bool, False)
    domains = b.dataset("Domain")
    if domains is not None:
        _check_domains(b, domains)
    key_ds, sign_ds, ed_ds = (b.dataset(n) for n in ("KeyTable", "SigningTable",
                                                     "KeyTableEd25519"))
    keys = key_table_from(key_ds, b.problems) if key_ds else None
    signing = signing_table_from(sign_ds, b.problems) if sign_ds else None
    ed25519 = key_table_from(ed_ds, b.problems) if ed_ds else None
    _table_combinations(b, sign, algorithm)
    if signing is not None and key_ds is not None:
        b.problems.extend(unknown_key_problems(signing, key_ds, b.options["KeyTable"].value))
        if multiple:  # a SigningTable option: the single-key form signs once
            signing = dataclasses.replace(signing, multiple=True)
    single = None if "KeyTable" in b.options else _single_key(b, domains, subdomains, sign)
    if single is not None:
        keys, signing = single
    return {"domains": domains, "key_table": keys, "signing_table": signing,
            "key_table_ed25519": ed25519, "single_key": single is not None,
            "subdomains": subdomains, "multiple_signatures": multiple}


def _headers(b: _Builder) -> dict[str, tuple[str, ...]]:
    lists = {}
    for name in ("SignHeaders", "OversignHeaders"):
        ds = b.dataset(name)
        if ds is not None and ds.kind == "refile":
            b.fail(name, "a refile: list cannot name header fields (OpenDKIM cannot use one "
                         "either); use csl:From,To or a file:")
            ds = None
        lists[name] = ds
    sign, oversign, missing = sign_and_oversign(lists["SignHeaders"], lists["OversignHeaders"],
                                                b.problems)
    if missing:
        b.fail("OversignHeaders", f"{', '.join(missing)} not in SignHeaders; oversigning a "
                                  f"field that is not signed makes bad signatures (see "
                                  f"opendkim.conf(5)): add it to SignHeaders, e.g. *,+{missing[0]}")
    return {"sign_headers": sign, "oversign_headers": oversign}


def _auto_restart(text: str) -> bool:
    if v.parse_bool(text):
        raise ValueError("postward-dkim does not restart itself; systemd restarts it "
                         "(Restart= in its unit): write AutoRestart no, or remove the line")
    return False


def _build(b: _Builder, path: Path, override: str | None) -> OpenDkimConfig | None:
    sign, verify = b.value("Mode", v.parse_mode, (True, True))
    header_canon, body_canon = b.value("Canonicalization", v.parse_canon, ("simple", "simple"))
    algorithm = b.value("SignatureAlgorithm", v.parse_algorithm, "rsa-sha256")
    hostname = socket_module.gethostname()
    user, group = b.value("UserID", v.parse_user, (None, None))
    b.value("AutoRestart", _auto_restart, False)
    b.value("Background", v.parse_bool, False)  # accepted: postward never forks
    internal = b.peer_list("InternalHosts") or peer_list_from(
        inline_dataset("InternalHosts", DEFAULT_INTERNAL_HOSTS,
                       Origin("InternalHosts", "(default)", 0)), b.problems)
    fields = dict(
        path=path, authserv_id=b.value("AuthservID", lambda t: v.parse_authserv_id(t, hostname),
                                       hostname),
        internal_hosts=internal, mode_sign=sign, mode_verify=verify,
        header_canon=header_canon, body_canon=body_canon, signature_algorithm=algorithm,
        external_ignore_list=b.peer_list("ExternalIgnoreList"),
        peer_list=b.peer_list("PeerList"), actions=_actions(b),
        minimum_key_bits=b.value("MinimumKeyBits", v.parse_int, 1024),
        always_add_ar_header=b.value("AlwaysAddARHeader", v.parse_bool, False),
        software_header=any([b.value("SoftwareHeader", v.parse_bool, False),
                             b.value("X-Header", v.parse_bool, False)]),
        remove_old_signatures=b.value("RemoveOldSignatures", v.parse_bool, False),
        require_safe_keys=b.value("RequireSafeKeys", v.parse_bool, True),
        maximum_headers=b.value("MaximumHeaders", v.parse_int, 65536),
        maximum_signatures_to_verify=b.value("MaximumSignaturesToVerify",
                                             lambda t: v.parse_int(t, 1), 3),
        dns_timeout=b.value("DNSTimeout", _dns_timeout, 5),
        nameservers=b.value("Nameservers", v.parse_nameservers, ()),
        resolver_configuration=b.value("ResolverConfiguration", str, None),
        trust_anchor_file=b.value("TrustAnchorFile", v.parse_abs_path, None),
        syslog=b.value("Syslog", v.parse_bool, False),
        syslog_success=b.value("SyslogSuccess", v.parse_bool, False),
        syslog_facility=b.value("SyslogFacility", v.parse_facility, "mail"),
        log_why=b.value("LogWhy", v.parse_bool, False),
        milter_debug=b.value("MilterDebug", v.parse_int, 0),
        pid_file=b.value("PidFile", v.parse_abs_path, None),
        temporary_directory=b.value("TemporaryDirectory", v.parse_abs_path, Path("/tmp")),
        umask=b.value("UMask", v.parse_umask, None), user=user, group=group,
        **_tables(b, sign, algorithm), **_headers(b),
    )
    sock = _socket(b, path, override)
    if b.problems or sock is None:
        return None
    return OpenDkimConfig(socket=sock, **fields)  # type: ignore[arg-type]


def _dns_timeout(text: str) -> int:
    if text.strip() == "0":
        raise ValueError("0 means 'wait forever' to OpenDKIM, which would hang mail in a "
                         "milter; give seconds, e.g. 5")
    return v.parse_int(text, 1)


def load_opendkim_conf(path: Path, socket_override: str | None = None, *,
                       root: Path | None = None) -> OpenDkimConfig:
    """Read opendkim.conf at ``path`` and every file it names; raise ConfigError listing all
    problems. ``socket_override`` (a Socket value, e.g. from the command line) replaces the
    file's Socket. ``root``, when given, is prefixed to the absolute paths the config names
    (Include and data set files, not key files), to check a tree copied from elsewhere."""
    problems: list[Problem] = []
    reader = read_conf(path, problems, root)
    if reader is None:
        raise ConfigError(problems)
    config = _build(_Builder(reader.options, problems, root), path, socket_override)
    if config is None:
        files = reader.files + [p.path for p in problems if p.path not in reader.files]
        raise ConfigError(sorted(problems, key=lambda p: (files.index(p.path), p.line)))
    return config
