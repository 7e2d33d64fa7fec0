"""postgrey's whitelist files: read as postgrey 1.37 reads them, matched as it matches them.

The line grammar follows ``read_clients_whitelists`` / ``read_recipients_whitelists`` in
/usr/sbin/postgrey (see docs/greylisting.md), quirks included, because admins migrate those files
unchanged: ``1.2`` covers 1.2.0.0/24 (not /16), an octet with a leading zero is octal (``010`` is
8), an IPv4 client falls within an IPv6 network whose 128 bits contain it (``::/96``), exactly
as NetAddr::IP compares them. A line postgrey would skip is skipped, and always logged with its
``file:line`` (postgrey is silent about some, such as ``300.1.1.1``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from postward.core.config_file import Problem
from postward.core.logs import get_log
from postward.policyd.perl import regex as perl_regex

log = get_log("policyd.greylist")

_PERL_SPACE = " \t\n\r\f\v"  # what Perl's \s strips; str.strip() would strip Unicode spaces too
_REGEX_LINE = re.compile(r"/(\S+)/")
_V4 = re.compile(r"(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?:/(\d{1,2}))?", re.ASCII)
_V4_PARTIAL = re.compile(r"\d{1,3}(?:\.\d{1,3}){1,2}", re.ASCII)
_V6 = re.compile(r".*:.*:.*")  # postgrey's test: two colons anywhere; the address parser decides
_V6_NET = re.compile(r"([^/]+)(?:/(\d{1,3}))?", re.ASCII)
_NAME_MEMORY = 10_000  # client names whose whitelist verdict client_match keeps
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def ascii_lower(text: str) -> str:
    """Perl's lc and /i on the byte strings postgrey handles fold ASCII letters only."""
    return text.translate(_ASCII_LOWER)


@dataclass(frozen=True)
class Entry:
    """One whitelist line, kept to say which line let a mail through."""

    where: str  # "file:line"
    text: str


@dataclass(frozen=True)
class _Net:
    """A network in NetAddr::IP's single 128-bit space, where IPv4 a.b.c.d is ::a.b.c.d."""

    value: int
    prefix: int
    entry: Entry

    def contains(self, address: int) -> bool:
        shift = 128 - self.prefix
        return address >> shift == self.value >> shift


def address_bits(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    """An address as NetAddr::IP compares it: IPv4 is the low 32 of 128 bits, not ::ffff:0:0/96."""
    return int(address)


def _octet(text: str) -> int | None:
    """inet_aton's reading, which NetAddr::IP uses: a leading zero means octal."""
    try:
        value = int(text, 8) if len(text) > 1 and text[0] == "0" else int(text)
    except ValueError:  # "08", "09": not octal, and NetAddr::IP refuses the address
        return None
    return value if value <= 255 else None


def _v4_net(octets: list[str], prefix: int) -> tuple[int, int] | None:
    values = [_octet(o) for o in octets]
    if any(x is None for x in values) or prefix > 32:
        return None
    values += [0] * (4 - len(values))  # "a.b.c" is a.b.c.0, "a.b" a.b.0.0 (with postgrey's /24)
    bits = sum(x << (8 * (3 - i)) for i, x in enumerate(values))  # type: ignore[operator]
    return bits, prefix + 96


def _v6_net(text: str) -> tuple[int, int] | None:
    m = _V6_NET.fullmatch(text)
    if m is None:
        return None
    prefix = int(m.group(2)) if m.group(2) else 128
    try:
        addr = ipaddress.IPv6Address(m.group(1))
    except ValueError:
        return None
    if addr.scope_id is not None or prefix > 128:  # NetAddr::IP knows no "%eth0" zones
        return None
    return int(addr), prefix


@dataclass
class GreylistLists:
    """The client and recipient whitelists; empty ones whitelist nothing."""

    # Hostname lines, matched as postgrey's (?:^|\.)NAME$: the name itself or a parent domain.
    client_domains: dict[str, Entry] = field(default_factory=dict)
    client_regexes: list[tuple[re.Pattern[str], Entry]] = field(default_factory=list)
    client_networks: list[_Net] = field(default_factory=list)
    recipient_patterns: list[tuple[re.Pattern[str], Entry]] = field(default_factory=list)
    # Every line skipped and every unreadable file, as file:line: reason (also logged).
    problems: list[Problem] = field(default_factory=list)
    # What client_match looks at per request, derived from the lists above and rebuilt when
    # they grow: the verdict on each client name seen (the name part is a pure function of
    # the name; MTAs come back), and the networks by prefix length.
    _names: dict[str, Entry | None] = field(default_factory=dict, init=False, repr=False,
                                            compare=False)
    _nets: list[tuple[int, dict[int, tuple[int, Entry]]]] = field(
        default_factory=list, init=False, repr=False, compare=False)
    _sizes: tuple[int, int, int] = field(default=(0, 0, 0), init=False, repr=False,
                                         compare=False)

    @classmethod
    def load(cls, client_files: Iterable[str], recipient_files: Iterable[str]) -> GreylistLists:
        """Read the files as postgrey does at start and on SIGHUP: an unreadable file is logged
        (unless its name ends in .local, which postgrey expects to be optional) and skipped."""
        lists = cls()
        for path in client_files:
            if (text := lists._read(path)) is not None:
                lists.add_clients(text, path)
        for path in recipient_files:
            if (text := lists._read(path)) is not None:
                lists.add_recipients(text, path)
        return lists

    def _read(self, path: str) -> str | None:
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                return f.read()
        except OSError as e:
            if not path.endswith(".local"):
                self.problems.append(Problem(path, 0, f"cannot open: {e.strerror}"))
                log.warning("greylist_whitelist_unreadable", file=path, error=e.strerror)
            return None

    def _skip(self, path: str, lineno: int, line: str, reason: str) -> None:
        self.problems.append(Problem(path, lineno, f"{reason}: {line!r}; line skipped"))
        log.warning("greylist_whitelist_line_skipped", where=f"{path}:{lineno}", reason=reason,
                    line=line)

    def add_clients(self, text: str, path: str) -> None:
        for lineno, line in _lines(text):
            entry = Entry(f"{path}:{lineno}", line)
            if m := _REGEX_LINE.fullmatch(line):
                pattern = perl_regex(m.group(1))
                if pattern is None:  # postgrey would die at start; one bad line is enough here
                    self._skip(path, lineno, line, "not a valid regular expression")
                else:
                    self.client_regexes.append((pattern, entry))
            elif m := _V4.fullmatch(line):
                net = _v4_net(list(m.groups()[:4]), int(m.group(5) or 32))
                self._add_net(net, entry, path, lineno, "not an IPv4 address or network")
            elif _V4_PARTIAL.fullmatch(line):
                # postgrey's "leave off one number": both "a.b.c" and "a.b" get a /24 (sic).
                net = _v4_net(line.split("."), 24)
                self._add_net(net, entry, path, lineno, "not an IPv4 address prefix")
            elif _V6.fullmatch(line):
                self._add_net(_v6_net(line), entry, path, lineno,
                              "not an IPv6 address or network")
            elif not any(c in _PERL_SPACE for c in line):
                self.client_domains.setdefault(ascii_lower(line), entry)
            else:
                self._skip(path, lineno, line, "doesn't look like a hostname")

    def _add_net(self, net: tuple[int, int] | None, entry: Entry, path: str, lineno: int,
                 reason: str) -> None:
        if net is None:  # NetAddr::IP returned undef: postgrey drops the line without a word
            self._skip(path, lineno, entry.text, reason)
        else:
            self.client_networks.append(_Net(net[0], net[1], entry))

    def add_recipients(self, text: str, path: str) -> None:
        for lineno, line in _lines(text):
            entry = Entry(f"{path}:{lineno}", line)
            user, at, domain = line.partition("@")
            if m := _REGEX_LINE.fullmatch(line):
                pattern = perl_regex(m.group(1))
                if pattern is None:
                    self._skip(path, lineno, line, "not a valid regular expression")
                    continue
            elif any(c in _PERL_SPACE for c in line):
                self._skip(path, lineno, line, "doesn't look like an address")
                continue
            elif domain:  # user@domain, also user+extension@domain
                pattern = _ci(rf"^{re.escape(user)}(?:\+[^@]+)?@{re.escape(domain)}$")
            elif at:  # user@, any domain
                pattern = _ci(rf"^{re.escape(user)}(?:\+[^@]+)?@")
            else:  # a domain and its subdomains
                pattern = _ci(rf"(?:@|\.){re.escape(user)}$")
            self.recipient_patterns.append((pattern, entry))

    def client_match(self, client_name: str,
                     client_address: ipaddress.IPv4Address | ipaddress.IPv6Address
                     ) -> Entry | None:
        """The line whitelisting this client (by its verified name, then its address)."""
        sizes = (len(self.client_domains), len(self.client_regexes), len(self.client_networks))
        if sizes != self._sizes:
            self._reindex(sizes)
        try:
            by_name = self._names[client_name]
        except KeyError:
            by_name = self._name_match(client_name)
            if len(self._names) >= _NAME_MEMORY:
                self._names.clear()  # bounded; refilled by the names that keep coming
            self._names[client_name] = by_name
        if by_name is not None:
            return by_name
        # The first line in file order whose network holds the address: at most one
        # candidate per prefix length, found by a dict look-up instead of a scan.
        bits = address_bits(client_address)
        found: tuple[int, Entry] | None = None
        for shift, nets in self._nets:
            hit = nets.get(bits >> shift)
            if hit is not None and (found is None or hit[0] < found[0]):
                found = hit
        return None if found is None else found[1]

    def _name_match(self, client_name: str) -> Entry | None:
        name = ascii_lower(client_name)
        if self.client_domains:
            # The name and every parent of it after a dot, as (?:^|\.)ENTRY$ would find them.
            for candidate in [name, *(name[i + 1:] for i, c in enumerate(name) if c == ".")]:
                if (entry := self.client_domains.get(candidate)) is not None:
                    return entry
        for pattern, entry in self.client_regexes:
            if pattern.search(client_name):
                return entry
        return None

    def _reindex(self, sizes: tuple[int, int, int]) -> None:
        self._names = {}
        by_shift: dict[int, dict[int, tuple[int, Entry]]] = {}
        for index, net in enumerate(self.client_networks):
            shift = 128 - net.prefix
            # setdefault: an earlier line for the same network wins, as in the scan
            by_shift.setdefault(shift, {}).setdefault(net.value >> shift, (index, net.entry))
        self._nets = sorted(by_shift.items())
        self._sizes = sizes

    def recipient_match(self, recipient: str) -> Entry | None:
        for pattern, entry in self.recipient_patterns:
            if pattern.search(recipient):
                return entry
        return None


def _ci(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE | re.ASCII)


def _lines(text: str) -> Iterable[tuple[int, str]]:
    """Numbered lines without comments and surrounding space, as postgrey's
    ``s/#.*$//; s/^\\s+//; s/\\s+$//; next if $_ eq ''`` leaves them."""
    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = raw.split("#", 1)[0].strip(_PERL_SPACE)
        if line:
            yield lineno, line
