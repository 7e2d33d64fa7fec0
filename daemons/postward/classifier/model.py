"""The statistics: Robinson's per-token probability, Fisher's chi-square combining.

As bogofilter and SpamBayes do it (Gary Robinson, "A Statistical Approach to the Spam
Problem", 2003):

* a token seen ``b`` times in ``nb`` spam messages and ``g`` times in ``ng`` ham messages has
  ``p = (b/nb) / (b/nb + g/ng)``; with little evidence it is pulled towards ``x`` (an unknown
  token's spamminess) by ``f = (s*x + n*p) / (s + n)``, ``n = b + g``;
* only tokens whose ``f`` stands at least ``min_dev`` from 0.5 are evidence: all of them, as
  bogofilter does (``max_evidence`` can cap them at the strongest N, as SpamBayes does);
* ``S = 1 - chi2Q(-2 Σ w ln(1-f), 2 Σ w)`` says how strongly the evidence points to spam,
  ``H = 1 - chi2Q(-2 Σ w ln f, 2 Σ w)`` to ham; the verdict is ``I = (1 + S - H) / 2``: near 1
  spam, near 0 ham, near 0.5 when the evidence is absent or contradicts itself.

The weight ``w`` is 1 for a unigram (and every other token) and ``pair_weight`` for an OSB
pair (a token with ``~`` in it; the tokenizer puts ``~`` in no other token). Fisher's method
assumes independent evidence, and a pair is anything but independent of its two words: "click
here" is spammy mostly because "click" is. Counted in full, the ~2 pairs per word outvote the
words, and with a few hundred tokens both S and H reach 1 and I sticks at 0.5 (the old default,
window 5 and every pair at weight 1, scored many spam there). Weighting a pair as a fraction
of a token scales both its log-probability and its degrees of freedom (bogofilter's "effective
size factor", per token class), so a pair still tips a message its words leave undecided. The
weights make the degrees of freedom fractional, hence the regularized incomplete gamma
function below rather than the integer-only chi-square series; it is also computed without
underflow, which the series (``exp(-x2/2)`` first) did not do past a few hundred tokens.

Pure functions on counts: the store fetches them, this module decides.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import compress, count, repeat
from operator import itemgetter, mul

SPAM, INNOCENT, UNSURE = "spam", "innocent", "unsure"
PAIR_MARK = "~"  # in an OSB pair ("click~1~here") and in no other token


@dataclass(frozen=True)
class ModelSettings:
    robs: float = 0.005         # Robinson's s: the weight of the prior
    robx: float = 0.52          # Robinson's x: an unseen token's spamminess (bogofilter's)
    min_dev: float = 0.3        # |f - 0.5| a token needs to count as evidence
    max_evidence: int = 0       # 0: every token past min_dev (bogofilter); N: the N strongest
    pair_weight: float = 0.1    # an OSB pair's weight in Fisher's sums (a unigram's is 1)
    spam_cutoff: float = 0.95   # I at or above: spam
    ham_cutoff: float = 0.05    # I at or below: innocent; between: unsure (if unsure is on)
    unsure: bool = False        # without an unsure band, everything below spam_cutoff is ham
    factors: int = 15           # tokens reported in X-DSPAM-Factors


@dataclass(frozen=True)
class Counts:
    """Training totals: messages learnt as spam and as ham."""

    spam: int
    ham: int


@dataclass(frozen=True)
class Verdict:
    result: str                             # spam / innocent / unsure
    probability: float                      # I, 0..1
    confidence: float                       # how far from the cut-off, 0..1
    factors: tuple[tuple[str, float], ...]  # (token, f) most significant first
    evidence: int                           # tokens that counted


def token_probability(spam_hits: int, ham_hits: int, totals: Counts,
                      settings: ModelSettings) -> float:
    """Robinson's f for one token."""
    n = spam_hits + ham_hits
    if n == 0 or totals.spam == 0 or totals.ham == 0:
        p = settings.robx
    else:
        spam_ratio = spam_hits / totals.spam
        ham_ratio = ham_hits / totals.ham
        p = spam_ratio / (spam_ratio + ham_ratio)
    s = settings.robs
    return (s * settings.robx + n * p) / (s + n)


_EPS = 1e-15
_TINY = 1e-300
_MAX_STEPS = 10_000  # never reached: the series and the fraction converge in O(sqrt(a)) steps


def gamma_q(a: float, x: float) -> float:
    """The regularized upper incomplete gamma function Q(a, x) = Γ(a, x) / Γ(a), a > 0.

    The power series of P = 1 - Q below x = a + 1, Lentz's continued fraction for Q above
    (Numerical Recipes, 6.2). The common factor ``exp(-x) x^a / Γ(a)`` is taken in logs, so
    large arguments give a tiny Q or a P close to 1, not an overflow or a 0/0."""
    if x <= 0.0:
        return 1.0
    log_front = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1.0:
        term = total = 1.0 / a
        denominator = a
        for _ in range(_MAX_STEPS):
            denominator += 1.0
            term *= x / denominator
            total += term
            if term < total * _EPS:
                break
        return min(1.0, max(0.0, 1.0 - total * math.exp(log_front)))
    b = x + 1.0 - a
    c = 1.0 / _TINY
    d = 1.0 / b
    h = d
    for i in range(1, _MAX_STEPS):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = d if abs(d) > _TINY else _TINY
        c = b + an / c
        c = c if abs(c) > _TINY else _TINY
        d = 1.0 / d
        step = d * c
        h *= step
        if abs(step - 1.0) < _EPS:
            break
    return min(1.0, max(0.0, math.exp(log_front) * h))


def chi2q(x2: float, degrees: float) -> float:
    """P(chi-square with ``degrees`` degrees of freedom >= x2); ``degrees`` may be fractional."""
    return gamma_q(degrees / 2.0, x2 / 2.0)


def combine(probabilities: Sequence[float], weights: Sequence[float] | None = None) -> float:
    """Fisher/Robinson combining of token probabilities (each with a weight, 1 if none) into I.

    ``I = (1 + S - H) / 2`` is computed as ``(1 + Qh - Qs) / 2`` with ``S = 1 - Qs`` and
    ``H = 1 - Qh``: the same number, but two tiny tail probabilities keep their difference
    where ``1 - Q`` would round both to 1."""
    if not probabilities:
        return 0.5
    if weights is None:
        weights = [1.0] * len(probabilities)
    pairs = list(zip(probabilities, weights, strict=True))
    return _fisher(2.0 * sum(weights),
                   [w * _log_floor(1.0 - f) for f, w in pairs],
                   [w * _log_floor(f) for f, w in pairs])


def _log_floor(x: float) -> float:
    return math.log(max(1e-200, x))


def _fisher(dof: float, spam_terms: list[float], ham_terms: list[float]) -> float:
    """I from the degrees of freedom and each token's ``w ln(1-f)`` and ``w ln f``.

    The terms are summed by sum() in evidence order, as they always were: the same floats,
    bit for bit, whether classify() or combine() computed them."""
    if dof <= 0.0:
        return 0.5
    q_spam = chi2q(-2.0 * sum(spam_terms), dof)
    q_ham = chi2q(-2.0 * sum(ham_terms), dof)
    return min(1.0, max(0.0, (1.0 + q_ham - q_spam) / 2.0))


def token_weight(token: str, settings: ModelSettings) -> float:
    """A token's weight in Fisher's sums: ``pair_weight`` for an OSB pair, else 1."""
    return settings.pair_weight if PAIR_MARK in token else 1.0


_UNSEEN = object()
_NEG_DEVIATION, _LN_NOT_F, _LN_F = itemgetter(0), itemgetter(2), itemgetter(3)

# One count pair's part in a verdict: None when a token with these counts is no evidence,
# else (-deviation, f, ln(1 - f), ln f), floored as combine() floors them.
Evidence = tuple[float, float, float, float] | None


def classify(tokens: Sequence[str], hits: Sequence[tuple[int, int]], totals: Counts,
             settings: ModelSettings,
             memo: dict[tuple[int, int], Evidence] | None = None) -> Verdict:
    """The verdict for a message whose ``tokens`` have ``hits`` = (spam, ham) counts each.

    What token_probability() and combine() compute, token for token, with the same operations
    in the same order (so the same floats, bit for bit), but faster: a message's ~400 tokens
    share ~200 distinct count pairs (most tokens were seen a few times), so each pair's f and
    logarithms are computed once, and the per-token work is done by C loops (map, zip,
    compress, sort) rather than Python bytecode. ``memo`` (count pair -> :data:`Evidence`)
    carries those results from message to message; it is only valid for one ``totals`` and
    one ``settings``, so its owner keeps one per pair of totals (service.Classifier does)."""
    if len(tokens) != len(hits):
        raise ValueError("one count pair per token")
    if memo is None:
        memo = {}
    entries = list(map(memo.get, hits, repeat(_UNSEEN)))
    if _UNSEEN in entries:
        unseen = {c for c, e in zip(hits, entries, strict=True) if e is _UNSEEN}
        _learn_evidence(unseen, totals, settings, memo)
        entries = list(map(memo.__getitem__, hits))
    # The evidence, ordered as (-deviation, token) was; the index keeps equal keys in input
    # order, as the stable sort did, and the sort never reaches the floats after it.
    kept = list(compress(zip(entries, tokens, count()), entries))
    if kept:
        found, names, where = zip(*kept, strict=True)
        scored = sorted(zip(map(_NEG_DEVIATION, found), names, where, found, strict=True))
    else:
        scored = []
    evidence = scored[: settings.max_evidence] if settings.max_evidence > 0 else scored
    if evidence:
        pair_weight = settings.pair_weight
        weights = [pair_weight if PAIR_MARK in t else 1.0 for _d, t, _i, _e in evidence]
        chosen = [e for _d, _t, _i, e in evidence]
        probability = _fisher(2.0 * sum(weights),
                              list(map(mul, weights, map(_LN_NOT_F, chosen))),
                              list(map(mul, weights, map(_LN_F, chosen))))
    else:
        probability = 0.5
    if probability >= settings.spam_cutoff:
        result, edge = SPAM, settings.spam_cutoff
    elif settings.unsure and probability > settings.ham_cutoff:
        result, edge = UNSURE, settings.spam_cutoff
    else:
        result, edge = INNOCENT, settings.ham_cutoff if settings.unsure else settings.spam_cutoff
    confidence = _confidence(probability, result, edge)
    factors = tuple((t, e[1]) for _d, t, _i, e in evidence[: settings.factors])
    return Verdict(result, probability, confidence, factors, len(evidence))


def _learn_evidence(pairs: Iterable[tuple[int, int]], totals: Counts, settings: ModelSettings,
                    memo: dict[tuple[int, int], Evidence]) -> None:
    """Each count pair's :data:`Evidence` into ``memo``: token_probability() and combine()'s
    logarithms, once per pair (the memo makes the calls rare: a stream of messages meets a
    few thousand distinct pairs)."""
    min_dev = settings.min_dev
    for counts in pairs:
        spam_hits, ham_hits = counts
        entry: Evidence = None
        if spam_hits + ham_hits > 0:   # a token never seen is no evidence, whatever its f
            f = token_probability(spam_hits, ham_hits, totals, settings)
            deviation = abs(f - 0.5)
            if deviation >= min_dev:
                entry = (-deviation, f, _log_floor(1.0 - f), _log_floor(f))
        memo[counts] = entry


def _confidence(probability: float, result: str, edge: float) -> float:
    """0 at the cut-off the verdict had to pass, 1 at the far end (dspam's Confidence)."""
    if result == SPAM:
        span = 1.0 - edge
        return 1.0 if span <= 0 else min(1.0, max(0.0, (probability - edge) / span))
    if result == INNOCENT:
        return 1.0 if edge <= 0 else min(1.0, max(0.0, (edge - probability) / edge))
    return 0.0
