"""The greylisting engine against a real Redis, time moved by a FakeClock (never slept).

Expected answers are postgrey 1.37's; test_greylist_vs_postgrey.py checks them against the real
program too.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from postward.core.clock import FakeClock
from postward.core.config import describe, section_from_raw
from postward.core.config_file import parse_ini
from postward.core.metrics import Metrics
from postward.core.redis_store import RedisStore, StoreUnavailable
from postward.core.settings import RedisSettings
from postward.policyd.greylist import (
    TTL_MARGIN,
    Greylister,
    GreylistResult,
    Outcome,
    normalise_sender,
    postgrey_date,
)
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
    r = {"request": "smtpd_access_policy", "protocol_state": "RCPT", "protocol_name": "ESMTP",
         "client_address": "192.0.2.7", "client_name": "mail.sender.test",
         "reverse_client_name": "mail.sender.test", "helo_name": "mail.sender.test",
         "sender": "alice@sender.test", "recipient": "bob@example.org", "recipient_count": "0",
         "queue_id": "", "instance": uuid.uuid4().hex, "size": "0", "etrn_domain": "",
         "stress": "", "ccert_subject": ""}
    r.update(overrides)
    return r


class Bed:
    """Greylisters ("MX hosts") sharing one Redis and one FakeClock."""

    def __init__(self, redis_server: RedisServer, clock: FakeClock) -> None:
        self.redis_server = redis_server
        self.clock = clock
        self.stores: list[RedisStore] = []

    def host(self, settings: GreylistSettings = SETTINGS, lists: GreylistLists | None = None,
             metrics: Metrics | None = None) -> Greylister:
        metrics = metrics or Metrics("policyd")
        store = RedisStore.from_settings(replace(FAST, url=self.redis_server.url,
                                                 key_prefix="pwtest:"), metrics)
        self.stores.append(store)
        return Greylister(store, settings, lists or GreylistLists(), self.clock, metrics)

    async def keys(self) -> dict[str, tuple[str, int]]:
        """Every key with its value and TTL."""
        c = self.stores[0].client
        return {k.decode(): ((await c.get(k)).decode(), await c.ttl(k))
                for k in await c.keys("*")}


@contextlib.asynccontextmanager
async def bed(redis_server: RedisServer) -> AsyncIterator[Bed]:
    b = Bed(redis_server, FakeClock(start=1_700_000_000.0))
    try:
        yield b
    finally:
        for s in b.stores:
            await s.close()


def expect(result: GreylistResult, outcome: Outcome, action: str | re.Pattern[str]) -> None:
    assert result.outcome == outcome, result
    if isinstance(action, str):
        assert result.action == action
    else:
        assert action.fullmatch(result.action), result.action


# --------------------------------------------------------------------------------------------
# The life of a triplet


def test_new_early_passed_known(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        async with bed(redis_server) as b:
            g = b.host()
            expect(await g.check(request()), Outcome.NEW, DEFER)
            b.clock.advance(120)
            r = await g.check(request())
            expect(r, Outcome.EARLY_RETRY, DEFER)
            assert r.reason == "early-retry (180s missing)"
            b.clock.advance(180)  # 300 s after first sight: delay is over
            r = await g.check(request(instance="retry-1"))
            expect(r, Outcome.PASSED, HEADER)
            m = HEADER.fullmatch(r.action)
            assert m is not None and m.groups() == ("300", "mx1.example",
                                                    postgrey_date(b.clock.time()))
            b.clock.advance(60)  # a later mail of the same triplet: no header, no delay
            expect(await g.check(request(instance="next")), Outcome.KNOWN, "DUNNO")
            b.clock.advance(30 * DAY)  # seen within max_age: still known (last-seen moved)
            expect(await g.check(request(instance="later")), Outcome.KNOWN, "DUNNO")
            b.clock.advance(30 * DAY)
            expect(await g.check(request(instance="later2")), Outcome.KNOWN, "DUNNO")

    asyncio.run(scenario())


def test_outcomes_are_counted_under_the_daemon_prefix(redis_server: RedisServer) -> None:
    async def scenario() -> Metrics:
        async with bed(redis_server) as b:
            metrics = Metrics("policyd")
            g = b.host(metrics=metrics)
            await g.check(request())
            b.clock.advance(1)  # within the same second, postgrey would still say "new"
            await g.check(request())
            return metrics

    metrics = asyncio.run(scenario())
    name = "postward_policyd_greylist_outcomes_total"
    assert metrics.value(name, {"outcome": "new"}) == 1
    assert metrics.value(name, {"outcome": "early_retry"}) == 1
    # Every outcome is exported from the start, at 0.
    assert metrics.registry.get_sample_value(name, {"outcome": "auto_whitelisted"}) == 0


def test_greylist_text_substitutions_and_the_4_2_0_code(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        async with bed(redis_server) as b:
            custom = replace(SETTINGS, greylist_action="451",
                             greylist_text="wait %s s for %r (%s, %r)")
            g = b.host(custom)
            no_etrn = request(recipient="x@Sub.Example.NET")
            del no_etrn["etrn_domain"]  # Postfix < 2.3 (or Exim): no enhanced status code
            expect(await g.check(no_etrn), Outcome.NEW,
                   "451 wait 300 s for Sub.Example.NET (%s, %r)")
            b.clock.advance(299)
            expect(await g.check(request(recipient="x@Sub.Example.NET")), Outcome.EARLY_RETRY,
                   "451 4.2.0 wait 1 s for Sub.Example.NET (%s, %r)")
            coded = b.host(replace(SETTINGS, greylist_text="4.7.1 Come back later"))
            expect(await coded.check(request(sender="other@sender.test")), Outcome.NEW,
                   "DEFER_IF_PERMIT 4.7.1 Come back later")  # a text with its own code

    asyncio.run(scenario())


def test_one_header_per_message_over_its_recipients(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        async with bed(redis_server) as b:
            g = b.host()
            for rcpt in ("bob@example.org", "carol@example.org"):
                expect(await g.check(request(recipient=rcpt, instance="m1")), Outcome.NEW,
                       DEFER)
            b.clock.advance(400)
            expect(await g.check(request(recipient="bob@example.org", instance="m2")),
                   Outcome.PASSED, HEADER)
            # Same message (instance), second recipient: it passes too, the header is there.
            expect(await g.check(request(recipient="carol@example.org", instance="m2")),
                   Outcome.PASSED, "DUNNO")
            # Without an instance attribute (not Postfix) every request is its own message.
            no_instance = request(recipient="dave@example.org")
            del no_instance["instance"]
            await g.check(no_instance)
            b.clock.advance(300)
            expect(await g.check(no_instance), Outcome.PASSED, HEADER)

    asyncio.run(scenario())


def test_retry_window(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        async with bed(redis_server) as b:
            g = b.host()
            await g.check(request(sender="a@s.test"))
            await g.check(request(sender="b@s.test"))
            await g.check(request(sender="c@s.test"))
            b.clock.advance(100)
            expect(await g.check(request(sender="c@s.test")), Outcome.EARLY_RETRY, DEFER)
            b.clock.advance(2 * DAY - 100)  # exactly retry_window: in time (postgrey: '>')
            expect(await g.check(request(sender="a@s.test")), Outcome.PASSED, HEADER)
            b.clock.advance(1)  # b's first retry comes too late: greylisting starts again
            r = await g.check(request(sender="b@s.test"))
            expect(r, Outcome.NEW, DEFER)
            # The window counts from first sight, not from the last (early) retry.
            expect(await g.check(request(sender="c@s.test")), Outcome.NEW, DEFER)
            b.clock.advance(299)
            expect(await g.check(request(sender="b@s.test")), Outcome.EARLY_RETRY, DEFER)
            b.clock.advance(1)
            r = await g.check(request(sender="b@s.test"))
            expect(r, Outcome.PASSED, HEADER)
            assert r.reason == "triplet found, delay=300"

    asyncio.run(scenario())


def test_passed_triplets_are_forgotten_after_max_age(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        async with bed(redis_server) as b:
            g = b.host()
            await g.check(request())
            b.clock.advance(300)
            expect(await g.check(request()), Outcome.PASSED, HEADER)
            b.clock.advance(35 * DAY)  # unseen for exactly max_age: kept
            expect(await g.check(request(instance="b")), Outcome.KNOWN, "DUNNO")
            b.clock.advance(35 * DAY + 1)  # unseen for longer: as if never seen
            expect(await g.check(request(instance="c")), Outcome.NEW, DEFER)

    asyncio.run(scenario())


def test_ttls_only_collect_garbage_beyond_the_logical_lifetime(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        async with bed(redis_server) as b:
            g = b.host()
            await g.check(request())
            [(key, (value, ttl))] = (await b.keys()).items()
            assert key.startswith("pwtest:grey:triplet:")
            assert value == "1700000000,1700000000"
            assert 2 * DAY < ttl <= 2 * DAY + TTL_MARGIN
            b.clock.advance(300)
            await g.check(request())
            keys = await b.keys()
            assert keys[key][0] == "1700000000,1700000300"
            assert 35 * DAY < keys[key][1] <= 35 * DAY + TTL_MARGIN
            client = keys["pwtest:grey:client:192.0.2.7"]
            assert client[0] == "1,1700000300" and 35 * DAY < client[1] <= 35 * DAY + TTL_MARGIN
            # No address or sender is stored in the clear, only in the client counter's key.
            assert not any("sender" in k or "example" in k for k in keys)

    asyncio.run(scenario())


# --------------------------------------------------------------------------------------------
# Auto-whitelisting of clients


def test_auto_whitelist_after_five_passes_an_hour_apart(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        async with bed(redis_server) as b:
            g = b.host()

            async def deliver(n: int) -> GreylistResult:
                first = await g.check(request(sender=f"user{chr(97 + n)}@s.test"))
                assert first.outcome == Outcome.NEW
                b.clock.advance(300)
                return await g.check(request(sender=f"user{chr(97 + n)}@s.test"))

            for n in range(4):
                if n:
                    b.clock.advance(3600)
                expect(await deliver(n), Outcome.PASSED, HEADER)
            # A pass within the hour of the last counted one does not count...
            expect(await deliver(4), Outcome.PASSED, HEADER)
            expect(await g.check(request(sender="fresh@s.test")), Outcome.NEW, DEFER)
            b.clock.advance(3600)
            expect(await deliver(5), Outcome.PASSED, HEADER)  # ...this one is the fifth
            # Now any mail from this client address passes at once, even a new triplet.
            r = await g.check(request(sender="never-seen@elsewhere.test"))
            expect(r, Outcome.AUTO_WHITELISTED, "DUNNO")
            assert r.reason == "client AWL"
            # The address, not its /24: a neighbour is still greylisted.
            expect(await g.check(request(client_address="192.0.2.8", sender="z@s.test")),
                   Outcome.NEW, DEFER)
            # Unseen for longer than max_age, the client loses its place.
            b.clock.advance(35 * DAY + 1)
            expect(await g.check(request(sender="after@s.test")), Outcome.NEW, DEFER)

    asyncio.run(scenario())


def test_auto_whitelist_can_be_turned_off(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        async with bed(redis_server) as b:
            g = b.host(replace(SETTINGS, auto_whitelist_clients=0))
            for n in range(7):
                await g.check(request(sender=f"u{n}@s.test"))
                b.clock.advance(300)
                assert (await g.check(request(sender=f"u{n}@s.test"))).outcome == Outcome.PASSED
                b.clock.advance(3600)
            expect(await g.check(request(sender="new@s.test")), Outcome.NEW, DEFER)
            assert not any(":client:" in k for k in await b.keys())

    asyncio.run(scenario())


# --------------------------------------------------------------------------------------------
# What makes two requests one triplet


@pytest.mark.parametrize(("settings", "first", "again", "other"), [
    (SETTINGS, "192.0.2.7", "192.0.2.200", "192.0.3.7"),
    (SETTINGS, "2001:db8:1:2::25", "2001:db8:1:2:ffff::9", "2001:db8:1:3::25"),
    (replace(SETTINGS, ipv4cidr=16), "198.51.7.7", "198.51.200.1", "198.52.0.1"),
    (replace(SETTINGS, ipv6cidr=48), "2001:db8:1:2::25", "2001:db8:1:ffff::9", "2001:db8:2::1"),
    (replace(SETTINGS, lookup_by_subnet=False), "192.0.2.7", "192.0.2.7", "192.0.2.8"),
])
def test_clients_fold_into_subnets(redis_server: RedisServer, settings: GreylistSettings,
                                   first: str, again: str, other: str) -> None:
    async def scenario() -> None:
        async with bed(redis_server) as b:
            g = b.host(settings)
            await g.check(request(client_address=first))
            b.clock.advance(300)
            expect(await g.check(request(client_address=other)), Outcome.NEW, DEFER)
            expect(await g.check(request(client_address=again)), Outcome.PASSED, HEADER)

    asyncio.run(scenario())


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


def test_normalised_senders_share_a_triplet(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        async with bed(redis_server) as b:
            g = b.host()
            pairs = [("prvs=1234567890=Bob@Batv.test", "prvs=0987654321=bob@batv.TEST"),
                     ("list+bounces-77@l.test", "list+bounces-78@l.test"),
                     ("bounce-1-2@v.test", "bounce-3-4@v.test")]
            for a, _ in pairs:
                await g.check(request(sender=a))
            await g.check(request())
            b.clock.advance(300)
            for _, again in pairs:
                assert (await g.check(request(sender=again))).outcome == Outcome.PASSED, again
            # The recipient is taken as it is (only lower-cased): +extensions differ.
            expect(await g.check(request(recipient="Bob+x@example.org")), Outcome.NEW,
                   DEFER)
            expect(await g.check(request(recipient="BOB@EXAMPLE.ORG", instance="m9")),
                   Outcome.PASSED, HEADER)

    asyncio.run(scenario())


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
    {"recipient": "nogrey+tag@example.org"},
], ids=lambda o: "-".join(o.values()))
def test_whitelisted_clients_and_recipients_pass_without_redis(
        redis_server: RedisServer, overrides: dict[str, str]) -> None:
    async def scenario() -> None:
        async with bed(redis_server) as b:
            g = b.host(lists=whitelists())
            redis_server.stop()  # a whitelist needs no Redis at all
            try:
                r = await g.check(request(**overrides))
            finally:
                redis_server.start()
            expect(r, Outcome.WHITELISTED, "DUNNO")
            assert r.reason.startswith(("client whitelist (clients:",
                                        "recipient whitelist (recipients:"))

    asyncio.run(scenario())


def test_two_mx_hosts_share_triplets(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        async with bed(redis_server) as b:
            mx1 = b.host()
            mx2 = b.host(replace(SETTINGS, hostname="mx2.example"))
            expect(await mx1.check(request()), Outcome.NEW, DEFER)
            b.clock.advance(100)
            expect(await mx2.check(request()), Outcome.EARLY_RETRY, DEFER)
            b.clock.advance(200)
            r = await mx2.check(request(instance="on-mx2"))
            expect(r, Outcome.PASSED, HEADER)
            assert " at mx2.example; " in r.action
            expect(await mx1.check(request(instance="on-mx1")), Outcome.KNOWN, "DUNNO")

    asyncio.run(scenario())


def test_racing_mx_hosts_agree(redis_server: RedisServer) -> None:
    """Many concurrent first attempts from two hosts: all deferred, and one first-seen time
    (the retry after delay passes through either host)."""

    async def scenario() -> None:
        async with bed(redis_server) as b:
            mx1, mx2 = b.host(), b.host()
            results = await asyncio.gather(*(h.check(request(instance=str(i)))
                                             for i in range(20) for h in (mx1, mx2)))
            assert {r.action for r in results} == {DEFER}
            [(value, _)] = (await b.keys()).values()
            assert value == "1700000000,1700000000"
            b.clock.advance(300)
            results = await asyncio.gather(mx1.check(request(instance="x")),
                                           mx2.check(request(instance="y")))
            assert sorted(r.outcome for r in results) == [Outcome.KNOWN, Outcome.PASSED]

    asyncio.run(scenario())


def test_clock_skew_between_hosts_is_corrected_as_postgrey_does(
        redis_server: RedisServer) -> None:
    async def scenario() -> None:
        async with bed(redis_server) as b:
            ahead = b.host()
            behind = b.host()
            behind.clock = FakeClock(start=b.clock.time() - 1000)  # 1000 s slow
            await ahead.check(request())
            # First seen "in the future" for the slow host: postgrey takes it as now.
            expect(await behind.check(request()), Outcome.NEW, DEFER)
            [(value, _)] = (await b.keys()).values()
            assert value == "1699999000,1699999000"

    asyncio.run(scenario())


def test_redis_down_raises_store_unavailable_and_is_counted(redis_server: RedisServer) -> None:
    async def scenario() -> Metrics:
        async with bed(redis_server) as b:
            metrics = Metrics("policyd")
            g = b.host(metrics=metrics)
            redis_server.stop()
            try:
                with pytest.raises(StoreUnavailable, match="greylist"):
                    await g.check(request())
            finally:
                redis_server.start()
            expect(await g.check(request()), Outcome.NEW, DEFER)  # back: same client works
            return metrics

    metrics = asyncio.run(scenario())
    errors = sum(metrics.value("postward_policyd_redis_errors_total",
                               {"op": "greylist", "error": e})
                 for e in ("ConnectionError", "TimeoutError"))
    assert errors == 1
    assert metrics.value("postward_policyd_greylist_outcomes_total", {"outcome": "new"}) == 1


@pytest.mark.parametrize(("drop", "overrides"), [
    ("recipient", {}),
    ("client_name", {}),
    (None, {"client_address": "not-an-ip"}),
])
def test_incomplete_requests_get_dunno(redis_server: RedisServer, drop: str | None,
                                       overrides: dict[str, str]) -> None:
    async def scenario() -> None:
        async with bed(redis_server) as b:
            g = b.host()
            r = request(**overrides)
            if drop:
                del r[drop]
            expect(await g.check(r), Outcome.INCOMPLETE, "DUNNO")
            assert await b.keys() == {}

    asyncio.run(scenario())


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
