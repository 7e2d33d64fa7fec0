"""The statistics, checked against worked values and the properties Robinson's method has."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postward.classifier.model import (
    INNOCENT,
    SPAM,
    UNSURE,
    Counts,
    ModelSettings,
    chi2q,
    classify,
    combine,
    token_probability,
)

S = ModelSettings()


def test_chi2q_matches_the_closed_form() -> None:
    # For 2 degrees of freedom the survival function is exp(-x/2).
    for x in (0.0, 0.5, 3.0, 10.0):
        assert chi2q(x, 2) == pytest.approx(math.exp(-x / 2))
    # For 4: exp(-x/2) * (1 + x/2).
    assert chi2q(6.0, 4) == pytest.approx(math.exp(-3) * 4)


def test_token_probability_follows_robinson() -> None:
    totals = Counts(spam=100, ham=100)
    # Never seen: the prior x.
    assert token_probability(0, 0, totals, S) == pytest.approx(S.robx)
    # Seen in 10 spam, no ham: p = 1, pulled towards x by s/(s+n).
    f = token_probability(10, 0, totals, S)
    assert f == pytest.approx((S.robs * S.robx + 10 * 1.0) / (S.robs + 10))
    # Ratios, not raw counts: 10 of 100 spam vs 10 of 1000 ham leans spam.
    assert token_probability(10, 10, Counts(100, 1000), S) > 0.9


def test_combining_is_symmetric_and_neutral_without_evidence() -> None:
    assert combine([]) == 0.5
    assert combine([0.5, 0.5]) == pytest.approx(0.5)
    assert combine([0.99] * 20) > 0.99
    assert combine([0.01] * 20) < 0.01
    probs = [0.9, 0.2, 0.97, 0.4]
    assert combine(probs) == pytest.approx(1 - combine([1 - p for p in probs]))


@settings(max_examples=200, derandomize=True)
@given(st.lists(st.floats(min_value=0.001, max_value=0.999), max_size=200))
def test_combined_probability_is_a_probability(probs: list[float]) -> None:
    assert 0.0 <= combine(probs) <= 1.0


def test_verdicts_and_factors() -> None:
    totals = Counts(spam=50, ham=50)
    tokens = ["viagra", "cheap", "meeting", "hello"]
    spammy = classify(tokens, [(40, 0), (30, 1), (0, 0), (5, 5)], totals, S)
    assert spammy.result == SPAM and spammy.probability >= S.spam_cutoff
    assert [t for t, _f in spammy.factors] == ["viagra", "cheap"]   # 'hello' is no evidence
    hammy = classify(tokens, [(0, 40), (1, 30), (0, 20), (5, 5)], totals, S)
    assert hammy.result == INNOCENT and hammy.probability < 0.05
    nothing = classify(tokens, [(0, 0)] * 4, totals, S)
    assert (nothing.result, nothing.probability, nothing.evidence) == (INNOCENT, 0.5, 0)


def test_unsure_band() -> None:
    with_unsure = ModelSettings(unsure=True)
    mixed = classify(["a", "b"], [(20, 0), (0, 20)], Counts(50, 50), with_unsure)
    assert mixed.result == UNSURE and mixed.confidence == 0.0
