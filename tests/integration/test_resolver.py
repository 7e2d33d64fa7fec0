"""The core resolver against real DNS servers (unbound in front of rbldnsd) and a real Redis:
A and TXT answers from a DNSBL zone, the shared cache, timeouts, outages."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterator
from dataclasses import replace

import pytest
import redis as sync_redis

from postward.core.clock import FakeClock
from postward.core.config_values import HostPort
from postward.core.dns import NOERROR, NXDOMAIN, TIMEOUT, Answer, Resolver
from postward.core.metrics import Metrics
from postward.core.redis_store import RedisStore, client_from_settings
from postward.core.settings import DnsSettings, RedisSettings
from tests.testbed.dns_fixtures import (
    CLIENT6_LISTED,
    CLIENT_CLEAN,
    CLIENT_ON_THREE,
    DKIM_RECORD,
)
from tests.testbed.dns_servers import DnsTestbed
from tests.testbed.net import free_port
from tests.testbed.redis_server import RedisServer

pytestmark = pytest.mark.integration

LISTED = "66.2.0.192.dnsbl-a.test"  # CLIENT_ON_THREE on dnsbl-a.test, TTL 600
assert LISTED.startswith(".".join(reversed(CLIENT_ON_THREE.split("."))))


def nameserver(bed: DnsTestbed) -> HostPort:
    return HostPort(bed.address, bed.port)


def make_resolver(bed_or_ns: DnsTestbed | HostPort, redis: RedisServer | None,
                  clock: FakeClock | None = None, **dns: object) -> tuple[Resolver, Metrics]:
    ns = bed_or_ns if isinstance(bed_or_ns, HostPort) else nameserver(bed_or_ns)
    settings = replace(DnsSettings(nameservers=(ns,), timeout=1.0), **dns)
    metrics = Metrics("test")
    store = None
    if redis is not None:
        store = RedisStore.from_settings(
            RedisSettings(url=redis.url, timeout=0.3, connect_timeout=0.3, retries=0), metrics)
    return Resolver(settings, metrics, store=store, clock=clock), metrics


async def ask(resolver: Resolver, *queries: tuple[str, str]) -> list[Answer]:
    try:
        return [await resolver.query(name, rtype) for name, rtype in queries]
    finally:
        await resolver.close()
        if resolver.store is not None:
            await resolver.store.close()


def test_dnsbl_a_and_txt_then_the_second_lookup_comes_from_redis(
        dns_testbed: DnsTestbed, redis_server: RedisServer) -> None:
    resolver, metrics = make_resolver(dns_testbed, redis_server)
    a, txt = asyncio.run(ask(resolver, (LISTED, "A"), (LISTED, "TXT")))
    assert (a.rcode, a.records, a.from_cache) == (NOERROR, ("127.0.0.2",), False)
    assert 0 < a.ttl <= 600
    assert txt.records == (f"Listed by dnsbl-a: {CLIENT_ON_THREE}, "
                           f"see https://dnsbl-a.test/q?ip={CLIENT_ON_THREE}",)
    assert metrics.value("postward_test_dns_queries_total",
                         {"type": "A", "result": "NOERROR"}) == 1

    # The answer is in Redis, kept no longer than its TTL.
    r = sync_redis.Redis.from_url(redis_server.url)
    assert 0 < r.pttl(f"postward:dns:A:{LISTED}") <= 600_000
    r.close()

    # With every DNS server gone, a new resolver (another daemon, another host) still gets the
    # answer: it can only have come from the shared cache.
    dns_testbed.stop()
    other, other_metrics = make_resolver(dns_testbed, redis_server)
    [again] = asyncio.run(ask(other, (LISTED, "A")))
    assert (again.rcode, again.records, again.from_cache) == (NOERROR, ("127.0.0.2",), True)
    assert other_metrics.value("postward_test_dns_cache_hits_total", {"type": "A"}) == 1
    assert other_metrics.value("postward_test_dns_queries_total",
                               {"type": "A", "result": "NOERROR"}) == 0


def test_cached_ttl_counts_down_with_the_clock(dns_testbed: DnsTestbed,
                                               redis_server: RedisServer) -> None:
    clock = FakeClock()
    first, _ = make_resolver(dns_testbed, redis_server, clock)
    [fresh] = asyncio.run(ask(first, (LISTED, "A")))
    clock.advance(100)
    second, _ = make_resolver(dns_testbed, redis_server, clock)
    [cached] = asyncio.run(ask(second, (LISTED, "A")))
    assert cached.from_cache
    assert cached.ttl == fresh.ttl - 100


def test_not_listed_is_cached_for_the_negative_ttl(dns_testbed: DnsTestbed,
                                                   redis_server: RedisServer) -> None:
    name = ".".join(reversed(CLIENT_CLEAN.split("."))) + ".dnsbl-a.test"
    resolver, _ = make_resolver(dns_testbed, redis_server, negative_ttl=42.0)
    [answer] = asyncio.run(ask(resolver, (name, "A")))
    assert answer.rcode == NXDOMAIN and answer.definite and not answer.ok
    r = sync_redis.Redis.from_url(redis_server.url)
    assert 0 < r.pttl(f"postward:dns:A:{name}") <= 42_000
    r.close()


def test_cache_max_ttl_bounds_what_is_kept(dns_testbed: DnsTestbed,
                                           redis_server: RedisServer) -> None:
    resolver, _ = make_resolver(dns_testbed, redis_server, cache_max_ttl=5.0)
    asyncio.run(ask(resolver, (LISTED, "A")))
    r = sync_redis.Redis.from_url(redis_server.url)
    assert 0 < r.pttl(f"postward:dns:A:{LISTED}") <= 5_000
    r.close()


def test_ipv6_client_in_nibble_form(dns_testbed: DnsTestbed) -> None:
    nibbles = ".".join(reversed(ipaddress.ip_address(CLIENT6_LISTED).exploded.replace(":", "")))
    resolver, _ = make_resolver(dns_testbed, None)
    [answer] = asyncio.run(ask(resolver, (f"{nibbles}.dnsbl-a.test", "A")))
    assert answer.records == ("127.0.0.2",)


@pytest.fixture
def silent_nameserver(loopback: str) -> Iterator[HostPort]:
    """A UDP socket that receives queries and never answers: a real timeout."""
    port = free_port(loopback)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((loopback, port))
        yield HostPort(loopback, port)


def test_timeout_is_an_answer_and_is_never_cached(silent_nameserver: HostPort,
                                                  redis_server: RedisServer) -> None:
    resolver, metrics = make_resolver(silent_nameserver, redis_server, timeout=0.2)
    [answer] = asyncio.run(ask(resolver, (LISTED, "A")))
    assert answer.rcode == TIMEOUT and not answer.definite
    assert metrics.value("postward_test_dns_queries_total",
                         {"type": "A", "result": "TIMEOUT"}) == 1
    r = sync_redis.Redis.from_url(redis_server.url)
    assert r.exists(f"postward:dns:A:{LISTED}") == 0
    r.close()


def test_redis_down_still_resolves(dns_testbed: DnsTestbed, redis_server: RedisServer) -> None:
    redis_server.stop()
    resolver, metrics = make_resolver(dns_testbed, redis_server)
    [answer] = asyncio.run(ask(resolver, (LISTED, "A")))
    assert answer.records == ("127.0.0.2",)
    assert metrics.value("postward_test_redis_errors_total",
                         {"op": "dns_cache_get", "error": "ConnectionError"}) == 1


def test_concurrent_lookups_of_one_name_share_one_query(dns_testbed: DnsTestbed) -> None:
    resolver, metrics = make_resolver(dns_testbed, None)

    async def many() -> list[Answer]:
        try:
            return await asyncio.gather(*(resolver.query(LISTED, "A") for _ in range(20)))
        finally:
            await resolver.close()

    answers = asyncio.run(many())
    assert {a.records for a in answers} == {("127.0.0.2",)}
    assert metrics.value("postward_test_dns_queries_total",
                         {"type": "A", "result": "NOERROR"}) == 1


def test_dkim_key_txt_longer_than_255_bytes_is_joined(dns_testbed: DnsTestbed) -> None:
    resolver, _ = make_resolver(dns_testbed, None)
    [answer] = asyncio.run(ask(resolver, ("sel2048._domainkey.example.test", "TXT")))
    assert answer.records == (DKIM_RECORD,)


def test_each_process_keeps_answers_briefly_in_front_of_redis(
        dns_testbed: DnsTestbed, redis_server: RedisServer) -> None:
    clock = FakeClock()
    resolver, metrics = make_resolver(dns_testbed, redis_server, clock, local_cache_ttl=10.0)

    async def scenario() -> list[Answer]:
        try:
            first = await resolver.query(LISTED, "A")
            await resolver.flush()  # the answer is written to Redis behind the caller's back
            second = await resolver.query(LISTED, "A")  # same process: no Redis round trip
            clock.advance(11)  # past the local TTL: back to Redis (still within the 600 s TTL)
            third = await resolver.query(LISTED, "A")
            return [first, second, third]
        finally:
            await resolver.close()
            assert resolver.store is not None
            await resolver.store.close()

    first, second, third = asyncio.run(scenario())
    assert not first.from_cache and second.from_cache and third.from_cache
    assert second.records == third.records == ("127.0.0.2",)
    assert metrics.value("postward_test_dns_local_cache_hits_total", {"type": "A"}) == 1
    assert metrics.value("postward_test_dns_cache_hits_total", {"type": "A"}) == 1
    assert metrics.value("postward_test_dns_queries_total",
                         {"type": "A", "result": "NOERROR"}) == 1


def test_query_many_reads_and_writes_the_cache_in_one_round_trip_each(
        dns_testbed: DnsTestbed, redis_server: RedisServer) -> None:
    names = [f"{'.'.join(reversed(CLIENT_ON_THREE.split('.')))}.{z}" for z in
             ("dnsbl-a.test", "dnsbl-b.test", "dnsbl-c.test", "allow.test")]
    first, metrics = make_resolver(dns_testbed, redis_server)

    async def many(resolver: Resolver) -> list[Answer]:
        try:
            return await resolver.query_many([(n, "A") for n in names] + [(names[0], "A")])
        finally:
            await resolver.close()
            assert resolver.store is not None
            await resolver.store.close()

    answers = asyncio.run(many(first))
    assert [a.records for a in answers] == [("127.0.0.2",), ("127.0.0.4",), ("127.0.0.2",), (),
                                            ("127.0.0.2",)]
    assert answers[3].rcode == NXDOMAIN
    # one MGET and one pipelined write for the four names (the repeat is answered once)
    assert metrics.value("postward_test_redis_operations_total", {"op": "dns_cache_get"}) == 1
    assert metrics.value("postward_test_redis_operations_total", {"op": "dns_cache_put"}) == 1
    assert metrics.value("postward_test_dns_queries_total",
                         {"type": "A", "result": "NOERROR"}) == 3

    dns_testbed.stop()  # the next resolver can only answer from Redis
    second, metrics2 = make_resolver(dns_testbed, redis_server)
    again = asyncio.run(many(second))
    assert [a.records for a in again] == [a.records for a in answers]
    assert all(a.from_cache for a in again)
    assert metrics2.value("postward_test_dns_cache_hits_total", {"type": "A"}) == 4


@pytest.mark.parametrize("name", ["bad\x8c.dnsbl-a.test", "a..b.dnsbl-a.test",
                                  "x" * 70 + ".dnsbl-a.test", "\udcff.example.test"])
def test_a_name_from_a_client_that_cannot_be_looked_up_is_an_error_answer(
        dns_testbed: DnsTestbed, name: str) -> None:
    resolver, _ = make_resolver(dns_testbed, None)

    async def both() -> list[Answer]:
        try:
            return [await resolver.query(name, "A"),
                    *(await resolver.query_many([(name, "TXT")]))]
        finally:
            await resolver.close()

    for answer in asyncio.run(both()):
        assert not answer.ok and not answer.definite


def test_a_listed_names_txt_lookup_skips_the_cache_read_its_a_lookup_just_missed(
        dns_testbed: DnsTestbed, redis_server: RedisServer) -> None:
    # A DNSBL's TXT lookup follows its A lookup: when Redis had no A answer for the name a
    # moment ago, it has no TXT answer either (they are written together), so one MGET serves
    # both phases; both answers still end up in the shared cache.
    clock = FakeClock()
    resolver, metrics = make_resolver(dns_testbed, redis_server, clock)

    async def phases() -> tuple[list[Answer], list[Answer]]:
        try:
            a = await resolver.query_many([(LISTED, "A")])
            return a, await resolver.query_many([(LISTED, "TXT")])
        finally:
            await resolver.close()  # waits for the cache writes
            assert resolver.store is not None
            await resolver.store.close()

    [a], [txt] = asyncio.run(phases())
    assert a.records == ("127.0.0.2",) and txt.records[0].startswith("Listed by dnsbl-a")
    assert metrics.value("postward_test_redis_operations_total", {"op": "dns_cache_get"}) == 1
    assert metrics.value("postward_test_dns_cache_misses_total", {"type": "TXT"}) == 1
    r = sync_redis.Redis.from_url(redis_server.url)
    assert r.exists(f"postward:dns:A:{LISTED}", f"postward:dns:TXT:{LISTED}") == 2
    r.close()

    # Past the window, a name is read from the shared cache again (here: found there).
    clock.advance(2)
    again, metrics2 = make_resolver(dns_testbed, redis_server, clock)
    [cached] = asyncio.run(ask(again, (LISTED, "TXT")))
    assert cached.from_cache and cached.records == txt.records
    assert metrics2.value("postward_test_dns_cache_hits_total", {"type": "TXT"}) == 1


def test_answers_come_before_their_cache_write_and_a_failed_write_is_only_counted(
        dns_testbed: DnsTestbed, redis_server: RedisServer) -> None:
    names = [f"{'.'.join(reversed(CLIENT_ON_THREE.split('.')))}.{z}"
             for z in ("dnsbl-a.test", "dnsbl-b.test")]
    resolver, metrics = make_resolver(dns_testbed, redis_server)

    async def scenario() -> tuple[list[Answer], int]:
        try:
            answers = await resolver.query_many([(n, "A") for n in names])
            # The write is under way, not done: the caller did not wait for Redis' reply.
            written_before = sync_redis.Redis.from_url(redis_server.url).exists(
                *(f"postward:dns:A:{n}" for n in names))
            redis_server.stop()  # ... and now it cannot be
            return answers, written_before
        finally:
            await resolver.close()
            assert resolver.store is not None
            await resolver.store.close()

    answers, written_before = asyncio.run(scenario())
    assert [a.records for a in answers] == [("127.0.0.2",), ("127.0.0.4",)]
    assert written_before == 0
    errors = sum(metrics.value("postward_test_redis_errors_total",
                               {"op": "dns_cache_put", "error": kind})
                 for kind in ("ConnectionError", "TimeoutError"))
    assert errors == 1


def test_answers_are_written_through_redis_py_too(dns_testbed: DnsTestbed,
                                                  redis_server: RedisServer) -> None:
    # Sentinel and TLS set-ups have no fast client: the cache write goes through redis-py.
    metrics = Metrics("test")
    settings = RedisSettings(url=redis_server.url, timeout=0.3, connect_timeout=0.3, retries=0)
    store = RedisStore(client_from_settings(settings), settings.key_prefix, metrics, None)
    resolver = Resolver(DnsSettings(nameservers=(nameserver(dns_testbed),), timeout=1.0),
                        metrics, store=store)
    clean = ".".join(reversed(CLIENT_CLEAN.split("."))) + ".dnsbl-a.test"

    async def lookups() -> list[Answer]:
        try:
            return await resolver.query_many([(LISTED, "A"), (clean, "A")])
        finally:
            await resolver.close()
            await store.close()

    assert [a.rcode for a in asyncio.run(lookups())] == [NOERROR, NXDOMAIN]
    r = sync_redis.Redis.from_url(redis_server.url)
    assert 0 < r.pttl(f"postward:dns:A:{LISTED}") <= 600_000
    assert r.exists(f"postward:dns:A:{clean}") == 1
    r.close()
