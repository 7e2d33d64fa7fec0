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
    gamma_q,
    token_probability,
)

S = ModelSettings()


def test_chi2q_matches_the_closed_form() -> None:
    # For 2 degrees of freedom the survival function is exp(-x/2).
    for x in (0.0, 0.5, 3.0, 10.0):
        assert chi2q(x, 2) == pytest.approx(math.exp(-x / 2))
    # For 4: exp(-x/2) * (1 + x/2).
    assert chi2q(6.0, 4) == pytest.approx(math.exp(-3) * 4)


def test_chi2q_with_fractional_and_many_degrees_of_freedom() -> None:
    # One degree of freedom: P(Z^2 >= x) = erfc(sqrt(x / 2)).
    for x in (0.01, 0.7, 4.0, 30.0):
        assert chi2q(x, 1) == pytest.approx(math.erfc(math.sqrt(x / 2)), rel=1e-9)
    # Integer half-degrees against the finite sum, on both sides of the series/fraction switch.
    for k, m in ((3, 0.5), (7, 6.0), (7, 9.0), (40, 35.0), (40, 60.0)):
        direct = math.exp(-m) * sum(m**i / math.factorial(i) for i in range(k))
        assert gamma_q(k, m) == pytest.approx(direct, rel=1e-9)
    # Hundreds of tokens: exp(-x2/2) underflows, the tail probability must not. Around the
    # mean (x2 = degrees) Q is near one half, not 0.
    assert 0.45 < chi2q(3000.0, 3000) < 0.55
    assert chi2q(3000.0, 100) == 0.0 and chi2q(10.0, 3000) == 1.0


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


def test_weights_scale_evidence_and_degrees_of_freedom() -> None:
    probs = [0.9, 0.2, 0.97, 0.4]
    assert combine(probs, [1.0] * 4) == pytest.approx(combine(probs))
    # Weight 2 is the same as the token twice.
    assert combine([0.9, 0.3], [2.0, 1.0]) == pytest.approx(combine([0.9, 0.9, 0.3]))
    assert combine([0.99], [0.0]) == 0.5


def test_a_pair_weighs_a_fraction_of_a_word() -> None:
    """Pairs repeat what their words say (Fisher assumes independent evidence): a handful of
    spammy pairs must not outvote the words of a clearly hammy message."""
    totals = Counts(spam=100, ham=100)
    # Ten hammy words, ten spammy pairs (window 2 gives about one pair per word).
    tokens = [f"h{i}" for i in range(10)] + [f"w{i}~1~w{i + 1}" for i in range(10)]
    hits = [(1, 40)] * 10 + [(3, 0)] * 10
    equal = classify(tokens, hits, totals, ModelSettings(pair_weight=1.0))
    weighted = classify(tokens, hits, totals, S)
    assert S.pair_weight < 1.0
    assert equal.probability == pytest.approx(0.5, abs=0.01)  # S and H both near 1: undecided
    assert weighted.result == INNOCENT and weighted.probability < 0.1


def test_every_token_past_min_dev_counts_unless_capped() -> None:
    totals = Counts(spam=10, ham=10)
    tokens = [f"t{i}" for i in range(400)]
    hits = [(5, 0) if i % 2 else (0, 5) for i in range(400)]
    assert S.max_evidence == 0
    assert classify(tokens, hits, totals, S).evidence == 400
    capped = classify(tokens, hits, totals, ModelSettings(max_evidence=150))
    assert capped.evidence == 150


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
