"""KeyTable and SigningTable: which key signs mail from which sender, as OpenDKIM chooses it.

A KeyTable line is ``NAME DOMAIN:SELECTOR:KEYPATH``. DOMAIN ``%`` stands for the sender's
domain; a ``%`` in KEYPATH is replaced by the signing domain. OpenDKIM also takes the key data
itself in place of KEYPATH (PEM or base64 DER, when it does not start with "/", "./" or "../");
postward refuses that, and relative paths: keys are loaded only from files named by absolute
path, so that the key module can check their owner and mode before using them.

A SigningTable line is ``KEY KEYNAME[:SIGNER]`` (OpenDKIM splits values at ':'). KEYNAME ``%``
stands for the sender's domain; each ``%`` in SIGNER (the i= identity) for the same. How KEY is
matched against the From: address follows dkimf_apply_signtable() in opendkim.c:

- refile: each line's pattern against ``user@domain``, in file order;
- any other type: the keys ``user@host``, ``host``, then for each parent domain (nearest first)
  ``user@.parent`` and ``.parent``, then ``user@*`` and finally ``*``.

Only the first match is used unless MultipleSignatures is set. In a non-refile table '*' is not
a wildcard: ``*@example.com`` there is looked up literally and never matches, so postward
refuses it with a pointer to refile:.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from postward.core.config_file import Problem
from postward.dkim.datasets import DataSet, DataSetKind, Entry, Matcher, fold

Algorithm = Literal["rsa", "ed25519"]

_NAME = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9_-]{1,63}(\.[A-Za-z0-9_-]{1,63})*\Z", re.ASCII)
KEYTABLE_FORM = ("NAME DOMAIN:SELECTOR:KEYPATH "
                 "(e.g. 'example.com example.com:mail:/etc/opendkim/mail')")
SINGLE_KEY = "KeyFile"  # the key name of the in-memory table built from KeyFile/Selector/Domain


def is_domain_name(text: str) -> bool:
    """A DNS name of letters, digits, '-' and '_' (A-labels for IDNs), as d= and s= need."""
    return _NAME.match(text) is not None


@dataclass(frozen=True)
class KeyEntry:
    """One KeyTable line. ``domain`` may be "%", ``key_path`` may hold "%" (see module doc)."""

    name: str
    domain: str
    selector: str
    key_path: str
    source: str

    @property
    def path_is_template(self) -> bool:
        """True when the key file depends on the signing domain (a "%" in the path), so it
        can only be opened per message; KeyChoice.key_path is then the resolved path."""
        return "%" in self.key_path


def parse_key_entry(entry: Entry) -> KeyEntry:
    """The KeyTable line ``entry``; ValueError says what is wrong with it."""
    if entry.value is None:
        raise ValueError(f"{entry.key!r} has no value; a line is {KEYTABLE_FORM}")
    parts = entry.value.split(":", 2)
    if len(parts) < 3 or not all(parts):
        raise ValueError(f"{entry.key!r}: expected DOMAIN:SELECTOR:KEYPATH after the key name, "
                         f"got {entry.value!r}; a line is {KEYTABLE_FORM}")
    domain, selector, key = parts
    if domain != "%" and not is_domain_name(domain):
        raise ValueError(f"{entry.key!r}: {domain!r} is not a domain name (nor '%', the "
                         f"sender's domain)")
    if not is_domain_name(selector):
        raise ValueError(f"{entry.key!r}: {selector!r} is not a selector (letters, digits, "
                         f"'-', '_' and dots)")
    if key.startswith(("./", "../")):
        raise ValueError(f"{entry.key!r}: key path {key!r} is relative, which OpenDKIM opens "
                         f"relative to the directory it was started in; give the absolute path")
    if not key.startswith("/"):
        raise ValueError(f"{entry.key!r}: the third field holds key data, not a path; OpenDKIM "
                         f"accepts a key inline, postward loads keys only from files (so their "
                         f"owner and mode can be checked): put the key in a file and give its "
                         f"absolute path")
    return KeyEntry(entry.key, fold(domain) if domain != "%" else "%", selector, key,
                    entry.source)


@dataclass(frozen=True)
class KeyTable:
    """Key names to keys. In a refile table the names are wildcard patterns."""

    option: str
    kind: DataSetKind
    entries: tuple[KeyEntry, ...]
    _matcher: Matcher[KeyEntry] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_matcher",
                           Matcher(self.kind, [(e.name, e) for e in self.entries]))

    def get(self, name: str) -> KeyEntry | None:
        """The first entry named ``name`` (refile: whose pattern matches it)."""
        return self._matcher.first(name)


def duplicate_problems(ds: DataSet, what: str) -> list[Problem]:
    """A key given twice: OpenDKIM silently uses the first line; postward asks to keep one."""
    first: dict[str, Entry] = {}
    problems = []
    for e in ds.entries:
        seen = first.setdefault(fold(e.key), e)
        if seen is not e:
            problems.append(Problem(e.path, e.line, f"{ds.option}: {what} {e.key!r} is given "
                                    f"twice (first at {seen.source}); OpenDKIM uses only the "
                                    f"first: keep one"))
    return problems


def key_table_from(ds: DataSet, problems: list[Problem]) -> KeyTable:
    """The KeyTable in data set ``ds``; bad lines are reported and left out."""
    problems.extend(duplicate_problems(ds, "key name"))
    entries = []
    for e in ds.entries:
        try:
            entries.append(parse_key_entry(e))
        except ValueError as err:
            problems.append(Problem(e.path, e.line, f"{ds.option}: {err}"))
    return KeyTable(ds.option, ds.kind, tuple(entries))


@dataclass(frozen=True)
class SigningRule:
    """One SigningTable line: for senders matching ``key``, sign with ``key_name``."""

    key: str
    key_name: str
    signer: str | None
    source: str


@dataclass(frozen=True)
class SigningMatch:
    """A rule applied to one sender: ``%`` already replaced by the sender's domain."""

    key_name: str
    signer: str | None
    source: str


def parse_signing_rule(entry: Entry, kind: DataSetKind) -> SigningRule:
    """The SigningTable line ``entry``; ValueError says what is wrong with it."""
    if entry.value is None:
        raise ValueError(f"{entry.key!r} has no key name; a line is 'SENDER KEYNAME' (e.g. "
                         f"'*@example.com example.com' in a refile: table)")
    if any(c in entry.value for c in " \t"):
        raise ValueError(f"the value {entry.value!r} holds white space, so OpenDKIM would look "
                         f"for a key of that whole name; write KEYNAME, or KEYNAME:SIGNER to "
                         f"set the i= identity")
    name, _, signer = entry.value.partition(":")
    if not name:
        raise ValueError(f"{entry.key!r}: the key name before ':' is empty")
    if kind != "refile" and "*" in entry.key and entry.key != "*" and not entry.key.endswith("@*"):
        raise ValueError(f"{entry.key!r} uses '*', which is a wildcard only in a refile: table; "
                         f"OpenDKIM looks it up literally here and it never matches: name the "
                         f"table refile:/path, or write the domain alone to match all its users")
    return SigningRule(entry.key, name, signer or None, entry.source)


def candidate_keys(user: str, domain: str) -> Iterator[str]:
    """The keys a non-refile SigningTable is searched with, in OpenDKIM's order."""
    yield f"{user}@{domain}"
    yield domain
    dot = domain.find(".")
    while dot >= 0:
        parent = domain[dot:]
        yield f"{user}@{parent}"
        yield parent
        dot = domain.find(".", dot + 1)
    yield f"{user}@*"
    yield "*"


@dataclass(frozen=True)
class SigningTable:
    """Senders to key names. ``multiple``: MultipleSignatures (every match, not the first)."""

    option: str
    kind: DataSetKind
    rules: tuple[SigningRule, ...]
    multiple: bool = False
    _matcher: Matcher[SigningRule] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_matcher",
                           Matcher(self.kind, [(r.key, r) for r in self.rules]))

    def matches(self, address: str) -> list[SigningMatch]:
        """The rules for sender ``address`` (a bare user@domain), in the order OpenDKIM applies."""
        user, _, domain = address.rpartition("@")
        if not user or not domain:
            return []
        domain = fold(domain)
        if self.kind == "refile":
            rules = self._matcher.all(f"{user}@{domain}")
        else:
            rules = [r for key in candidate_keys(user, domain)
                     if (r := self._matcher.first(key)) is not None]
        found: list[SigningMatch] = []
        for r in rules:
            name = domain if r.key_name == "%" else r.key_name
            signer = r.signer.replace("%", domain) if r.signer else None
            match = SigningMatch(name, signer, r.source)
            if match not in found:
                found.append(match)
            if not self.multiple:
                break
        return found

    def lookup(self, address: str) -> list[str]:
        """The key names for sender ``address``: the first only, unless MultipleSignatures."""
        return [m.key_name for m in self.matches(address)]


def signing_table_from(ds: DataSet, problems: list[Problem]) -> SigningTable:
    """The SigningTable in data set ``ds``; bad lines are reported and left out."""
    if ds.kind != "refile":
        problems.extend(duplicate_problems(ds, "sender"))
    rules = []
    for e in ds.entries:
        try:
            rules.append(parse_signing_rule(e, ds.kind))
        except ValueError as err:
            problems.append(Problem(e.path, e.line, f"{ds.option}: {err}"))
    return SigningTable(ds.option, ds.kind, tuple(rules))


def unknown_key_problems(signing: SigningTable, keys: DataSet,
                         keys_where: str) -> list[Problem]:
    """SigningTable lines naming a key the KeyTable lacks (OpenDKIM checks this at start too).

    ``keys`` is the KeyTable's data set: a name on a line with other problems is not missing."""
    problems = []
    for rule in signing.rules:
        if rule.key_name != "%" and keys.find(rule.key_name) is None:
            path, _, line = rule.source.rpartition(":")
            problems.append(Problem(path, int(line), f"{signing.option}: key name "
                                    f"{rule.key_name!r} is not in the KeyTable ({keys_where}); "
                                    f"add it there or correct the name"))
    return problems


def single_key_tables(domains: DataSet, selector: str, key_file: str, subdomains: bool,
                      source: str) -> tuple[KeyTable, SigningTable]:
    """KeyFile + Selector + Domain as an equivalent KeyTable and SigningTable.

    OpenDKIM signs mail from a listed domain with d= that domain; with SubDomains, mail from a
    subdomain with d= (and i=@) the listed parent. The parent rows use the non-refile lookup of
    ``.parent`` keys, which tries the nearest parent first, as OpenDKIM's Domain check does.
    A listed "*" (all domains) keeps d= the sender's own domain.
    """
    keys = [KeyEntry(SINGLE_KEY, "%", selector, key_file, source)]
    rules = []
    for e in domains.entries:
        if domains.kind == "refile":
            rules.append(SigningRule(f"*@{e.key}", SINGLE_KEY, None, e.source))
            continue
        name = fold(e.key)
        rules.append(SigningRule(name, SINGLE_KEY, None, e.source))
        if subdomains and name != "*":
            keys.append(KeyEntry(f"{SINGLE_KEY} {name}", name, selector, key_file, source))
            rules.append(SigningRule(f".{name}", f"{SINGLE_KEY} {name}", f"@{name}", e.source))
    kind: DataSetKind = "refile" if domains.kind == "refile" else "file"
    return (KeyTable("KeyFile", "file", tuple(keys)),
            SigningTable("Domain", kind, tuple(rules)))


@dataclass(frozen=True)
class KeyChoice:
    """A key to sign one message with, resolved for its sender."""

    domain: str
    selector: str
    key_path: Path
    algorithm: Algorithm
    source: str  # the KeyTable (or KeyFile) line that gave the key
    signer: str | None = None  # the i= identity the SigningTable asks for, if any
    selected_by: str = ""  # the SigningTable (or Domain) line that chose the key


class MissingKey(LookupError):
    """The SigningTable chose a key name the KeyTable lacks (only possible through '%').

    OpenDKIM temp-fails such a message ("signing table references unknown key").
    """


def resolve(entry: KeyEntry, match: SigningMatch, sender_domain: str,
            algorithm: Algorithm) -> KeyChoice:
    domain = sender_domain if entry.domain == "%" else entry.domain
    return KeyChoice(domain, entry.selector, Path(entry.key_path.replace("%", domain)),
                     algorithm, entry.source, match.signer, match.source)


def choose_keys(address: str, signing: SigningTable, keys: KeyTable,
                keys_ed25519: KeyTable | None, algorithm: Algorithm) -> list[KeyChoice]:
    """Every key to sign mail from ``address`` with: the SigningTable's choices, each followed
    by its Ed25519 twin when KeyTableEd25519 has the same name. Raises MissingKey."""
    sender_domain = fold(address.rpartition("@")[2])
    choices: list[KeyChoice] = []
    for match in signing.matches(address):
        entry = keys.get(match.key_name)
        if entry is None:
            raise MissingKey(f"{match.source}: {signing.option} chose key {match.key_name!r} "
                             f"for {address}, which is not in the {keys.option}")
        choices.append(resolve(entry, match, sender_domain, algorithm))
        twin = keys_ed25519.get(match.key_name) if keys_ed25519 is not None else None
        if twin is not None:
            choices.append(resolve(twin, match, sender_domain, "ed25519"))
    return choices
