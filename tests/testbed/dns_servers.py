"""Real DNS servers for tests: rbldnsd serving DNSBL/RHSBL zones, and unbound in front of it.

The query path is the production one: a client asks unbound, unbound answers host data
(A, MX, TXT, PTR ...) from ``local-data`` and forwards the blocklist zones with ``stub-zone`` to
rbldnsd. Both run in the foreground under :class:`~tests.testbed.process.ManagedProcess`, bound to
the session's private loopback address, each in its own directory.

Nothing may leave the machine: unbound answers every name outside the test zones itself
(``local-zone: "." static`` gives NXDOMAIN, or ``refuse``), sends from the loopback address only
(``outgoing-interface``; the kernel refuses a route from 127/8 to anywhere else) and never uses
IPv6 for upstream queries.

Facts that shape this module (rbldnsd 1.0pre 20210120, unbound 1.17.1, Debian 12):

* rbldnsd refuses to run as root and reads its files after dropping privileges, so the files
  are 0644 in a 0755 directory and it runs as ``rbldns`` (or ``nobody``).
* rbldnsd serves UDP only (no TCP), and notices changed files by ``st_mtime`` (whole seconds)
  or size: a rewrite within the same second and of the same size would be missed, so every
  rewrite moves the mtime forward by at least a second. We reload with SIGHUP (``-c 0``
  disables its own polling) and know the reload happened when the zone's SOA serial changes.
* unbound has default local zones (``test.``, ``invalid.``, the TEST-NET reverse zones,
  ``8.b.d.0.1.0.0.2.ip6.arpa.`` ...) that answer NXDOMAIN for test names; they are turned off
  with ``nodefault`` so the configured outside policy applies uniformly, and explicit zones
  win over them anyway.
* unbound caches rbldnsd's answers (positive and negative) as production does; after a data
  change we flush the zone through ``unbound-control`` on a Unix socket in unbound's own
  directory (no TCP control port that parallel runs could fight over, no certificates).
* unbound's QNAME minimisation (on by default, as in production) first asks rbldnsd for
  ``192.dnsbl.test`` etc., gets NXDOMAIN and falls back to the full name: rbldnsd's query log
  shows these extra queries.
* Answers bigger than 512 bytes (a DKIM key with several TXT strings) come back truncated over
  UDP without EDNS; ``dns.resolver.Resolver`` retries over TCP, plain ``dns.query.udp`` does not.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.reversename

from tests.testbed.net import free_port, wait_until
from tests.testbed.process import DaemonFailed, ManagedProcess

ZoneKind = Literal["ip4set", "ip4trie", "ip4tset", "ip6trie", "ip6tset", "dnset"]
Outside = Literal["static", "refuse"]

_IP_KINDS = frozenset({"ip4set", "ip4trie", "ip4tset", "ip6trie", "ip6tset"})
# Kinds whose entries all share the zone's one A+TXT value (rbldnsd rejects per-entry values).
_TRIVIAL_KINDS = frozenset({"ip4tset", "ip6tset"})

# unbound's built-in local zones that cover test data (RFC 2606/5737/3849 names): switched off so
# names below them follow the configured outside policy or an explicit LocalZone.
_SHADOWING_DEFAULT_ZONES = (
    "test.",
    "2.0.192.in-addr.arpa.",
    "100.51.198.in-addr.arpa.",
    "113.0.203.in-addr.arpa.",
    "8.b.d.0.1.0.0.2.ip6.arpa.",
)

# A TXT record unbound serves from its config, changed on every (re)configuration: seeing the
# new value proves the new config is live. ``.invalid`` can never clash with real data.
GENERATION_NAME = "generation.testbed.invalid."

# Unix socket paths are limited to 108 bytes; deeper pytest directories need a short fallback.
_MAX_SOCKET_PATH = 100


def fqdn(name: str) -> str:
    """``name`` with exactly one trailing dot, lower-cased (unbound and rbldnsd want absolute)."""
    return name.rstrip(".").lower() + "."


def dnsbl_query_name(subject: str, zone: str) -> str:
    """The name a DNSBL client asks for: reversed IPv4 octets, reversed IPv6 nibbles (32 of
    them), or for a domain (RHSBL) the domain itself, prepended to ``zone``."""
    try:
        address = ipaddress.ip_address(subject)
    except ValueError:
        return fqdn(f"{subject.rstrip('.')}.{zone}")
    reverse = dns.reversename.from_address(str(address))
    suffix = dns.reversename.ipv4_reverse_domain if address.version == 4 \
        else dns.reversename.ipv6_reverse_domain
    return fqdn(f"{reverse.relativize(suffix).to_text()}.{zone}")


# --------------------------------------------------------------------------------------------
# rbldnsd
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listing:
    """One rbldnsd entry with its own answer.

    ``key``: an address, CIDR range, rbldnsd range (``192.0.2.1-20``), or a domain for dnset
    (``spam.example``, ``*.spam.example`` = subdomains only, ``.spam.example`` = both); a leading
    ``!`` excludes. ``a``: the A value (None: the zone's default). ``txt``: the TXT template with
    rbldnsd's substitutions (``$`` = the queried address / the matching dnset entry, ``$1``..
    ``$9`` = the zone's variables); None: the zone's default; ``""``: no TXT at all.
    """

    key: str
    a: str | None = None
    txt: str | None = None


@dataclass(frozen=True)
class Zone:
    """A DNSBL/RHSBL dataset served by rbldnsd.

    Several Zones may share a ``name`` with different kinds (say ip4set + ip6trie): rbldnsd then
    serves them as one zone. Plain strings in ``entries`` are written verbatim (rbldnsd syntax).
    """

    name: str
    kind: ZoneKind
    entries: Sequence[Listing | str] = ()
    default_a: str = "127.0.0.2"
    default_txt: str | None = None
    ttl: int = 300
    negative_ttl: int = 60
    variables: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in _IP_KINDS | {"dnset"}:
            raise ValueError(f"unsupported rbldnsd dataset type {self.kind!r}")
        object.__setattr__(self, "name", fqdn(self.name))
        object.__setattr__(self, "entries", tuple(self.entries))
        for key in self.variables:
            if key != "=" and not (len(key) == 1 and key.isdigit()):
                raise ValueError(f"rbldnsd variables are $0..$9 and $=, not ${key}")
        for entry in self.entries:
            self._check(entry)

    @property
    def file_name(self) -> str:
        return f"{self.name.rstrip('.')}.{self.kind}"

    def with_entries(self, entries: Sequence[Listing | str]) -> Zone:
        return replace(self, entries=tuple(entries))

    def _check(self, entry: Listing | str) -> None:
        text = entry.key if isinstance(entry, Listing) else entry
        values = [text] + ([entry.a or "", entry.txt or ""] if isinstance(entry, Listing) else [])
        if any("\n" in v for v in values):
            raise ValueError(f"newline in rbldnsd entry {entry!r}")
        if isinstance(entry, Listing) and self.kind in _TRIVIAL_KINDS and (entry.a or entry.txt):
            raise ValueError(f"{self.kind} entries cannot carry their own A/TXT: {entry!r}")
        if isinstance(entry, Listing) and self.kind in _IP_KINDS:
            _check_ip_key(entry.key, self.kind)

    def render(self, serial: int) -> str:
        """The dataset file: SOA (whose serial proves a reload), TTL, variables, entries."""
        origin = self.name
        lines = [
            f"# {self.kind} dataset for {origin}, written by the test bed",
            f"$SOA {self.ttl} ns.{origin} hostmaster.{origin} {serial} 600 300 86400 "
            f"{self.negative_ttl}",
            f"$TTL {self.ttl}",
        ]
        lines += [f"${key} {value}" for key, value in sorted(self.variables.items())]
        lines.append(f":{self.default_a}:{self.default_txt or ''}")
        lines += [self._entry_line(entry) for entry in self.entries]
        return "\n".join(lines) + "\n"

    def _entry_line(self, entry: Listing | str) -> str:
        if isinstance(entry, str):
            return entry
        if entry.a is None and entry.txt is None:
            return entry.key
        if entry.txt is None:
            return f"{entry.key} :{entry.a}"  # own A, zone's default TXT
        return f"{entry.key} :{entry.a or self.default_a}:{entry.txt}"


def _check_ip_key(key: str, kind: str) -> None:
    """Catch what rbldnsd would only warn about and then silently not list: a CIDR range with
    host bits set, or an address of the wrong family. rbldnsd's own shorthands (``192.0.2``,
    ``192.0.2.1-20``, ``2001:db8:1:2``) are passed through unchecked."""
    bare = key.removeprefix("!")
    try:
        loose = ipaddress.ip_network(bare, strict=False)
    except ValueError:
        return
    if (loose.version == 4) != kind.startswith("ip4"):
        raise ValueError(f"{key!r} does not belong in a {kind} zone")
    ipaddress.ip_network(bare, strict=True)  # raises on 192.0.2.10/24


def _rbldnsd_user() -> str:
    for user in ("rbldns", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(user)
            return user
    raise RuntimeError("neither user rbldns nor nobody exists; rbldnsd will not run as root")


class _Server:
    """What Rbldnsd and Unbound share: one ManagedProcess, restarted as a whole."""

    _process: ManagedProcess | None

    def start(self, timeout: float = 20.0) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def restart(self, timeout: float = 20.0) -> None:
        self.stop()
        self.start(timeout)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def running(self) -> bool:
        return self._process is not None and self._process.running()

    def log_tail(self, lines: int = 40) -> str:
        return self._process.log_tail(lines) if self._process else "(not started)"


class Rbldnsd(_Server):
    """A real rbldnsd in the foreground, serving ``zones`` on ``address``:``port`` (UDP only)."""

    def __init__(
        self,
        directory: Path,
        address: str,
        zones: Sequence[Zone],
        port: int | None = None,
        *,
        query_log: bool = True,
        binary: str = "rbldnsd",
    ) -> None:
        if not zones:
            raise ValueError("rbldnsd needs at least one zone")
        self.directory = directory
        self.address = address
        self.port = port if port is not None else free_port(address)
        self.query_log = query_log
        self.binary = binary
        self._zones: dict[tuple[str, str], Zone] = {}
        for zone in zones:
            self._add(zone)
        # SOA serial per zone name; a new serial in rbldnsd's answer proves a reload.
        self._last_serial = int(time.time())
        self._serials: dict[str, int] = {}
        self._mtime = 0
        self._process: ManagedProcess | None = None

    # -- data ---------------------------------------------------------------------------------

    @property
    def zones(self) -> tuple[Zone, ...]:
        return tuple(self._zones.values())

    @property
    def zone_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(zone.name for zone in self._zones.values()))

    def _add(self, zone: Zone) -> None:
        key = (zone.name, zone.kind)
        if key in self._zones:
            raise ValueError(f"zone {zone.name} has two {zone.kind} datasets")
        self._zones[key] = zone

    def serial(self, name: str) -> int:
        """The SOA serial of zone ``name`` as last written."""
        return self._serials[fqdn(name)]

    def set_zone(self, zone: Zone) -> None:
        """Replace (or add) one dataset and make the running rbldnsd serve it.

        A changed dataset is reloaded in place with SIGHUP; a new (name, kind) changes
        rbldnsd's command line and so restarts it on the same port.
        """
        key = (zone.name, zone.kind)
        is_new = key not in self._zones
        self._zones[key] = zone
        self._write_zone_files(zone.name)
        if self._process is None or not self._process.running():
            return
        if is_new:
            self.restart()
        else:
            self.reload(zone.name)

    def reload(self, name: str | None = None, timeout: float = 10.0) -> None:
        """SIGHUP rbldnsd and wait until zone ``name`` (default: all) shows its latest serial."""
        assert self._process is not None, "rbldnsd is not started"
        self._process.signal(signal.SIGHUP)
        names = [fqdn(name)] if name else list(self.zone_names)
        for zone_name in names:
            _wait_for(lambda n=zone_name: self._serves_current(n), timeout,
                      f"rbldnsd reload of {zone_name}", self._process)

    def _write_zone_files(self, name: str) -> None:
        # Every dataset of a zone carries the zone's SOA; rewriting them all with one new serial
        # means whichever rbldnsd takes the SOA from proves the whole zone was reloaded.
        self._last_serial += 1
        self._serials[name] = self._last_serial
        for zone in self._zones.values():
            if zone.name == name:
                self._write(zone.file_name, zone.render(self._last_serial))

    def _write(self, file_name: str, text: str) -> None:
        path = self.directory / file_name
        tmp = path.with_name(f".{file_name}.tmp")
        tmp.write_text(text)
        tmp.chmod(0o644)  # rbldnsd reads as its unprivileged user
        # rbldnsd compares whole-second mtimes: make each version's mtime strictly newer.
        self._mtime = max(int(time.time()), self._mtime + 1)
        os.utime(tmp, (self._mtime, self._mtime))
        tmp.replace(path)  # atomic: rbldnsd never reads half a file

    # -- process ------------------------------------------------------------------------------

    def argv(self) -> list[str]:
        argv = [
            self.binary, "-n",               # foreground, no fork
            "-u", _rbldnsd_user(),
            "-b", f"{self.address}/{self.port}",
            "-w", str(self.directory),
            "-c", "0",                        # no mtime polling: we SIGHUP when data changes
            "-4",
        ]
        if self.query_log:
            argv += ["-l", "+-"]              # every query, line-buffered, into our log file
        argv += [f"{zone.name.rstrip('.')}:{zone.kind}:{zone.file_name}"
                 for zone in self._zones.values()]
        return argv

    def start(self, timeout: float = 20.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o755)
        for name in self.zone_names:
            self._write_zone_files(name)
        self._process = ManagedProcess("rbldnsd", self.argv(), self.directory / "rbldnsd.log",
                                       cwd=self.directory)
        self._process.start(ready=self._all_current, timeout=timeout)

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()

    # -- queries ------------------------------------------------------------------------------

    def query(self, name: str, rdtype: str = "A", timeout: float = 2.0) -> dns.message.Message:
        """Ask rbldnsd itself (UDP, EDNS), bypassing unbound."""
        request = dns.message.make_query(fqdn(name), rdtype, use_edns=0, payload=1232)
        return dns.query.udp(request, self.address, port=self.port, timeout=timeout)

    def _serves_current(self, name: str) -> bool:
        reply = probe(dns.message.make_query(fqdn(name), "SOA"), self.address, self.port)
        if reply is None:
            return False
        return any(rrset.rdtype == dns.rdatatype.SOA and rrset[0].serial == self._serials[name]
                   for rrset in reply.answer)

    def _all_current(self) -> bool:
        return all(self._serves_current(name) for name in self.zone_names)


# --------------------------------------------------------------------------------------------
# unbound
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One local-data record: ``rdata`` in zone-file presentation format (TXT already quoted)."""

    name: str
    rdtype: str
    rdata: str
    ttl: int = 300

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", fqdn(self.name))
        object.__setattr__(self, "rdtype", self.rdtype.upper())
        # The whole record sits in a single-quoted unbound config string.
        if "'" in self.rdata or "\n" in self.rdata:
            raise ValueError(f"quote or newline in rdata of {self.name}: {self.rdata!r}")

    def text(self) -> str:
        return f"{self.name} {self.ttl} IN {self.rdtype} {self.rdata}"


def a(name: str, address: str, ttl: int = 300) -> Record:
    return Record(name, "A", str(ipaddress.IPv4Address(address)), ttl)


def aaaa(name: str, address: str, ttl: int = 300) -> Record:
    return Record(name, "AAAA", str(ipaddress.IPv6Address(address)), ttl)


def mx(name: str, preference: int, exchange: str, ttl: int = 300) -> Record:
    return Record(name, "MX", f"{preference} {fqdn(exchange)}", ttl)


def ns(name: str, server: str, ttl: int = 300) -> Record:
    return Record(name, "NS", fqdn(server), ttl)


def cname(name: str, target: str, ttl: int = 300) -> Record:
    return Record(name, "CNAME", fqdn(target), ttl)


def ptr(address: str, target: str, ttl: int = 300) -> Record:
    """The PTR record for ``address`` (IPv4 or IPv6) pointing at ``target``."""
    return Record(dns.reversename.from_address(address).to_text(), "PTR", fqdn(target), ttl)


def txt(name: str, text: str | Sequence[str], ttl: int = 300) -> Record:
    """A TXT record. A ``str`` is split into 255-byte character-strings as DNS requires (SPF,
    DKIM keys); a sequence gives the character-strings explicitly."""
    if isinstance(text, str):
        data = text.encode()
        chunks = [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]
    else:
        chunks = [s.encode() for s in text]
        if any(len(c) > 255 for c in chunks):
            raise ValueError("a TXT character-string holds at most 255 bytes")
    return Record(name, "TXT", " ".join(_quote_txt(c) for c in chunks), ttl)


def _quote_txt(chunk: bytes) -> str:
    # Zone-file escaping: \" and \\ literally, anything else unusual (including the single quote
    # that would end unbound's config string) as \DDD.
    out = []
    for byte in chunk:
        char = chr(byte)
        if char in '"\\':
            out.append("\\" + char)
        elif 0x20 <= byte < 0x7F and char != "'":
            out.append(char)
        else:
            out.append(f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


@dataclass(frozen=True)
class LocalZone:
    """An unbound ``local-zone`` with its ``local-data``.

    ``kind`` is unbound's zone type: ``static`` answers NXDOMAIN/NODATA for names without data,
    ``transparent`` lets other names through to resolution. With ``soa`` a SOA record is added
    (unless one is given) so negative answers carry it, with ``negative_ttl`` as the minimum.
    """

    name: str
    records: Sequence[Record] = ()
    kind: str = "static"
    soa: bool = True
    negative_ttl: int = 60

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", fqdn(self.name))
        object.__setattr__(self, "records", tuple(self.records))
        for record in self.records:
            if not dns.name.from_text(record.name).is_subdomain(dns.name.from_text(self.name)):
                raise ValueError(f"{record.name} is not inside local zone {self.name}")

    def all_records(self) -> tuple[Record, ...]:
        if not self.soa or any(r.rdtype == "SOA" and r.name == self.name for r in self.records):
            return tuple(self.records)
        soa = Record(self.name, "SOA", f"ns.{self.name} hostmaster.{self.name} 1 3600 600 "
                                       f"86400 {self.negative_ttl}", 3600)
        return (soa, *self.records)


def zone_for(name: str) -> str:
    """The zone a record belongs in when none is given: a /24 reverse zone for IPv4 PTR names,
    the /32 (8 nibbles) reverse zone for IPv6, otherwise the last two labels."""
    labels = fqdn(name).rstrip(".").split(".")
    if labels[-2:] == ["in-addr", "arpa"]:
        return fqdn(".".join(labels[-5:]))
    if labels[-2:] == ["ip6", "arpa"]:
        return fqdn(".".join(labels[-10:]))
    return fqdn(".".join(labels[-2:]))


def group_records(records: Iterable[Record], zones: Iterable[str] = (),
                  negative_ttl: int = 60) -> list[LocalZone]:
    """Sort records into static LocalZones: the longest of ``zones`` that holds each record,
    else :func:`zone_for`. Lets tests list hosts and PTRs without spelling out reverse zones."""
    names = sorted({fqdn(z) for z in zones}, key=len, reverse=True)
    grouped: dict[str, list[Record]] = {}
    for record in records:
        owner = dns.name.from_text(record.name)
        zone = next((z for z in names if owner.is_subdomain(dns.name.from_text(z))),
                    zone_for(record.name))
        grouped.setdefault(zone, []).append(record)
    return [LocalZone(zone, recs, negative_ttl=negative_ttl) for zone, recs in grouped.items()]


@dataclass(frozen=True)
class Stub:
    """A zone unbound forwards (as ``stub-zone``) to an authoritative server, e.g. rbldnsd."""

    name: str
    address: str
    port: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", fqdn(self.name))


class Unbound(_Server):
    """A real unbound in the foreground with local test data and stubs, answering nothing else.

    ``outside``: how names outside every test zone are answered, ``static`` (NXDOMAIN) or
    ``refuse`` (REFUSED). ``cache_max_ttl``/``cache_max_negative_ttl`` cap unbound's cache
    (None: unbound's defaults, as in production). ``extra``: further ``server:`` lines.
    """

    def __init__(
        self,
        directory: Path,
        address: str,
        local_zones: Sequence[LocalZone] = (),
        stubs: Sequence[Stub] = (),
        port: int | None = None,
        *,
        outside: Outside = "static",
        cache_max_ttl: int | None = None,
        cache_max_negative_ttl: int | None = None,
        verbosity: int = 1,
        extra: Sequence[str] = (),
        binary: str = "unbound",
    ) -> None:
        self.directory = directory
        self.address = address
        self.port = port if port is not None else free_port(address)
        self.outside: Outside = outside
        self.cache_max_ttl = cache_max_ttl
        self.cache_max_negative_ttl = cache_max_negative_ttl
        self.verbosity = verbosity
        self.extra = tuple(extra)
        self.binary = binary
        self._local_zones = {zone.name: zone for zone in local_zones}
        self._stubs = {stub.name: stub for stub in stubs}
        self._generation = 0
        self._socket_dir: Path | None = None
        self._process: ManagedProcess | None = None

    @property
    def config_path(self) -> Path:
        return self.directory / "unbound.conf"

    @property
    def nameserver(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def local_zones(self) -> tuple[LocalZone, ...]:
        return tuple(self._local_zones.values())

    @property
    def stubs(self) -> tuple[Stub, ...]:
        return tuple(self._stubs.values())

    # -- configuration ------------------------------------------------------------------------

    def _control_socket(self) -> Path:
        path = self.directory / "control.sock"
        if len(str(path)) <= _MAX_SOCKET_PATH:
            return path
        if self._socket_dir is None:
            self._socket_dir = Path(tempfile.mkdtemp(prefix="tb-unbound-"))
        return self._socket_dir / "control.sock"

    def render(self) -> str:
        server = [
            f"verbosity: {self.verbosity}",
            f'directory: "{self.directory}"',
            'chroot: ""',
            'username: ""',                       # stay root: no files to chown, no setuid
            f'pidfile: "{self.directory / "unbound.pid"}"',  # not /run/unbound.pid: shared
            "use-syslog: no",
            'logfile: ""',                        # stderr, i.e. our log file
            "log-time-ascii: yes",
            "do-daemonize: no",
            "num-threads: 1",
            "so-reuseport: no",                   # a port clash must fail, not share queries
            f"interface: {self.address}@{self.port}",
            f"port: {self.port}",
            # Upstream queries leave from loopback only: the kernel has no route from 127/8
            # to any other network, so even a bug cannot reach the root servers.
            f"outgoing-interface: {self.address}",
            "do-ip6: no",
            "do-not-query-localhost: no",         # our stubs live on 127/8
            'module-config: "iterator"',          # no DNSSEC, no trust anchor files
            "access-control: 0.0.0.0/0 allow",    # bound to a private address anyway
            *self._cache_lines(),
            f'local-zone: "." {self.outside}',    # everything not under a test zone
            *self._default_zone_lines(),
            f"local-data: '{GENERATION_NAME} 0 IN TXT \"{self._generation}\"'",
            *self._local_zone_lines(),
            *self.extra,
        ]
        control = [
            "control-enable: yes",
            f'control-interface: "{self._control_socket()}"',
            "control-use-cert: no",
        ]
        parts = ["server:", *(f"    {line}" for line in server),
                 "remote-control:", *(f"    {line}" for line in control)]
        for stub in self._stubs.values():
            parts += ["stub-zone:", f'    name: "{stub.name}"',
                      f"    stub-addr: {stub.address}@{stub.port}"]
        return "\n".join(parts) + "\n"

    def _cache_lines(self) -> list[str]:
        lines = []
        if self.cache_max_ttl is not None:
            lines.append(f"cache-max-ttl: {self.cache_max_ttl}")
        if self.cache_max_negative_ttl is not None:
            lines.append(f"cache-max-negative-ttl: {self.cache_max_negative_ttl}")
        return lines

    def _default_zone_lines(self) -> list[str]:
        # An explicit zone of the same name replaces the default by itself.
        return [f'local-zone: "{zone}" nodefault' for zone in _SHADOWING_DEFAULT_ZONES
                if zone not in self._local_zones]

    def _local_zone_lines(self) -> list[str]:
        lines = []
        for stub in self._stubs.values():
            if stub.name not in self._local_zones:
                # Punches a hole in "." static/refuse so the stub's names reach the iterator.
                lines.append(f'local-zone: "{stub.name}" transparent')
        for zone in self._local_zones.values():
            lines.append(f'local-zone: "{zone.name}" {zone.kind}')
            lines += [f"local-data: '{record.text()}'" for record in zone.all_records()]
        return lines

    def _write_config(self) -> None:
        # unbound and its tools always get the file name relative to the directory: they glob
        # the -c path, and a "[" in it (pytest's parametrized test names) crashes them.
        self._generation += 1
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.render())
        check = subprocess.run(["unbound-checkconf", self.config_path.name], cwd=self.directory,
                               capture_output=True, text=True, check=False)
        if check.returncode != 0:
            raise ValueError(f"unbound config rejected:\n{check.stdout}{check.stderr}")

    # -- process ------------------------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> None:
        self._write_config()
        self._process = ManagedProcess(
            "unbound", [self.binary, "-d", "-c", self.config_path.name],
            self.directory / "unbound.log", cwd=self.directory)
        self._process.start(ready=self._serves_current_config, timeout=timeout)

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    # -- changes at run time ------------------------------------------------------------------

    def control(self, *args: str, timeout: float = 10.0) -> str:
        """Run ``unbound-control`` against this instance; raises on failure, returns stdout."""
        result = subprocess.run(["unbound-control", "-c", self.config_path.name, *args],
                                cwd=self.directory, capture_output=True, text=True,
                                timeout=timeout, check=False)
        if result.returncode != 0 or result.stdout.startswith("error"):
            raise RuntimeError(f"unbound-control {' '.join(args)} failed: "
                               f"{result.stdout}{result.stderr}")
        return result.stdout

    def flush(self, zone: str = ".") -> None:
        """Forget cached answers at and below ``zone`` (default: everything) and what unbound
        learnt about upstream servers (a restarted rbldnsd may have looked dead)."""
        self.control("flush_zone", fqdn(zone))
        self.control("flush_infra", "all")

    def set_local_zone(self, zone: LocalZone) -> None:
        """Add or replace a local zone in the running unbound."""
        self._local_zones[zone.name] = zone
        self.reconfigure()

    def set_stub(self, stub: Stub) -> None:
        self._stubs[stub.name] = stub
        self.reconfigure()

    def reconfigure(self, timeout: float = 20.0) -> None:
        """Rewrite the config and ``reload`` (which also empties the cache); returns once the
        new config answers."""
        self._write_config()
        if not self.running():
            return
        self.control("reload")
        assert self._process is not None
        _wait_for(self._serves_current_config, timeout, "unbound reload", self._process)

    # -- queries ------------------------------------------------------------------------------

    def resolver(self, lifetime: float = 3.0) -> dns.resolver.Resolver:
        """A dnspython resolver that asks only this unbound (no system config, no cache)."""
        return make_resolver(self.address, self.port, lifetime)

    def _serves_current_config(self) -> bool:
        reply = probe(dns.message.make_query(GENERATION_NAME, "TXT"), self.address, self.port)
        if reply is None:
            return False
        expected = str(self._generation).encode()
        return any(rrset.rdtype == dns.rdatatype.TXT and rrset[0].strings == (expected,)
                   for rrset in reply.answer)


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str,
              process: ManagedProcess) -> None:
    """Poll ``predicate``; on timeout fail with the daemon's latest log lines."""
    try:
        wait_until(predicate, timeout=timeout, what=what)
    except TimeoutError as exc:
        raise DaemonFailed(f"{exc}:\n{process.log_tail()}") from None


def probe(request: dns.message.Message, address: str, port: int,
          timeout: float = 0.5) -> dns.message.Message | None:
    """One UDP query for readiness polling; None if nobody answers.

    The socket is connected so that "port unreachable" (daemon not bound yet) fails at once
    instead of costing the whole timeout, as an unconnected socket would.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((address, port))
        try:
            return dns.query.udp(request, address, port=port, timeout=timeout, sock=sock)
        except (dns.exception.Timeout, OSError):
            return None


def make_resolver(address: str, port: int, lifetime: float = 3.0) -> dns.resolver.Resolver:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [address]
    resolver.port = port
    resolver.timeout = lifetime
    resolver.lifetime = lifetime
    resolver.cache = None
    return resolver


# --------------------------------------------------------------------------------------------
# both together
# --------------------------------------------------------------------------------------------


class DnsTestbed:
    """rbldnsd behind unbound: point clients at :attr:`nameserver` ("ADDR:PORT").

    ``directory`` gets ``rbldnsd/`` and ``unbound/`` subdirectories; the keyword options are
    :class:`Unbound`'s.
    """

    def __init__(
        self,
        directory: Path,
        address: str,
        zones: Sequence[Zone],
        local_zones: Sequence[LocalZone] = (),
        *,
        outside: Outside = "static",
        cache_max_ttl: int | None = None,
        cache_max_negative_ttl: int | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        self.directory = directory
        self.rbldnsd = Rbldnsd(directory / "rbldnsd", address, zones)
        stubs = [Stub(name, address, self.rbldnsd.port) for name in self.rbldnsd.zone_names]
        self.unbound = Unbound(directory / "unbound", address, local_zones, stubs,
                               outside=outside, cache_max_ttl=cache_max_ttl,
                               cache_max_negative_ttl=cache_max_negative_ttl, extra=extra)

    @property
    def address(self) -> str:
        return self.unbound.address

    @property
    def port(self) -> int:
        return self.unbound.port

    @property
    def nameserver(self) -> str:
        return self.unbound.nameserver

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o755)
        try:
            self.rbldnsd.start()
            self.unbound.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        try:
            self.unbound.stop()
        finally:
            self.rbldnsd.stop()

    def __enter__(self) -> DnsTestbed:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def resolver(self, lifetime: float = 3.0) -> dns.resolver.Resolver:
        return self.unbound.resolver(lifetime)

    def set_zone(self, zone: Zone) -> None:
        """Change (or add) blocklist data; afterwards unbound answers from the new data."""
        self.rbldnsd.set_zone(zone)
        if zone.name not in {stub.name for stub in self.unbound.stubs}:
            self.unbound.set_stub(Stub(zone.name, self.rbldnsd.address, self.rbldnsd.port))
        else:
            self.unbound.flush(zone.name)

    def set_local_zone(self, zone: LocalZone) -> None:
        self.unbound.set_local_zone(zone)

    def lookup(self, subject: str, zone: str, rdtype: str = "A") -> list[str]:
        """What a DNSBL client sees for ``subject`` (IP or domain) in ``zone``: the answers as
        text, or [] if it is not listed (NXDOMAIN/NODATA)."""
        try:
            answer = self.resolver().resolve(dnsbl_query_name(subject, zone), rdtype)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        return [rdata.to_text() for rdata in answer]

    def pids(self) -> list[int]:
        return [pid for pid in (self.rbldnsd.pid, self.unbound.pid) if pid is not None]
