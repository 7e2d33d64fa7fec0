"""The DNS test bed itself: real unbound in front of real rbldnsd, asked with dnspython.

Every query goes to the test bed's own loopback servers and nowhere else.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.reversename
import pytest

from tests.testbed.dns_fixtures import (
    CLIENT6_CLEAN,
    CLIENT6_LISTED,
    CLIENT_ALLOWED,
    CLIENT_CLEAN,
    CLIENT_IN_RANGE,
    CLIENT_ON_ONE,
    CLIENT_ON_THREE,
    DEFAULT_ZONES,
    DKIM_RECORD,
    DMARC_RECORD,
    DNSBL_ZONES,
    RHSBL_LISTED,
    RHSBL_UNLISTED,
    SPF_RECORD,
    DnsTestbedFactory,
)
from tests.testbed.dns_servers import (
    DnsTestbed,
    Listing,
    LocalZone,
    Zone,
    a,
    dnsbl_query_name,
    txt,
)
from tests.testbed.net import wait_until

pytestmark = pytest.mark.integration


def resolve(bed: DnsTestbed, name: str, rdtype: str) -> dns.resolver.Answer:
    return bed.resolver().resolve(name, rdtype)


def txt_strings(answer: dns.resolver.Answer) -> list[tuple[bytes, ...]]:
    return [rdata.strings for rdata in answer]


def ask(bed: DnsTestbed, name: str, rdtype: str) -> dns.message.Message:
    """One raw query to unbound (no retries, no exception on NXDOMAIN/REFUSED)."""
    request = dns.message.make_query(name, rdtype, use_edns=0, payload=1232)
    return dns.query.udp(request, bed.address, port=bed.port, timeout=2)


def zone_by(name: str, kind: str = "ip4set") -> Zone:
    return next(z for z in DEFAULT_ZONES if z.name == f"{name}." and z.kind == kind)


def listed_on(bed: DnsTestbed, client: str) -> list[str]:
    return [zone for zone in DNSBL_ZONES if bed.lookup(client, zone)]


# -- blocklists through unbound ------------------------------------------------------------------


def test_listed_ip_answers_a_and_txt_with_reason(dns_testbed: DnsTestbed) -> None:
    name = dnsbl_query_name(CLIENT_ON_THREE, "dnsbl-a.test")
    assert name == "66.2.0.192.dnsbl-a.test."
    assert [r.to_text() for r in resolve(dns_testbed, name, "A")] == ["127.0.0.2"]
    reason = f"Listed by dnsbl-a: {CLIENT_ON_THREE}, see https://dnsbl-a.test/q?ip={CLIENT_ON_THREE}"
    assert txt_strings(resolve(dns_testbed, name, "TXT")) == [(reason.encode(),)]


def test_per_entry_values_ranges_and_a_only_lists(dns_testbed: DnsTestbed) -> None:
    assert dns_testbed.lookup(CLIENT_ON_THREE, "dnsbl-b.test") == ["127.0.0.4"]
    assert dns_testbed.lookup(CLIENT_ON_THREE, "dnsbl-b.test", "TXT") == [
        f'"Open proxy {CLIENT_ON_THREE}"']
    assert dns_testbed.lookup(CLIENT_IN_RANGE, "dnsbl-b.test") == ["127.0.0.3"]
    assert dns_testbed.lookup(CLIENT_IN_RANGE, "dnsbl-b.test", "TXT") == [
        f'"Range listing {CLIENT_IN_RANGE}"']
    # dnsbl-c has no TXT template: listed (A) but no TXT record (NODATA, not NXDOMAIN).
    assert dns_testbed.lookup(CLIENT_ON_THREE, "dnsbl-c.test") == ["127.0.0.2"]
    with pytest.raises(dns.resolver.NoAnswer):
        resolve(dns_testbed, dnsbl_query_name(CLIENT_ON_THREE, "dnsbl-c.test"), "TXT")


def test_clients_are_on_the_documented_number_of_lists(dns_testbed: DnsTestbed) -> None:
    assert listed_on(dns_testbed, CLIENT_ON_THREE) == list(DNSBL_ZONES)
    assert listed_on(dns_testbed, CLIENT_ON_ONE) == ["dnsbl-a.test"]
    assert listed_on(dns_testbed, CLIENT_CLEAN) == []
    assert listed_on(dns_testbed, CLIENT_IN_RANGE) == ["dnsbl-b.test"]
    assert listed_on(dns_testbed, CLIENT_ALLOWED) == []


def test_unlisted_ip_is_nxdomain_with_the_zone_soa(dns_testbed: DnsTestbed) -> None:
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolve(dns_testbed, dnsbl_query_name(CLIENT_CLEAN, "dnsbl-a.test"), "A")
    reply = ask(dns_testbed, dnsbl_query_name(CLIENT_CLEAN, "dnsbl-a.test"), "A")
    assert reply.rcode() == dns.rcode.NXDOMAIN
    soa = reply.authority[0]
    assert soa.rdtype == dns.rdatatype.SOA and soa.name.to_text() == "dnsbl-a.test."
    assert soa[0].minimum == 60


def test_allowlist_zone_answers_127_0_0_10(dns_testbed: DnsTestbed) -> None:
    assert dns_testbed.lookup(CLIENT_ALLOWED, "allow.test") == ["127.0.0.10"]
    assert dns_testbed.lookup(CLIENT_ALLOWED, "allow.test", "TXT") == [
        f'"Allowlisted: {CLIENT_ALLOWED}"']
    assert dns_testbed.lookup(CLIENT_ON_THREE, "allow.test") == []


@pytest.mark.parametrize(("domain", "value"), sorted(RHSBL_LISTED.items()))
def test_rhsbl_lists_domains_and_wildcards(dns_testbed: DnsTestbed, domain: str,
                                           value: str) -> None:
    assert dns_testbed.lookup(domain, "rhsbl.test") == [value]


def test_rhsbl_txt_and_unlisted_domains(dns_testbed: DnsTestbed) -> None:
    # "$" in a dnset template is the matching entry, not the queried name.
    assert dns_testbed.lookup("spammer.example", "rhsbl.test", "TXT") == [
        '"Domain spammer.example is listed"']
    assert dns_testbed.lookup("www.phish.example", "rhsbl.test", "TXT") == [
        '"Phishing phish.example"']
    for domain in RHSBL_UNLISTED:
        assert dns_testbed.lookup(domain, "rhsbl.test") == [], domain


def test_ipv6_listing_in_nibble_format(dns_testbed: DnsTestbed) -> None:
    name = dnsbl_query_name(CLIENT6_LISTED, "dnsbl-a.test")
    assert name.removesuffix(".dnsbl-a.test.").count(".") == 31  # 32 nibbles
    assert name.startswith("5.2.0.0.") and ".d.a.b.0.8.b.d.0.1.0.0.2." in name
    assert dns_testbed.lookup(CLIENT6_LISTED, "dnsbl-a.test") == ["127.0.0.2"]
    assert dns_testbed.lookup(CLIENT6_LISTED, "dnsbl-a.test", "TXT") == [
        f'"IPv6 {CLIENT6_LISTED} listed by dnsbl-a"']
    assert dns_testbed.lookup(CLIENT6_CLEAN, "dnsbl-a.test") == []
    # The IPv4 and IPv6 datasets of one zone coexist.
    assert dns_testbed.lookup(CLIENT_ON_ONE, "dnsbl-a.test") == ["127.0.0.2"]


# -- rbldnsd directly -----------------------------------------------------------------------------


def test_rbldnsd_answers_directly(dns_testbed: DnsTestbed) -> None:
    rbl = dns_testbed.rbldnsd
    assert rbl.port != dns_testbed.port
    reply = rbl.query(dnsbl_query_name(CLIENT_ON_THREE, "dnsbl-a.test"), "A")
    assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA
    assert [(rr.ttl, rr[0].to_text()) for rr in reply.answer] == [(600, "127.0.0.2")]
    reply = rbl.query(dnsbl_query_name(CLIENT_ON_THREE, "dnsbl-b.test"), "TXT")
    assert [(rr.ttl, rr[0].strings) for rr in reply.answer] == [
        (300, (f"Open proxy {CLIENT_ON_THREE}".encode(),))]
    assert rbl.query(dnsbl_query_name(CLIENT_CLEAN, "dnsbl-a.test")).rcode() == dns.rcode.NXDOMAIN
    assert rbl.query("spammer.example.rhsbl.test", "A").answer[0][0].to_text() == "127.0.0.2"
    # rbldnsd only serves its own zones.
    assert rbl.query("example.test", "A").rcode() == dns.rcode.REFUSED


def test_unbound_reaches_rbldnsd_through_the_stub(dns_testbed: DnsTestbed) -> None:
    name = dnsbl_query_name(CLIENT_ON_ONE, "dnsbl-a.test")
    assert dns_testbed.lookup(CLIENT_ON_ONE, "dnsbl-a.test") == ["127.0.0.2"]
    # rbldnsd's query log (-l +-) names the asker: unbound, from the test bed's address.
    wait_until(lambda: f"{dns_testbed.address} {name.rstrip('.')} A IN: NOERROR"
               in dns_testbed.rbldnsd.log_tail(200), timeout=5, what="query in rbldnsd log")


# -- host data from unbound ---------------------------------------------------------------------


def test_local_data_a_aaaa_ns_mx_txt(dns_testbed: DnsTestbed) -> None:
    assert [r.to_text() for r in resolve(dns_testbed, "example.test", "A")] == ["192.0.2.80"]
    assert [r.to_text() for r in resolve(dns_testbed, "example.test", "MX")] == [
        "10 mail.example.test."]
    assert [r.to_text() for r in resolve(dns_testbed, "example.test", "NS")] == [
        "ns.example.test."]
    assert [r.to_text() for r in resolve(dns_testbed, "mail.example.test", "AAAA")] == [
        "2001:db8::25"]
    assert txt_strings(resolve(dns_testbed, "example.test", "TXT")) == [(SPF_RECORD.encode(),)]
    assert txt_strings(resolve(dns_testbed, "_dmarc.example.test", "TXT")) == [
        (DMARC_RECORD.encode(),)]


def test_long_txt_is_split_into_255_byte_strings(dns_testbed: DnsTestbed) -> None:
    answer = resolve(dns_testbed, "sel2048._domainkey.example.test", "TXT")
    (strings,) = txt_strings(answer)
    assert len(DKIM_RECORD) > 255
    assert [len(s) for s in strings] == [255, len(DKIM_RECORD) - 255]
    assert b"".join(strings).decode() == DKIM_RECORD


def test_awkward_txt_bytes_survive_quoting(dns_testbed_factory: DnsTestbedFactory) -> None:
    text = 'say "hi" it\'s a back\\slash; caf\u00e9 ' + "x" * 300
    bed = dns_testbed_factory(local_zones=[LocalZone("odd.test", [txt("t.odd.test", text)])])
    (strings,) = txt_strings(resolve(bed, "t.odd.test", "TXT"))
    assert b"".join(strings) == text.encode()
    assert [len(s) for s in strings] == [255, len(text.encode()) - 255]


def test_ptr_records_and_forward_confirmation(dns_testbed: DnsTestbed) -> None:
    expected = {
        CLIENT_ON_THREE: "dsl-66.dynamic.example.test.",
        CLIENT_ON_ONE: "mx.one-list.example.test.",
        CLIENT_CLEAN: "mail.clean.example.test.",
        CLIENT_ALLOWED: "relay.allowed.example.test.",
        CLIENT6_LISTED: "v6.spammer.example.test.",
        "192.0.2.25": "mail.example.test.",
        "2001:db8::25": "mail.example.test.",
    }
    resolver = dns_testbed.resolver()
    for address, host in expected.items():
        assert [r.to_text() for r in resolver.resolve_address(address)] == [host], address
    forward = resolver.resolve(expected[CLIENT_CLEAN], "A")
    assert [r.to_text() for r in forward] == [CLIENT_CLEAN]
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver.resolve(expected[CLIENT_ON_THREE], "A")  # not forward-confirmed
    for address in (CLIENT_IN_RANGE, CLIENT6_CLEAN):
        with pytest.raises(dns.resolver.NXDOMAIN):
            resolver.resolve_address(address)


def test_ttls_are_as_configured(dns_testbed: DnsTestbed) -> None:
    cases = [("example.test", "A", 300), ("example.test", "MX", 3600),
             ("mail.example.test", "A", 60), ("sel2048._domainkey.example.test", "TXT", 3600),
             (dns.reversename.from_address(CLIENT_CLEAN).to_text(), "PTR", 3600)]
    for name, rdtype, ttl in cases:
        assert resolve(dns_testbed, name, rdtype).rrset.ttl == ttl, (name, rdtype)
    # Blocklist answers come from unbound's cache after the first query: at most the zone TTL.
    first = resolve(dns_testbed, dnsbl_query_name(CLIENT_ON_ONE, "dnsbl-a.test"), "A")
    assert 590 <= first.rrset.ttl <= 600
    assert resolve(dns_testbed, dnsbl_query_name(CLIENT_ON_THREE, "dnsbl-b.test"),
                   "A").rrset.ttl <= 300


# -- nothing leaves the machine ------------------------------------------------------------------


OUTSIDE_NAMES = [("example.com.", "A"), ("www.example.org.", "MX"), ("other.test.", "A"),
                 (dns.reversename.from_address("192.0.2.1").to_text(), "PTR"),
                 (dns.reversename.from_address("2001:db8:ffff::1").to_text(), "PTR")]


def recursive_replies(bed: DnsTestbed) -> int:
    stats = dict(line.split("=", 1) for line in bed.unbound.control("stats_noreset").split())
    return int(stats["total.num.recursivereplies"])


def test_names_outside_the_test_zones_get_nxdomain_at_once(dns_testbed: DnsTestbed) -> None:
    # Unbound's own RFC 1918 reverse zones stay, as in production: NXDOMAIN too.
    for name, rdtype in [*OUTSIDE_NAMES, ("1.1.168.192.in-addr.arpa.", "PTR")]:
        started = time.monotonic()
        reply = ask(dns_testbed, name, rdtype)
        assert time.monotonic() - started < 0.5, name
        assert reply.rcode() == dns.rcode.NXDOMAIN, (name, dns.rcode.to_text(reply.rcode()))
    # Answered from local zones: unbound's iterator (the only code that sends queries) never ran.
    assert recursive_replies(dns_testbed) == 0


def test_outside_policy_refuse(dns_testbed_factory: DnsTestbedFactory) -> None:
    bed = dns_testbed_factory(outside="refuse", local_zones=[])
    # Without host data, other.test and the TEST-NET reverse names follow the policy too: the
    # built-in static zones "test.", "2.0.192.in-addr.arpa." ... are switched off (nodefault).
    for name, rdtype in [*OUTSIDE_NAMES, ("example.test.", "A")]:
        assert ask(bed, name, rdtype).rcode() == dns.rcode.REFUSED, name
    assert bed.lookup(CLIENT_ON_THREE, "dnsbl-c.test") == ["127.0.0.2"]
    assert bed.lookup(CLIENT_CLEAN, "dnsbl-c.test") == []  # NXDOMAIN from rbldnsd, not REFUSED
    assert recursive_replies(bed) == 2  # just the two blocklist queries


# -- changing data -------------------------------------------------------------------------------


def test_blocklist_changes_are_visible_after_set_zone(dns_testbed: DnsTestbed) -> None:
    zone_c = zone_by("dnsbl-c.test")
    rbl = dns_testbed.rbldnsd
    serial = rbl.serial("dnsbl-c.test")
    assert dns_testbed.lookup(CLIENT_CLEAN, "dnsbl-c.test") == []  # now negatively cached
    dns_testbed.set_zone(zone_c.with_entries([CLIENT_ON_THREE, CLIENT_CLEAN]))
    assert dns_testbed.lookup(CLIENT_CLEAN, "dnsbl-c.test") == ["127.0.0.2"]
    assert rbl.serial("dnsbl-c.test") > serial
    assert rbl.query("dnsbl-c.test", "SOA").answer[0][0].serial == rbl.serial("dnsbl-c.test")
    rbl.reload()  # a plain SIGHUP: every zone still shows its latest serial
    # Same size, same second: rbldnsd would miss it by mtime alone.
    other = "203.0.113.11"
    dns_testbed.set_zone(zone_c.with_entries([CLIENT_ON_THREE, other]))
    assert dns_testbed.lookup(CLIENT_CLEAN, "dnsbl-c.test") == []
    assert dns_testbed.lookup(other, "dnsbl-c.test") == ["127.0.0.2"]
    dns_testbed.set_zone(zone_c.with_entries(
        [Listing(CLIENT_ON_THREE, a="127.0.0.9", txt="now with a reason: $")]))
    assert dns_testbed.lookup(CLIENT_ON_THREE, "dnsbl-c.test") == ["127.0.0.9"]
    assert dns_testbed.lookup(CLIENT_ON_THREE, "dnsbl-c.test", "TXT") == [
        f'"now with a reason: {CLIENT_ON_THREE}"']


def test_new_blocklist_zones_at_run_time(dns_testbed: DnsTestbed) -> None:
    # A new zone name: rbldnsd restarts with it, unbound gets a new stub.
    dns_testbed.set_zone(Zone("late.test", "ip4set", ["192.0.2.0/24"], default_a="127.0.0.5"))
    assert dns_testbed.lookup(CLIENT_ON_THREE, "late.test") == ["127.0.0.5"]
    assert dns_testbed.lookup(CLIENT_ON_ONE, "dnsbl-a.test") == ["127.0.0.2"]  # rest still served
    # A new dataset kind for a known zone: rbldnsd restarts on the same port, unbound flushes.
    assert dns_testbed.lookup(CLIENT6_LISTED, "dnsbl-b.test") == []
    dns_testbed.set_zone(Zone("dnsbl-b.test", "ip6trie", ["2001:db8:bad::/64"]))
    assert dns_testbed.lookup(CLIENT6_LISTED, "dnsbl-b.test") == ["127.0.0.2"]
    assert dns_testbed.lookup(CLIENT_IN_RANGE, "dnsbl-b.test") == ["127.0.0.3"]


def test_txt_template_variables(dns_testbed_factory: DnsTestbedFactory) -> None:
    zone = Zone("vars.test", "ip4set", [
        Listing("192.0.2.0/28", txt="$1/spam/$ $2"),
        Listing("192.0.2.16/28", txt="$1/relay/$ $2 (costs $$5)"),
        "192.0.2.99 :127.0.0.7:",  # rbldnsd syntax verbatim: own A, no TXT
    ], variables={"1": "See https://vars.test", "2": "for details"})
    bed = dns_testbed_factory(zones=[zone], local_zones=[])
    assert bed.lookup("192.0.2.3", "vars.test", "TXT") == [
        '"See https://vars.test/spam/192.0.2.3 for details"']
    assert bed.lookup("192.0.2.17", "vars.test", "TXT") == [
        '"See https://vars.test/relay/192.0.2.17 for details (costs $5)"']
    assert bed.lookup("192.0.2.99", "vars.test") == ["127.0.0.7"]
    assert bed.lookup("192.0.2.99", "vars.test", "TXT") == []


def test_local_zone_changes_are_visible(dns_testbed: DnsTestbed) -> None:
    assert [r.to_text() for r in resolve(dns_testbed, "example.test", "A")] == ["192.0.2.80"]
    dns_testbed.set_local_zone(LocalZone("example.test", [a("example.test", "198.51.100.80")]))
    assert [r.to_text() for r in resolve(dns_testbed, "example.test", "A")] == ["198.51.100.80"]
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolve(dns_testbed, "mail.example.test", "A")  # the zone was replaced whole
    dns_testbed.unbound.flush()  # the control socket survives the reload


def test_short_cache_option(dns_testbed_factory: DnsTestbedFactory) -> None:
    bed = dns_testbed_factory(cache_max_ttl=5, cache_max_negative_ttl=1)
    assert resolve(bed, dnsbl_query_name(CLIENT_ON_ONE, "dnsbl-a.test"), "A").rrset.ttl <= 5
    assert "cache-max-ttl: 5" in bed.unbound.config_path.read_text()


# -- validation ----------------------------------------------------------------------------------


def test_zone_rejects_entries_rbldnsd_would_silently_drop() -> None:
    with pytest.raises(ValueError, match="host bits"):
        Zone("bad.test", "ip4set", [Listing("192.0.2.10/24")])
    with pytest.raises(ValueError, match="does not belong"):
        Zone("bad.test", "ip4set", [Listing("2001:db8::1")])
    with pytest.raises(ValueError, match="cannot carry"):
        Zone("bad.test", "ip6tset", [Listing("2001:db8:1:2", a="127.0.0.3")])


# -- isolation and clean-up ----------------------------------------------------------------------


def test_module_scoped_testbed_serves_the_default_data(module_dns_testbed: DnsTestbed) -> None:
    assert listed_on(module_dns_testbed, CLIENT_ON_THREE) == list(DNSBL_ZONES)
    host, port = module_dns_testbed.nameserver.split(":")
    assert (host, int(port)) == (module_dns_testbed.address, module_dns_testbed.port)


def test_two_testbeds_in_one_session_are_independent(
        dns_testbed_factory: DnsTestbedFactory) -> None:
    first = dns_testbed_factory()
    second = dns_testbed_factory(zones=[Zone("dnsbl-a.test", "ip4set", [CLIENT_CLEAN])])
    assert first.port != second.port and first.rbldnsd.port != second.rbldnsd.port
    assert first.lookup(CLIENT_CLEAN, "dnsbl-a.test") == []
    assert second.lookup(CLIENT_CLEAN, "dnsbl-a.test") == ["127.0.0.2"]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_stop_leaves_no_process_behind(testbed_dir: Path, loopback: str) -> None:
    bed = DnsTestbed(testbed_dir / "dns", loopback, DEFAULT_ZONES)
    with bed:
        pids = bed.pids()
        assert len(pids) == 2 and all(pid_alive(pid) for pid in pids)
        assert bed.lookup(CLIENT_ON_ONE, "dnsbl-a.test") == ["127.0.0.2"]
    assert not any(pid_alive(pid) for pid in pids)  # stop() waited for them
    mine = subprocess.run(["pgrep", "-f", str(bed.directory)], capture_output=True, text=True)
    assert mine.stdout == ""
    with pytest.raises((dns.exception.Timeout, ConnectionRefusedError)):
        dns.query.udp(dns.message.make_query("example.test", "A"), bed.address,
                      port=bed.port, timeout=0.3)
