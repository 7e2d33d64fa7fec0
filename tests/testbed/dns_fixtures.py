"""pytest fixtures for the DNS test bed: unbound in front of rbldnsd, with a default data set.

Fixtures
--------
``dns_testbed``          a started :class:`DnsTestbed` with the default data, for one test.
``dns_testbed_factory``  ``make(zones=DEFAULT_ZONES, local_zones=DEFAULT_LOCAL_ZONES, **options)``
                         builds and starts custom ones (options: ``outside``, ``cache_max_ttl``,
                         ``cache_max_negative_ttl``, ``extra``); all are stopped after the test.
``module_dns_testbed``   one default test bed shared by a module's tests: do not change its data.

Every test bed binds the session's private loopback address on ports of its own, so parallel
pytest runs never meet. Point clients at ``bed.nameserver`` ("ADDR:PORT") or ``bed.resolver()``.

Default data set (the constants below name the addresses; rely on them, not on literals)
-------------------------------------------------------------------------------------------
Blocklists (rbldnsd, reached through unbound's stub-zones; query ``<reversed ip>.<zone>``,
see ``dnsbl_query_name``). "<ip>" in a TXT is the queried address, "<entry>" the dnset entry:

* dnsbl-a.test, ip4set, TTL 600 s: 192.0.2.66 (CLIENT_ON_THREE), 198.51.100.23 (CLIENT_ON_ONE)
  -> A 127.0.0.2, TXT "Listed by dnsbl-a: <ip>, see https://dnsbl-a.test/q?ip=<ip>".
* dnsbl-a.test, ip6trie (same zone), TTL 600 s: 2001:db8:bad::/48 (CLIENT6_LISTED =
  2001:db8:bad::25) -> A 127.0.0.2, TXT "IPv6 <ip> listed by dnsbl-a".
* dnsbl-b.test, ip4set, 300 s: 192.0.2.66 -> A 127.0.0.4, TXT "Open proxy <ip>";
  198.51.100.128/25 (CLIENT_IN_RANGE = 198.51.100.200) -> A 127.0.0.3, TXT "Range listing <ip>".
* dnsbl-c.test, ip4set, 300 s: 192.0.2.66 -> A 127.0.0.2 and no TXT record at all.
* allow.test (allowlist), ip4set, 300 s: 203.0.113.5 (CLIENT_ALLOWED) -> A 127.0.0.10,
  TXT "Allowlisted: <ip>".
* rhsbl.test, dnset, 300 s: spammer.example (exactly; not its subdomains) -> A 127.0.0.2,
  TXT "Domain <entry> is listed"; bulkmail.example and all its subdomains -> A 127.0.0.3,
  TXT "Bulk mailer <entry>"; subdomains of phish.example (not itself) -> A 127.0.0.4,
  TXT "Phishing <entry>". RHSBL_LISTED / RHSBL_UNLISTED give examples.

So CLIENT_ON_THREE (192.0.2.66) is on dnsbl-a, -b and -c; CLIENT_ON_ONE (198.51.100.23) on
dnsbl-a only; CLIENT_CLEAN (203.0.113.10) on none; CLIENT_IN_RANGE (198.51.100.200) on dnsbl-b
only; CLIENT_ALLOWED (203.0.113.5) only on allow.test; CLIENT6_CLEAN (2001:db8:600d::25) nowhere.
Unlisted names get NXDOMAIN with the zone's SOA (negative TTL 60 s).

Host data (unbound local-data; every zone has a SOA with negative TTL 60 s):

* example.test: A 192.0.2.80 (300 s), NS ns.example.test (3600 s), MX 10 mail.example.test
  (3600 s), TXT SPF ``SPF_RECORD`` (300 s); _dmarc.example.test TXT ``DMARC_RECORD`` (300 s);
  sel2048._domainkey.example.test TXT ``DKIM_RECORD`` (3600 s; a 2048-bit RSA public key
  whose private half was discarded, so it verifies nothing; 2 strings of 255 + 155 bytes).
* mail.example.test A 192.0.2.25 + AAAA 2001:db8::25 (60 s); ns.example.test A 192.0.2.53.
* PTRs (3600 s), all forward-confirmed (the name has a matching A/AAAA) except the first:
  192.0.2.66 -> dsl-66.dynamic.example.test (no A: not forward-confirmed),
  198.51.100.23 -> mx.one-list.example.test, 203.0.113.10 -> mail.clean.example.test,
  203.0.113.5 -> relay.allowed.example.test, 192.0.2.25 and 2001:db8::25 -> mail.example.test,
  2001:db8:bad::25 -> v6.spammer.example.test.
* CLIENT_IN_RANGE (198.51.100.200) and CLIENT6_CLEAN have no PTR (NXDOMAIN).

Any other name (example.com, other.test ...) is answered NXDOMAIN by unbound itself at once.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.testbed.dns_servers import (
    DnsTestbed,
    Listing,
    LocalZone,
    Outside,
    Record,
    Zone,
    a,
    aaaa,
    group_records,
    mx,
    ns,
    ptr,
    txt,
)

CLIENT_ON_THREE = "192.0.2.66"
CLIENT_ON_ONE = "198.51.100.23"
CLIENT_CLEAN = "203.0.113.10"
CLIENT_IN_RANGE = "198.51.100.200"
CLIENT_ALLOWED = "203.0.113.5"
CLIENT6_LISTED = "2001:db8:bad::25"
CLIENT6_CLEAN = "2001:db8:600d::25"

DNSBL_ZONES = ("dnsbl-a.test", "dnsbl-b.test", "dnsbl-c.test")
ALLOW_ZONE = "allow.test"
RHSBL_ZONE = "rhsbl.test"
RHSBL_LISTED = {  # domain -> A value
    "spammer.example": "127.0.0.2",
    "bulkmail.example": "127.0.0.3",
    "news.bulkmail.example": "127.0.0.3",
    "www.phish.example": "127.0.0.4",
}
RHSBL_UNLISTED = ("sub.spammer.example", "phish.example", "example.test")

DKIM_PUBLIC_KEY = (
    "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAtD5+rJfsDdGh089BHDtPGLAgmcsGCdgIbZDPiKfkAJnYaxTx"
    "po8ozaVwYVbxcGrtES6SUmw+i+B3jenf1FgZavSQ4OwoysMgFDdgp7xJPefkEk4hbrnpb2u78vHYd5rawWRmRBIyZJeu"
    "xPV+UOiqnBbCCEPZInE4IRZLC6p2L1MBLbkjdsPf6hepoOnRg4dpO8yL0CfRAYq2C9ngEU4lGBXDWmjVa+EL1XOuQjNr"
    "tT/qBf/tZsnP7E51on1f2fsx7QygfnrBEeXRcRohzdbIf3s4XuXDmJGaAjSeTH3G8kh0Bz5xDxVdYfyguV0+NQ1b849g"
    "29cjBS/qLz1HK6NGbQIDAQAB"
)
DKIM_RECORD = f"v=DKIM1; k=rsa; p={DKIM_PUBLIC_KEY}"
SPF_RECORD = "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 mx -all"
DMARC_RECORD = "v=DMARC1; p=reject; rua=mailto:dmarc@example.test"

DEFAULT_ZONES: tuple[Zone, ...] = (
    Zone("dnsbl-a.test", "ip4set", [CLIENT_ON_THREE, CLIENT_ON_ONE], ttl=600,
         default_txt="Listed by dnsbl-a: $, see https://dnsbl-a.test/q?ip=$"),
    Zone("dnsbl-a.test", "ip6trie", ["2001:db8:bad::/48"], ttl=600,
         default_txt="IPv6 $ listed by dnsbl-a"),
    Zone("dnsbl-b.test", "ip4set", [
        Listing(CLIENT_ON_THREE, a="127.0.0.4", txt="Open proxy $"),
        Listing("198.51.100.128/25", a="127.0.0.3", txt="Range listing $"),
    ]),
    Zone("dnsbl-c.test", "ip4set", [CLIENT_ON_THREE]),  # no default TXT: A only
    Zone("allow.test", "ip4set", [CLIENT_ALLOWED], default_a="127.0.0.10",
         default_txt="Allowlisted: $"),
    Zone("rhsbl.test", "dnset", [
        "spammer.example",
        Listing(".bulkmail.example", a="127.0.0.3", txt="Bulk mailer $"),
        Listing("*.phish.example", a="127.0.0.4", txt="Phishing $"),
    ], default_txt="Domain $ is listed"),
)


def _host_records() -> list[Record]:
    forward_confirmed = {
        CLIENT_ON_ONE: "mx.one-list.example.test",
        CLIENT_CLEAN: "mail.clean.example.test",
        CLIENT_ALLOWED: "relay.allowed.example.test",
        CLIENT6_LISTED: "v6.spammer.example.test",
    }
    records = [
        a("example.test", "192.0.2.80", 300),
        ns("example.test", "ns.example.test", 3600),
        mx("example.test", 10, "mail.example.test", 3600),
        txt("example.test", SPF_RECORD, 300),
        txt("_dmarc.example.test", DMARC_RECORD, 300),
        txt("sel2048._domainkey.example.test", DKIM_RECORD, 3600),
        a("ns.example.test", "192.0.2.53", 3600),
        a("mail.example.test", "192.0.2.25", 60),
        aaaa("mail.example.test", "2001:db8::25", 60),
        ptr("192.0.2.25", "mail.example.test", 3600),
        ptr("2001:db8::25", "mail.example.test", 3600),
        ptr(CLIENT_ON_THREE, "dsl-66.dynamic.example.test", 3600),
    ]
    for address, host in forward_confirmed.items():
        forward = aaaa if ":" in address else a
        records += [ptr(address, host, 3600), forward(host, address, 3600)]
    return records


DEFAULT_HOST_RECORDS: tuple[Record, ...] = tuple(_host_records())
DEFAULT_LOCAL_ZONES: tuple[LocalZone, ...] = tuple(
    group_records(DEFAULT_HOST_RECORDS, zones=["example.test"]))

DnsTestbedFactory = Callable[..., DnsTestbed]


def _make_testbeds(parent: Path, address: str) -> tuple[DnsTestbedFactory, list[DnsTestbed]]:
    started: list[DnsTestbed] = []

    def make(
        zones: Sequence[Zone] = DEFAULT_ZONES,
        local_zones: Sequence[LocalZone] = DEFAULT_LOCAL_ZONES,
        *,
        outside: Outside = "static",
        cache_max_ttl: int | None = None,
        cache_max_negative_ttl: int | None = None,
        extra: Sequence[str] = (),
    ) -> DnsTestbed:
        bed = DnsTestbed(parent / f"dns-{len(started)}", address, zones, local_zones,
                         outside=outside, cache_max_ttl=cache_max_ttl,
                         cache_max_negative_ttl=cache_max_negative_ttl, extra=extra)
        started.append(bed)  # before start(): a half-started bed is still torn down
        bed.start()
        return bed

    return make, started


def _stop_all(beds: list[DnsTestbed]) -> None:
    for bed in reversed(beds):
        bed.stop()


@pytest.fixture
def dns_testbed_factory(testbed_dir: Path, loopback: str) -> Iterator[DnsTestbedFactory]:
    make, started = _make_testbeds(testbed_dir, loopback)
    yield make
    _stop_all(started)


@pytest.fixture
def dns_testbed(dns_testbed_factory: DnsTestbedFactory) -> DnsTestbed:
    return dns_testbed_factory()


@pytest.fixture(scope="module")
def module_dns_testbed(testbed_root: Path, loopback: str) -> Iterator[DnsTestbed]:
    directory = Path(tempfile.mkdtemp(prefix="dns-module-", dir=testbed_root))
    directory.chmod(0o755)
    make, started = _make_testbeds(directory, loopback)
    try:
        yield make()
    finally:
        _stop_all(started)
        shutil.rmtree(directory, ignore_errors=True)
