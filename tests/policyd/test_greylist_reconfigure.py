"""A reload (SIGHUP) hands the greylister new settings: the next decision uses them, through
the script's arguments as well as in the answer's text."""

from __future__ import annotations

from dataclasses import replace

import pytest

from postward.policyd.greylist import Outcome
from postward.policyd.greylist_lists import GreylistLists
from postward.policyd.greylist_settings import Seconds
from tests.policyd.test_greylist import DEFER, HEADER, SETTINGS, Bed, bed, expect, on_bed, request

pytestmark = pytest.mark.integration
__all__ = ["bed"]  # the fixture, used by name


@on_bed
async def test_a_shorter_delay_applies_from_the_next_request(bed: Bed) -> None:
    g = bed.host()
    expect(await g.check(request()), Outcome.NEW, DEFER)
    bed.clock.advance(120)
    expect(await g.check(request(sender="other@sender.test")), Outcome.NEW, DEFER)
    g.reconfigure(replace(SETTINGS, delay=Seconds(60), hostname="mx9.example"), GreylistLists())
    bed.clock.advance(1)
    # 121 s after first sight: too early with delay 300, past the new 60 s.
    r = await g.check(request(instance="after-reload"))
    expect(r, Outcome.PASSED, HEADER)
    m = HEADER.fullmatch(r.action)
    assert m is not None and m.groups()[:2] == ("121", "mx9.example")


@on_bed
async def test_turning_the_auto_whitelist_off_by_reload(bed: Bed) -> None:
    g = bed.host(replace(SETTINGS, auto_whitelist_clients=1))
    expect(await g.check(request()), Outcome.NEW, DEFER)
    bed.clock.advance(300)
    expect(await g.check(request()), Outcome.PASSED, HEADER)  # 1 pass: auto-whitelisted
    bed.clock.advance(60)
    expect(await g.check(request(sender="carol@sender.test")), Outcome.AUTO_WHITELISTED,
           "DUNNO")
    g.reconfigure(replace(SETTINGS, auto_whitelist_clients=0), GreylistLists())
    expect(await g.check(request(sender="dave@sender.test")), Outcome.NEW, DEFER)
