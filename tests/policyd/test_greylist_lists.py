"""Greylisting without Redis: postgrey's whitelist files (Debian's own load cleanly, every line
form matches as in postgrey 1.37's read_clients_whitelists / read_recipients_whitelists, quirks
included), sender normalisation and the [greylist] section."""

from __future__ import annotations

import io
import ipaddress
from pathlib import Path

import pytest

from postward.core.config import describe, section_from_raw
from postward.core.config_file import parse_ini
from postward.core.logs import configure_logging
from postward.policyd.greylist import normalise_sender
from postward.policyd.greylist_lists import GreylistLists
from postward.policyd.greylist_settings import (
    DEBIAN_CLIENT_FILES,
    DEBIAN_RECIPIENT_FILES,
    GreylistSettings,
)

DEBIAN_CLIENTS = Path(DEBIAN_CLIENT_FILES[0])
DAY = 86400


def clients(text: str) -> GreylistLists:
    lists = GreylistLists()
    lists.add_clients(text, "clients")
    return lists


def recipients(text: str) -> GreylistLists:
    lists = GreylistLists()
    lists.add_recipients(text, "recipients")
    return lists


def client_ok(lists: GreylistLists, address: str, name: str = "unknown") -> bool:
    return lists.client_match(name, ipaddress.ip_address(address)) is not None


# --------------------------------------------------------------------------------------------
# Debian's shipped files


@pytest.mark.skipif(not DEBIAN_CLIENTS.exists(), reason="postgrey's whitelists not installed")
def test_debian_files_load_without_a_problem() -> None:
    lists = GreylistLists.load(DEBIAN_CLIENT_FILES, DEBIAN_RECIPIENT_FILES)
    # The .local files are absent on a stock install: postgrey says nothing, neither do we.
    assert lists.problems == []
    assert len(lists.client_domains) > 50 and len(lists.client_regexes) > 20
    assert len(lists.client_networks) > 20 and len(lists.recipient_patterns) == 2


@pytest.mark.skipif(not DEBIAN_CLIENTS.exists(), reason="postgrey's whitelists not installed")
@pytest.mark.parametrize(("name", "address", "line_text"), [
    ("mail-ot1-f41.google.com", "192.0.2.1", "google.com"),  # a domain covers subdomains
    ("MX.Debian.ORG", "192.0.2.1", "debian.org"),  # case-insensitive
    ("ms-smtp-07.nyroc.rr.com", "192.0.2.1", r"/^ms-smtp.*\.rr\.com$/"),
    ("mail-in-12.arcor-online.net", "192.0.2.1", r"/^mail-in-\d+\.arcor-online\.net$/"),
    ("smtp2-g21.free.fr", "192.0.2.1", r"/^(?:smtp\w*|postfix)[0-9]+-g[0-9]+\.free\.fr$/"),
    ("unknown", "195.235.39.200", "195.235.39"),  # a partial address: the /24
    ("unknown", "51.4.80.31", "51.4.80.0/27"),
    ("unknown", "148.105.255.1", "148.105.0.0/16"),
    ("unknown", "66.216.126.174", "66.216.126.174"),
    ("unknown", "2a01:4180:4050:400::25", "2a01:4180:4050:0400::/64"),
    ("dgfip.finances.gouv.fr", "192.0.2.1", "dgfip.finances.gouv.fr"),  # trailing space in file
])
def test_debian_entries_match(name: str, address: str, line_text: str) -> None:
    lists = GreylistLists.load(DEBIAN_CLIENT_FILES, ())
    entry = lists.client_match(name, ipaddress.ip_address(address))
    assert entry is not None and entry.text == line_text
    assert entry.where.startswith(f"{DEBIAN_CLIENTS}:")


@pytest.mark.skipif(not DEBIAN_CLIENTS.exists(), reason="postgrey's whitelists not installed")
@pytest.mark.parametrize(("name", "address"), [
    ("notgoogle.com", "192.0.2.1"),  # the domain only after a dot
    ("google.com.evil.test", "192.0.2.1"),  # anchored at the end
    ("unknown", "51.4.80.32"),  # just outside 51.4.80.0/27
    ("unknown", "195.235.40.1"),
    ("unknown", "2a01:4180:4050:401::25"),
])
def test_debian_lookalikes_do_not_match(name: str, address: str) -> None:
    lists = GreylistLists.load(DEBIAN_CLIENT_FILES, ())
    assert lists.client_match(name, ipaddress.ip_address(address)) is None


# --------------------------------------------------------------------------------------------
# Client lines


def test_names_are_matched_on_the_verified_name_only() -> None:
    lists = clients("example.com\n/^relay\\d+\\./\n")
    assert lists.client_match("a.b.example.com", ipaddress.ip_address("192.0.2.1"))
    assert lists.client_match("relay7.isp.test", ipaddress.ip_address("192.0.2.1"))
    # postgrey never looks at reverse_client_name or the address text for name entries.
    assert not lists.client_match("unknown", ipaddress.ip_address("192.0.2.1"))
    assert not lists.client_match("xexample.com", ipaddress.ip_address("192.0.2.1"))


def test_inline_comments_space_and_crlf_are_ignored() -> None:
    lists = clients("  example.com   # our partner\r\n\t\r\n# only a comment\n192.0.2.9 #x\n")
    assert lists.problems == []
    assert client_ok(lists, "198.51.100.1", "mx.example.com")
    assert client_ok(lists, "192.0.2.9")


def test_ipv4_forms() -> None:
    lists = clients("192.0.2.1\n198.51.100.77/25\n203.0.113\n10.20\n")
    assert client_ok(lists, "192.0.2.1") and not client_ok(lists, "192.0.2.2")
    assert client_ok(lists, "198.51.100.0") and client_ok(lists, "198.51.100.127")
    assert not client_ok(lists, "198.51.100.128")  # host bits of 198.51.100.77/25 ignored
    assert client_ok(lists, "203.0.113.255") and not client_ok(lists, "203.0.114.1")


def test_two_number_prefix_is_a_24_as_in_postgrey() -> None:
    # postgrey's comment says /16, its code passes 24: "10.20" is 10.20.0.0/24.
    lists = clients("10.20\n")
    assert client_ok(lists, "10.20.0.200")
    assert not client_ok(lists, "10.20.1.1")


def test_leading_zero_octets_are_octal_as_netaddr_ip_reads_them() -> None:
    lists = clients("010.1.1.1\n192.0.2.010\n")
    assert client_ok(lists, "8.1.1.1") and not client_ok(lists, "10.1.1.1")
    assert client_ok(lists, "192.0.2.8")


def test_ipv6_networks_and_netaddr_ip_single_address_space() -> None:
    lists = clients("2001:db8:1::/48\n2001:DB8:9::1\n")
    assert client_ok(lists, "2001:db8:1:ffff::1") and not client_ok(lists, "2001:db8:2::1")
    assert client_ok(lists, "2001:db8:9::1") and not client_ok(lists, "2001:db8:9::2")
    assert not client_ok(lists, "192.0.2.1")
    # NetAddr::IP keeps IPv4 as the low 32 bits of 128: ::/96 holds every IPv4 client.
    assert client_ok(clients("::/96\n"), "192.0.2.1")
    # ...but an IPv4-mapped client (::ffff:a.b.c.d) is an IPv6 address outside a v4 network.
    assert not client_ok(clients("192.0.2.0/24\n"), "::ffff:192.0.2.1")


@pytest.mark.parametrize(("line", "reason"), [
    ("300.1.1.1", "not an IPv4 address or network"),
    ("192.0.2.1/33", "not an IPv4 address or network"),
    ("192.0.2.09", "not an IPv4 address or network"),  # 09 is no octal number
    ("192.0.256", "not an IPv4 address prefix"),
    ("2001:db8::/129", "not an IPv6 address or network"),
    ("fe80::1%eth0", "not an IPv6 address or network"),
    ("not a host", "doesn't look like a hostname"),
    ("/a b/", "doesn't look like a hostname"),
    ("/(unclosed/", "not a valid regular expression"),
])
def test_bad_client_lines_are_skipped_with_file_and_line(line: str, reason: str) -> None:
    lists = clients(f"example.com\n\n{line}\nexample.net\n")
    [problem] = lists.problems
    assert (problem.path, problem.line) == ("clients", 3)
    assert reason in problem.message
    # The lines around it still count.
    assert client_ok(lists, "192.0.2.1", "example.com") and client_ok(lists, "192.0.2.1",
                                                                      "example.net")


def test_skipped_lines_are_logged_with_file_colon_line(tmp_path: Path) -> None:
    f = tmp_path / "whitelist_clients"
    f.write_text("example.com\nbad entry here\n")
    out = io.StringIO()
    configure_logging("policyd", "info", stream=out)
    GreylistLists.load([str(f)], [])
    assert "event=greylist_whitelist_line_skipped" in out.getvalue()
    assert f"where={f}:2 " in out.getvalue()


def test_missing_files_are_reported_except_local_ones(tmp_path: Path) -> None:
    out = io.StringIO()
    configure_logging("policyd", "info", stream=out)
    lists = GreylistLists.load([str(tmp_path / "clients"), str(tmp_path / "clients.local")],
                               [str(tmp_path / "recipients.local")])
    [problem] = lists.problems
    assert problem.path == str(tmp_path / "clients") and "cannot open" in problem.message
    assert out.getvalue().count("event=greylist_whitelist_unreadable") == 1
    # Nothing listed, nothing whitelisted, nothing raised: greylisting goes on (as postgrey).
    assert not client_ok(lists, "192.0.2.1", "mx.example.com")


def scan(lists: GreylistLists, name: str, address: str) -> str | None:
    """client_match as postgrey does it, line after line: the reference for the indexed one."""
    lowered = name.lower()
    for domain, entry in lists.client_domains.items():
        if lowered == domain or lowered.endswith("." + domain):
            return entry.where
    for pattern, entry in lists.client_regexes:
        if pattern.search(name):
            return entry.where
    bits = int(ipaddress.ip_address(address))
    for net in lists.client_networks:
        if net.contains(bits):
            return net.entry.where
    return None


def test_the_first_matching_line_wins_as_in_a_scan_of_the_file() -> None:
    # Overlapping networks of several prefix lengths, in an order where a wider network comes
    # first for some addresses and later for others: the line named must be the scan's.
    text = ("192.0.2.128/25\n192.0.2.0/24\n192.0.2.7\n10.1.2\n10.0.0.0/8\n10.1.2.3\n"
            "::/96\n2001:db8::/32\n2001:db8:1::/48\n/^mx\\d+\\.example\\.net$/\nexample.net\n")
    lists = clients(text)
    assert lists.problems == []
    cases = [(name, address)
             for name in ("unknown", "mx1.example.net", "MX.Example.NET", "mxa.example.net")
             for address in ("192.0.2.7", "192.0.2.200", "192.0.2.1", "198.51.100.1",
                             "10.1.2.3", "10.1.2.4", "10.9.9.9", "11.0.0.1", "2001:db8:1::5",
                             "2001:db8:2::5", "::c000:207", "2001:db9::1")]
    for name, address in cases * 2:  # twice: the second time from what was remembered
        entry = lists.client_match(name, ipaddress.ip_address(address))
        assert (entry.where if entry else None) == scan(lists, name, address), (name, address)
    entry = lists.client_match("unknown", ipaddress.ip_address("192.0.2.200"))
    assert entry is not None and entry.where == "clients:1"  # the /25 before the /24


def test_lines_added_after_a_match_count_at_once() -> None:
    lists = clients("192.0.2.0/24\n")
    assert not client_ok(lists, "198.51.100.9", "mx.example.com")
    lists.add_clients("example.com\n198.51.100.0/24\n", "more")
    assert client_ok(lists, "203.0.113.1", "mx.example.com")
    assert client_ok(lists, "198.51.100.9")


def test_files_are_read_in_order_and_all_count(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("example.com\n")
    (tmp_path / "a.local").write_text("192.0.2.0/24\n")
    (tmp_path / "r").write_text("abuse@\n")
    lists = GreylistLists.load([str(tmp_path / "a"), str(tmp_path / "a.local")],
                               [str(tmp_path / "r")])
    assert client_ok(lists, "198.51.100.1", "mx.example.com") and client_ok(lists, "192.0.2.5")
    assert lists.recipient_match("abuse@example.org") is not None


# --------------------------------------------------------------------------------------------
# Recipient lines


@pytest.mark.parametrize(("line", "listed", "not_listed"), [
    ("postmaster@", ["postmaster@example.com", "Postmaster+tag@x.test"],
     ["xpostmaster@example.com", "postmasters@example.com"]),
    ("bob@example.com", ["bob@example.com", "BOB+lists@Example.COM"],
     ["bob@sub.example.com", "bob@example.com.evil", "alice@example.com"]),
    ("example.com", ["a@example.com", "a@mx.example.com"], ["a@notexample.com"]),
    (r"/^no-?grey(list)?@/", ["nogrey@x.test", "No-Greylist@y.test"], ["grey@x.test"]),
])
def test_recipient_forms(line: str, listed: list[str], not_listed: list[str]) -> None:
    lists = recipients(line + "\n")
    assert lists.problems == []
    for r in listed:
        assert lists.recipient_match(r) is not None, r
    for r in not_listed:
        assert lists.recipient_match(r) is None, r


def test_bad_recipient_lines_are_skipped() -> None:
    lists = recipients("abuse@\nsome one@example.com\n/[/\n")
    assert [(p.line, "look like an address" in p.message or "regular" in p.message)
            for p in lists.problems] == [(2, True), (3, True)]
    assert lists.recipient_match("abuse@example.com") is not None


# --------------------------------------------------------------------------------------------
# Sender normalisation (postgrey's do_sender_substitutions)


@pytest.mark.parametrize(("sender", "normalised"), [
    ("alice@sender.test", "alice@sender.test"),
    ("", ""),  # the null sender
    ("no-domain", "no-domain"),
    ("bob+list-42@lists.test", "bob@lists.test"),  # extension stripped before anything else
    ("bounce-1234-56@lists.test", "bounce-#-#@lists.test"),  # VERP numbers folded
    ("news2024@shop.test", "news2024@shop.test"),  # digits inside a word stay
    ("a.123.b_4@x.test", "a.#.b_4@x.test"),  # '_' is a word character (\b)
    ("prvs=0123456789=bob@batv.test", "bob@batv.test"),  # BATV, standard order
    ("prvs=bob=0123abcdef@batv.test", "bob@batv.test"),  # the order seen in the wild
    ("prvs=newsletters=abcdefghij@batv.test", "abcdefghij@batv.test"),  # both look like tags
    ("prvs=0123456789=@batv.test", "prvs=#=@batv.test"),  # two parts: no BATV, digits folded
    ("PRVS=0123456789=bob@batv.test", "PRVS=#=bob@batv.test"),  # case-sensitive prefix
    ("SRS0=HHH=TT=orig.test=user@fwd.test", "SRS0=HHH=TT=orig.test=user@fwd.test"),  # no SRS
    ("a@b@c", "a@b@c"),
])
def test_sender_normalisation(sender: str, normalised: str) -> None:
    assert normalise_sender(sender) == normalised


# --------------------------------------------------------------------------------------------
# The [greylist] section


def section(text: str) -> tuple[GreylistSettings | None, list[str]]:
    raw = parse_ini("[greylist]\n" + text, "postward.conf")
    built, problems = section_from_raw(GreylistSettings, raw["greylist"], "greylist")
    return built, [str(p) for p in problems]


def test_settings_defaults_are_postgreys() -> None:
    s = GreylistSettings()
    assert (s.delay, s.max_age, s.retry_window, s.auto_whitelist_clients) == (
        300, 35 * DAY, 2 * DAY, 5)
    assert (s.lookup_by_subnet, s.ipv4cidr, s.ipv6cidr) == (True, 24, 64)
    assert s.greylist_action == "DEFER_IF_PERMIT"


def test_config_reference_reads_back_to_the_defaults() -> None:
    reference = describe({"greylist": GreylistSettings})
    assert "delay = 5m\n" in reference and "max_age = 35d\n" in reference
    built, problems = section("\n".join(reference.splitlines()[1:]))
    assert problems == [] and built == GreylistSettings()


def test_settings_values_and_errors() -> None:
    built, problems = section("delay = 2m\nretry_window = 6h\nmax_age = 10d\n"
                              "greylist_text = Try again in %s seconds; see %r\n")
    assert problems == [] and built is not None
    assert (built.delay, built.retry_window, built.max_age) == (120, 6 * 3600, 10 * DAY)
    assert built.greylist_text == "Try again in %s seconds; see %r"
    _, problems = section("delay = 1.5s\nx_greylist_header = no header here\n"
                          "whitelist_clients = relative/file\n")
    assert problems == [
        "postward.conf:2: [greylist] delay: must be a whole number of seconds, got 1.5s",
        "postward.conf:3: [greylist] x_greylist_header: must be a header, 'Name: value', "
        "got 'no header here'",
        "postward.conf:4: [greylist] whitelist_clients: expected an absolute path, "
        "got 'relative/file'",
    ]
    _, problems = section("delay = 1h\nretry_window = 30m\n")
    assert problems == ["postward.conf:3: [greylist] retry_window: must be longer than delay "
                        "(1h), or no mail could ever pass"]
