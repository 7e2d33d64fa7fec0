"""Peer lists (InternalHosts, ExternalIgnoreList, PeerList): which SMTP clients an entry covers.

An entry (opendkim.conf(5), PeerList) is a hostname (``mail.example.com``), a domain
(``.example.com``: every host under example.com, not example.com itself), an IPv4 or IPv6
address or a CIDR network (``192.0.2.0/24``, ``2001:db8::/32``), optionally in square brackets,
and may start with ``!`` to exclude what it names.

Matching follows dkimf_checkhost() and dkimf_checkip() in OpenDKIM's util.c, from the most
precise key to the least: the hostname, then ``.parent`` for each parent domain; separately the
address, then its networks from /32 (/128) down to /0. At each key a ``!`` entry is tried before
the plain one, and the first that exists decides. So ``192.0.2.1`` wins over ``!192.0.2.0/24``,
and ``!192.0.2.1`` over ``192.0.2.0/24``. The client is in the list if the hostname check or
the address check says so: OpenDKIM ORs the two, so ``!bad.example.com`` does not exclude an
address that a network entry includes.

In a refile: list each line is a wildcard pattern tried against those same keys (the guide's
TrustedHosts ``127.0.0.1`` matches the client 127.0.0.1). Where postward differs from OpenDKIM:

- A pattern without ``!`` is not tried against the ``!`` keys. OpenDKIM tries it, so its ``*``
  would match ``!host`` first and exclude every client.
- Addresses and networks are compared in canonical form (``2001:DB8:0::1`` is ``2001:db8::1``);
  OpenDKIM compares text, so a non-canonical entry silently never matches there.
- An entry OpenDKIM can never match is refused: a network with host bits set
  (``192.0.2.1/24``), a short IPv4 form (``192.0.2/24``), a '*' outside refile:.
- An IPv4-mapped IPv6 client (``::ffff:192.0.2.1``) is also checked as 192.0.2.1.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from postward.core.config_file import Problem
from postward.dkim.datasets import DataSet, DataSetKind, Entry, Matcher, fold

_HOST = re.compile(r"\.?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?\Z", re.ASCII)
_DOTTED_NUMBERS = re.compile(r"[0-9.]+\Z")
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_DECISIONS_KEPT = 4096   # per peer list: ~1 MB at most


def _unbracket(text: str) -> str:
    return text[1:-1] if text.startswith("[") and text.endswith("]") else text


def _network(text: str) -> str:
    """``addr/bits`` in canonical form; ValueError if OpenDKIM could never match it."""
    addr, _, bits = text.partition("/")
    addr = _unbracket(addr)
    try:
        if not bits.isascii() or not bits.isdigit():  # OpenDKIM never matches a netmask form
            raise ValueError(bits)
        net = ipaddress.ip_network(f"{addr}/{bits}", strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not a network; write a full address and a prefix "
                         f"length, e.g. 192.0.2.0/24 or 2001:db8::/32 (OpenDKIM never matches "
                         f"a short form such as 192.0.2/24)") from None
    if net.network_address != ipaddress.ip_address(addr):
        raise ValueError(f"{text!r} has bits set after the /{net.prefixlen} prefix, so OpenDKIM "
                         f"never matches it; write {str(net)!r}")
    return str(net)


def canonical_entry(key: str) -> str:
    """An entry as the keys it is compared with are written; ValueError if it cannot match."""
    negated = key.startswith("!")
    body = key[1:] if negated else key
    prefix = "!" if negated else ""
    if "/" in body:
        return prefix + _network(body)
    bare = _unbracket(body)
    try:
        return prefix + str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    if _DOTTED_NUMBERS.match(bare) or ":" in bare or bare != body:
        raise ValueError(f"{key!r} is not an IP address (OpenDKIM never matches a short IPv4 "
                         f"form such as 192.0.2); write the full address, or a network such "
                         f"as 192.0.2.0/24")
    if "*" in bare:
        raise ValueError(f"{key!r}: '*' is a wildcard only in a refile: list; OpenDKIM looks it "
                         f"up literally here and it never matches: name the list "
                         f"refile:/path, or write a domain as .example.com")
    if not _HOST.match(bare):
        raise ValueError(f"{key!r} is neither a hostname, a .domain, an IP address nor a "
                         f"network; write e.g. mail.example.com, .example.com, 192.0.2.1 or "
                         f"192.0.2.0/24")
    return prefix + fold(bare.rstrip("."))


def host_keys(hostname: str) -> Iterator[str]:
    """``mail.example.com``, ``.example.com``, ``.com``: the host, then each parent domain."""
    host = fold(hostname.rstrip("."))
    yield host
    dot = host.find(".")
    while dot >= 0:
        yield host[dot:]
        dot = host.find(".", dot + 1)


def address_keys(address: Address, prefixes: Sequence[int] | None = None) -> Iterator[str]:
    """The address, then its networks from the longest prefix to /0 (only the prefix lengths
    ``prefixes``, longest first, when given)."""
    yield str(address)
    for bits in range(address.max_prefixlen, -1, -1) if prefixes is None else prefixes:
        yield str(ipaddress.ip_network((address, bits), strict=False))


def _prefix_lengths(keys: Iterable[str]) -> dict[int, tuple[int, ...]]:
    """IP version -> the prefix lengths of the networks among ``keys``, longest first."""
    found: dict[int, set[int]] = {4: set(), 6: set()}
    for key in keys:
        addr, slash, bits = key.partition("/")
        if slash and bits.isdigit():
            found[6 if ":" in addr else 4].add(int(bits))
    return {version: tuple(sorted(lengths, reverse=True)) for version, lengths in found.items()}


@dataclass(frozen=True)
class PeerList:
    """A loaded peer list; ``entries`` in canonical form (see the module doc)."""

    option: str
    spec: str
    kind: DataSetKind
    entries: tuple[Entry, ...]
    _positive: Matcher[Entry] = field(init=False, repr=False, compare=False, hash=False)
    _negative: Matcher[Entry] = field(init=False, repr=False, compare=False, hash=False)
    # IP version -> the network prefix lengths worth trying; None: all (a wildcard pattern
    # may match any network). Building all 33 (129) network keys of a client that matches
    # nothing cost ~270 µs per message, half of verifying a small one.
    _prefixes: dict[int, tuple[int, ...]] | None = field(init=False, repr=False,
                                                         compare=False, hash=False)
    # (ip, hostname) -> decision: the same clients (big senders, the local relay) come back
    # all day, and a list lives as long as its config (a reload builds a new one).
    _decisions: dict[tuple[str | None, str | None], tuple[bool, Entry | None]] = field(
        init=False, repr=False, compare=False, hash=False, default_factory=dict)

    def __post_init__(self) -> None:
        plain = [(e.key, e) for e in self.entries if not e.key.startswith("!")]
        negated = [(e.key[1:], e) for e in self.entries if e.key.startswith("!")]
        positive, negative = Matcher(self.kind, plain), Matcher(self.kind, negated)
        object.__setattr__(self, "_positive", positive)
        object.__setattr__(self, "_negative", negative)
        prefixes = None
        if not (positive.has_patterns or negative.has_patterns):
            prefixes = _prefix_lengths([*positive.exact_keys(), *negative.exact_keys()])
        object.__setattr__(self, "_prefixes", prefixes)

    def _decide(self, keys: Iterator[str]) -> tuple[bool, Entry | None]:
        for key in keys:
            if (hit := self._negative.first(key)) is not None:
                return False, hit
            if (hit := self._positive.first(key)) is not None:
                return True, hit
        return False, None

    def decision(self, ip: str | None, hostname: str | None) -> tuple[bool, Entry | None]:
        """Whether the client is in the list, and the entry that decided (for LogWhy)."""
        known = self._decisions.get((ip, hostname))
        if known is not None:
            return known
        if len(self._decisions) >= _DECISIONS_KEPT:
            self._decisions.clear()   # bounded; refilled by the clients that keep coming
        # Threads may race to fill the same key: each computes the same answer.
        found = self._decisions[(ip, hostname)] = self._decision(ip, hostname)
        return found

    def _decision(self, ip: str | None, hostname: str | None) -> tuple[bool, Entry | None]:
        decided: Entry | None = None
        if hostname:
            found, decided = self._decide(host_keys(hostname))
            if found:
                return True, decided
        for address in client_addresses(ip):
            prefixes = None if self._prefixes is None else self._prefixes[address.version]
            found, entry = self._decide(address_keys(address, prefixes))
            if found:
                return True, entry
            decided = entry or decided
        return False, decided

    def matches(self, ip: str | None, hostname: str | None) -> bool:
        """Whether the SMTP client ``ip`` / ``hostname`` (either may be None) is in the list."""
        return self.decision(ip, hostname)[0]


def client_addresses(ip: str | None) -> list[Address]:
    """The client's address, and the IPv4 one inside an IPv4-mapped IPv6 address; [] if none."""
    if not ip:
        return []
    try:
        address = ipaddress.ip_address(_unbracket(ip).split("%", 1)[0])
    except ValueError:
        return []
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return [address, address.ipv4_mapped]
    return [address]


def peer_list_from(ds: DataSet, problems: list[Problem]) -> PeerList:
    """The peer list in data set ``ds``: entries made canonical, impossible ones reported."""
    entries = []
    for e in ds.entries:
        key = e.key
        if ds.kind != "refile" or "*" not in key:
            try:
                key = canonical_entry(key)
            except ValueError as err:
                problems.append(Problem(e.path, e.line, f"{ds.option}: {err}"))
                continue
        entries.append(Entry(key, e.value, e.path, e.line))
    return PeerList(ds.option, ds.spec, ds.kind, tuple(entries))
