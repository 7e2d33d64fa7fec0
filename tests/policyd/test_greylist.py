"""The greylisting engine against a real Redis, time moved by a FakeClock (never slept).

Expected answers are postgrey 1.37's; test_greylist_vs_postgrey.py checks them against the real
program too.
"""

from __future__ import annotations

import asyncio
import functools
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace

import pytest

from postward.core.clock import FakeClock
from postward.core.metrics import Metrics
from postward.core.redis_store import RedisStore, StoreUnavailable, client_from_settings
from postward.core.settings import RedisSettings
from postward.policyd.greylist import TTL_MARGIN, Greylister, GreylistResult, Outcome, postgrey_date
from postward.policyd.greylist_lists import GreylistLists
from postward.policyd.greylist_settings import GreylistSettings
from tests.testbed.redis_server import RedisServer

pytestmark = pytest.mark.integration

SETTINGS = GreylistSettings(hostname="mx1.example", whitelist_clients=(),
                            whitelist_recipients=())
FAST = RedisSettings(timeout=0.5, connect_timeout=0.5, retries=1, backoff_base=0.01,
                     backoff_cap=0.05)
DAY = 86400
DEFER = "DEFER_IF_PERMIT 4.2.0 Greylisted, see https://postgrey.schweikert.ch/help/example.org.html"
HEADER = re.compile(r"PREPEND X-Greylist: delayed (\d+) seconds by postgrey-1\.37 at "
                    r"(\S+); (\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d \S+)")


def request(**overrides: str) -> dict[str, str]:
    """A Postfix policy request at RCPT TO, as Postfix 3.7 sends it (abridged); each is a new
    message (instance) unless the test says otherwise."""
    return {"request": "smtpd_access_policy", "protocol_state": "RCPT",
            "client_address": "192.0.2.7", "client_name": "mail.sender.test",
            "reverse_client_name": "mail.sender.test", "sender": "alice@sender.test",
            "recipient": "bob@example.org", "queue_id": "", "instance": uuid.uuid4().hex,
            "etrn_domain": "", **overrides}


class Bed:
    """Greylisters ("MX hosts") sharing one Redis and one FakeClock."""

    def __init__(self, redis_server: RedisServer, clock: FakeClock) -> None:
        self.redis_server = redis_server
        self.clock = clock
        self.stores: list[RedisStore] = []

    def host(self, settings: GreylistSettings = SETTINGS, lists: GreylistLists | None = None,
             metrics: Metrics | None = None, redis_py_only: bool = False) -> Greylister:
        """A greylister; ``redis_py_only``: with a store that has no fast client (as with
        TLS or Sentinel), so the script runs through redis-py."""
        metrics = metrics or Metrics("policyd")
        redis = replace(FAST, url=self.redis_server.url, key_prefix="pwtest:")
        store = RedisStore(client_from_settings(redis), redis.key_prefix, metrics) \
            if redis_py_only else RedisStore.from_settings(redis, metrics)
        self.stores.append(store)
        return Greylister(store, settings, lists or GreylistLists(), self.clock, metrics)

    async def keys(self) -> dict[str, tuple[str, int]]:
        """Every key with its value and TTL."""
        c = self.stores[0].client
        return {k.decode(): ((await c.get(k)).decode(), await c.ttl(k))
                for k in await c.keys("*")}


@pytest.fixture
def bed(redis_server: RedisServer) -> Bed:
    return Bed(redis_server, FakeClock(start=1_700_000_000.0))


def on_bed(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an ``async def test_...(bed, ...)`` body with asyncio, closing its stores after."""

    @functools.wraps(test)
    def run(bed: Bed, **kwargs: object) -> None:
        async def main() -> None:
            try:
                await test(bed, **kwargs)
            finally:
                for store in bed.stores:
                    await store.close()

        asyncio.run(main())

    return run


def expect(result: GreylistResult, outcome: Outcome, action: str | re.Pattern[str]) -> None:
    assert result.outcome == outcome, result
    if isinstance(action, str):
        assert result.action == action
    else:
        assert action.fullmatch(result.action), result.action


# --------------------------------------------------------------------------------------------
# The life of a triplet


@on_bed
async def test_new_early_passed_known(bed: Bed) -> None:
    g = bed.host()
    expect(await g.check(request()), Outcome.NEW, DEFER)
    bed.clock.advance(120)
    r = await g.check(request())
    expect(r, Outcome.EARLY_RETRY, DEFER)
    assert r.reason == "early-retry (180s missing)"
    bed.clock.advance(180)  # 300 s after first sight: delay is over
    r = await g.check(request(instance="retry-1"))
    expect(r, Outcome.PASSED, HEADER)
    m = HEADER.fullmatch(r.action)
    assert m is not None and m.groups() == ("300", "mx1.example", postgrey_date(bed.clock.time()))
    bed.clock.advance(60)  # a later mail of the same triplet: no header, no delay
    expect(await g.check(request()), Outcome.KNOWN, "DUNNO")
    for _ in range(2):  # 70 days, seen every 35: still known (each visit moves last-seen)
        bed.clock.advance(35 * DAY)
        expect(await g.check(request()), Outcome.KNOWN, "DUNNO")
    bed.clock.advance(35 * DAY + 1)  # unseen for longer than max_age: as if never seen
    expect(await g.check(request()), Outcome.NEW, DEFER)


@on_bed
async def test_the_fast_client_and_redis_py_share_one_triplet(bed: Bed) -> None:
    # The fast client runs the script by SHA; Redis forgetting it (restart, SCRIPT FLUSH)
    # costs one reload, never an answer.
    fast, slow = bed.host(), bed.host(redis_py_only=True)
    assert fast.store.fast is not None and slow.store.fast is None
    expect(await fast.check(request()), Outcome.NEW, DEFER)
    await slow.store.client.script_flush()
    bed.clock.advance(100)
    r = await slow.check(request())
    expect(r, Outcome.EARLY_RETRY, DEFER)
    assert r.reason == "early-retry (200s missing)"
    await slow.store.client.script_flush()
    bed.clock.advance(200)
    expect(await fast.check(request()), Outcome.PASSED, HEADER)
    expect(await slow.check(request()), Outcome.KNOWN, "DUNNO")


@on_bed
async def test_greylist_text_substitutions_and_the_4_2_0_code(bed: Bed) -> None:
    custom = replace(SETTINGS, greylist_action="451", greylist_text="wait %s s for %r (%s, %r)")
    g = bed.host(custom)
    no_etrn = request(recipient="x@Sub.Example.NET")
    del no_etrn["etrn_domain"]  # Postfix < 2.3 (or Exim): no enhanced status code
    expect(await g.check(no_etrn), Outcome.NEW, "451 wait 300 s for Sub.Example.NET (%s, %r)")
    bed.clock.advance(299)
    expect(await g.check(request(recipient="x@Sub.Example.NET")), Outcome.EARLY_RETRY,
           "451 4.2.0 wait 1 s for Sub.Example.NET (%s, %r)")
    coded = bed.host(replace(SETTINGS, greylist_text="4.7.1 Come back later"))
    expect(await coded.check(request(sender="other@sender.test")), Outcome.NEW,
           "DEFER_IF_PERMIT 4.7.1 Come back later")  # a text with its own code


@on_bed
async def test_one_header_per_message_over_its_recipients(bed: Bed) -> None:
    g = bed.host()
    for rcpt in ("bob@example.org", "carol@example.org"):
        expect(await g.check(request(recipient=rcpt, instance="m1")), Outcome.NEW, DEFER)
    bed.clock.advance(400)
    expect(await g.check(request(recipient="bob@example.org", instance="m2")),
           Outcome.PASSED, HEADER)
    # Same message (instance), second recipient: it passes too, the header is there.
    expect(await g.check(request(recipient="carol@example.org", instance="m2")),
           Outcome.PASSED, "DUNNO")
    # Without an instance attribute (not Postfix) every request is its own message.
    no_instance = request(recipient="dave@example.org")
    del no_instance["instance"]
    await g.check(no_instance)
    bed.clock.advance(300)
    expect(await g.check(no_instance), Outcome.PASSED, HEADER)


@on_bed
async def test_retry_window(bed: Bed) -> None:
    g = bed.host()
    await g.check(request(sender="a@s.test"))
    await g.check(request(sender="b@s.test"))
    await g.check(request(sender="c@s.test"))
    bed.clock.advance(100)
    expect(await g.check(request(sender="c@s.test")), Outcome.EARLY_RETRY, DEFER)
    bed.clock.advance(2 * DAY - 100)  # exactly retry_window: in time (postgrey: '>')
    expect(await g.check(request(sender="a@s.test")), Outcome.PASSED, HEADER)
    bed.clock.advance(1)  # b's first retry comes too late: greylisting starts again
    r = await g.check(request(sender="b@s.test"))
    expect(r, Outcome.NEW, DEFER)
    # The window counts from first sight, not from the last (early) retry.
    expect(await g.check(request(sender="c@s.test")), Outcome.NEW, DEFER)
    bed.clock.advance(299)
    expect(await g.check(request(sender="b@s.test")), Outcome.EARLY_RETRY, DEFER)
    bed.clock.advance(1)
    r = await g.check(request(sender="b@s.test"))
    expect(r, Outcome.PASSED, HEADER)
    assert r.reason == "triplet found, delay=300"


@on_bed
async def test_ttls_only_collect_garbage_beyond_the_logical_lifetime(bed: Bed) -> None:
    g = bed.host()
    await g.check(request())
    [(key, (value, ttl))] = (await bed.keys()).items()
    assert key.startswith("pwtest:grey:triplet:")
    assert value == "1700000000,1700000000"
    assert 2 * DAY < ttl <= 2 * DAY + TTL_MARGIN
    bed.clock.advance(300)
    await g.check(request())
    keys = await bed.keys()
    assert keys[key][0] == "1700000000,1700000300"
    assert 35 * DAY < keys[key][1] <= 35 * DAY + TTL_MARGIN
    client = keys["pwtest:grey:client:192.0.2.7"]
    assert client[0] == "1,1700000300" and 35 * DAY < client[1] <= 35 * DAY + TTL_MARGIN
    # No address or sender is stored in the clear, only in the client counter's key.
    assert not any("sender" in k or "example" in k for k in keys)


# --------------------------------------------------------------------------------------------
# Auto-whitelisting of clients


@on_bed
async def test_auto_whitelist_after_five_passes_an_hour_apart(bed: Bed) -> None:
    g = bed.host()

    async def deliver(n: int) -> GreylistResult:
        first = await g.check(request(sender=f"user{chr(97 + n)}@s.test"))
        assert first.outcome == Outcome.NEW
        bed.clock.advance(300)
        return await g.check(request(sender=f"user{chr(97 + n)}@s.test"))

    for n in range(4):
        if n:
            bed.clock.advance(3600)
        expect(await deliver(n), Outcome.PASSED, HEADER)
    # A pass within the hour of the last counted one does not count...
    expect(await deliver(4), Outcome.PASSED, HEADER)
    expect(await g.check(request(sender="fresh@s.test")), Outcome.NEW, DEFER)
    bed.clock.advance(3600)
    expect(await deliver(5), Outcome.PASSED, HEADER)  # ...this one is the fifth
    # Now any mail from this client address passes at once, even a new triplet.
    r = await g.check(request(sender="never-seen@elsewhere.test"))
    expect(r, Outcome.AUTO_WHITELISTED, "DUNNO")
    assert r.reason == "client AWL"
    # The address, not its /24: a neighbour is still greylisted.
    expect(await g.check(request(client_address="192.0.2.8", sender="z@s.test")),
           Outcome.NEW, DEFER)
    # Unseen for longer than max_age, the client loses its place.
    bed.clock.advance(35 * DAY + 1)
    expect(await g.check(request(sender="after@s.test")), Outcome.NEW, DEFER)


@on_bed
async def test_auto_whitelist_can_be_turned_off(bed: Bed) -> None:
    g = bed.host(replace(SETTINGS, auto_whitelist_clients=0))
    for n in range(7):
        await g.check(request(sender=f"u{n}@s.test"))
        bed.clock.advance(300)
        assert (await g.check(request(sender=f"u{n}@s.test"))).outcome == Outcome.PASSED
        bed.clock.advance(3600)
    expect(await g.check(request(sender="new@s.test")), Outcome.NEW, DEFER)
    assert not any(":client:" in k for k in await bed.keys())


# --------------------------------------------------------------------------------------------
# What makes two requests one triplet


@pytest.mark.parametrize(("settings", "first", "again", "other"), [
    (SETTINGS, "192.0.2.7", "192.0.2.200", "192.0.3.7"),
    (SETTINGS, "2001:db8:1:2::25", "2001:db8:1:2:ffff::9", "2001:db8:1:3::25"),
    (replace(SETTINGS, ipv4cidr=16), "198.51.7.7", "198.51.200.1", "198.52.0.1"),
    (replace(SETTINGS, ipv6cidr=48), "2001:db8:1:2::25", "2001:db8:1:ffff::9", "2001:db8:2::1"),
    (replace(SETTINGS, lookup_by_subnet=False), "192.0.2.7", "192.0.2.7", "192.0.2.8"), ])
@on_bed
async def test_clients_fold_into_subnets(bed: Bed, settings: GreylistSettings,
                                   first: str, again: str, other: str) -> None:
    g = bed.host(settings)
    await g.check(request(client_address=first))
    bed.clock.advance(300)
    expect(await g.check(request(client_address=other)), Outcome.NEW, DEFER)
    expect(await g.check(request(client_address=again)), Outcome.PASSED, HEADER)


@on_bed
async def test_normalised_senders_share_a_triplet(bed: Bed) -> None:
    g = bed.host()
    pairs = [("prvs=1234567890=Bob@Batv.test", "prvs=0987654321=bob@batv.TEST"),
             ("list+bounces-77@l.test", "list+bounces-78@l.test"),
             ("bounce-1-2@v.test", "bounce-3-4@v.test")]
    for a, _ in pairs:
        await g.check(request(sender=a))
    await g.check(request())
    bed.clock.advance(300)
    for _, again in pairs:
        assert (await g.check(request(sender=again))).outcome == Outcome.PASSED, again
    # The recipient is taken as it is (only lower-cased): +extensions differ.
    expect(await g.check(request(recipient="Bob+x@example.org")), Outcome.NEW, DEFER)
    expect(await g.check(request(recipient="BOB@EXAMPLE.ORG")), Outcome.PASSED, HEADER)


# --------------------------------------------------------------------------------------------
# Whitelists, shared state, Redis down


def whitelists() -> GreylistLists:
    lists = GreylistLists()
    lists.add_clients("partner.test\n/^relay\\d+\\.isp\\.test$/\n203.0.113.9\n"
                      "198.51.100.0/24\n2001:db8:f::/48\n", "clients")
    lists.add_recipients("postmaster@\nnogrey@example.org\n", "recipients")
    return lists


@pytest.mark.parametrize("overrides", [
    {"client_name": "mx1.partner.test"},
    {"client_name": "RELAY12.isp.test"},
    {"client_address": "203.0.113.9"},
    {"client_address": "198.51.100.250"},
    {"client_address": "2001:db8:f:1::2"},
    {"recipient": "postmaster@example.org"},
    {"recipient": "nogrey+tag@example.org"}, ], ids=lambda o: "-".join(o.values()))
@on_bed
async def test_whitelisted_clients_and_recipients_pass_without_redis(
        bed: Bed, overrides: dict[str, str]) -> None:
    g = bed.host(lists=whitelists())
    bed.redis_server.stop()  # a whitelist needs no Redis at all
    try:
        r = await g.check(request(**overrides))
    finally:
        bed.redis_server.start()
    expect(r, Outcome.WHITELISTED, "DUNNO")
    assert r.reason.startswith(("client whitelist (clients:", "recipient whitelist (recipients:"))


@on_bed
async def test_two_mx_hosts_share_triplets(bed: Bed) -> None:
    mx1 = bed.host()
    mx2 = bed.host(replace(SETTINGS, hostname="mx2.example"))
    expect(await mx1.check(request()), Outcome.NEW, DEFER)
    bed.clock.advance(100)
    expect(await mx2.check(request()), Outcome.EARLY_RETRY, DEFER)
    bed.clock.advance(200)
    r = await mx2.check(request(instance="on-mx2"))
    expect(r, Outcome.PASSED, HEADER)
    assert " at mx2.example; " in r.action
    expect(await mx1.check(request(instance="on-mx1")), Outcome.KNOWN, "DUNNO")


@on_bed
async def test_racing_mx_hosts_agree(bed: Bed) -> None:
    # Concurrent first attempts on two hosts: all deferred, one first-seen time, one pass.
    mx1, mx2 = bed.host(), bed.host()
    results = await asyncio.gather(*(h.check(request(instance=str(i)))
                                     for i in range(20) for h in (mx1, mx2)))
    assert {r.action for r in results} == {DEFER}
    [(value, _)] = (await bed.keys()).values()
    assert value == "1700000000,1700000000"
    bed.clock.advance(300)
    results = await asyncio.gather(mx1.check(request(instance="x")),
                                   mx2.check(request(instance="y")))
    assert sorted(r.outcome for r in results) == [Outcome.KNOWN, Outcome.PASSED]


@on_bed
async def test_clock_skew_between_hosts_is_corrected_as_postgrey_does(bed: Bed) -> None:
    ahead = bed.host()
    behind = bed.host()
    behind.clock = FakeClock(start=bed.clock.time() - 1000)  # 1000 s slow
    await ahead.check(request())
    # First seen "in the future" for the slow host: postgrey takes it as now.
    expect(await behind.check(request()), Outcome.NEW, DEFER)
    [(value, _)] = (await bed.keys()).values()
    assert value == "1699999000,1699999000"


@on_bed
async def test_redis_down_raises_store_unavailable_and_is_counted(bed: Bed) -> None:
    metrics = Metrics("policyd")
    g = bed.host(metrics=metrics)
    bed.redis_server.stop()
    try:
        with pytest.raises(StoreUnavailable, match="greylist"):
            await g.check(request())
    finally:
        bed.redis_server.start()
    expect(await g.check(request()), Outcome.NEW, DEFER)  # back: same client works
    bed.clock.advance(1)  # (within the same second, postgrey would still say "new")
    expect(await g.check(request()), Outcome.EARLY_RETRY, DEFER)
    errors = sum(metrics.value("postward_policyd_redis_errors_total",
                               {"op": "greylist", "error": e})
                 for e in ("ConnectionError", "TimeoutError"))
    assert errors == 1  # counted by RedisStore; the failed request has no outcome
    outcomes = "postward_policyd_greylist_outcomes_total"
    assert [metrics.registry.get_sample_value(outcomes, {"outcome": o})
            for o in ("new", "early_retry", "auto_whitelisted")] == [1, 1, 0]


@pytest.mark.parametrize(("drop", "overrides"), [
    ("recipient", {}),
    ("client_name", {}),
    (None, {"client_address": "not-an-ip"}), ])
@on_bed
async def test_incomplete_requests_get_dunno(bed: Bed, drop: str | None,
                                       overrides: dict[str, str]) -> None:
    g = bed.host()
    r = request(**overrides)
    if drop:
        del r[drop]
    expect(await g.check(r), Outcome.INCOMPLETE, "DUNNO")
    assert await bed.keys() == {}
