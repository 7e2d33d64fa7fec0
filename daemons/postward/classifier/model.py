"""The statistics: Robinson's per-token probability, Fisher's chi-square combining.

As bogofilter and SpamBayes do it (Gary Robinson, "A Statistical Approach to the Spam
Problem", 2003):

* a token seen ``b`` times in ``nb`` spam messages and ``g`` times in ``ng`` ham messages has
  ``p = (b/nb) / (b/nb + g/ng)``; with little evidence it is pulled towards ``x`` (an unknown
  token's spamminess) by ``f = (s*x + n*p) / (s + n)``, ``n = b + g``;
* only tokens whose ``f`` stands at least ``min_dev`` from 0.5 are evidence;
* ``S = 1 - chi2Q(-2 Σ ln(1-f), 2k)`` says how strongly the evidence points to spam,
  ``H = 1 - chi2Q(-2 Σ ln f, 2k)`` to ham; the verdict is ``I = (1 + S - H) / 2``: near 1 spam,
  near 0 ham, near 0.5 when the evidence is absent or contradicts itself (the "unsure" band).

Pure functions on counts: the store fetches them, this module decides.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

SPAM, INNOCENT, UNSURE = "spam", "innocent", "unsure"


@dataclass(frozen=True)
class ModelSettings:
    robs: float = 0.0178        # Robinson's s: the weight of the prior (bogofilter's default)
    robx: float = 0.52          # Robinson's x: an unseen token's spamminess (bogofilter's)
    min_dev: float = 0.1        # |f - 0.5| a token needs to count as evidence
    max_evidence: int = 150     # most significant tokens used (SpamBayes uses 150)
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


def chi2q(x2: float, degrees: int) -> float:
    """P(chi-square with ``degrees`` (even) degrees of freedom >= x2)."""
    m = x2 / 2.0
    term = math.exp(-m)
    total = term
    for i in range(1, degrees // 2):
        term *= m / i
        total += term
    return min(total, 1.0)


def combine(probabilities: Sequence[float]) -> float:
    """Fisher/Robinson combining of token probabilities into I."""
    if not probabilities:
        return 0.5
    k = len(probabilities)
    ln_spam = sum(math.log(max(1e-200, 1.0 - f)) for f in probabilities)
    ln_ham = sum(math.log(max(1e-200, f)) for f in probabilities)
    spamminess = 1.0 - chi2q(-2.0 * ln_spam, 2 * k)
    hamminess = 1.0 - chi2q(-2.0 * ln_ham, 2 * k)
    return (1.0 + spamminess - hamminess) / 2.0


def classify(tokens: Sequence[str], hits: Sequence[tuple[int, int]], totals: Counts,
             settings: ModelSettings) -> Verdict:
    """The verdict for a message whose ``tokens`` have ``hits`` = (spam, ham) counts each."""
    scored = []
    for token, (spam_hits, ham_hits) in zip(tokens, hits, strict=True):
        f = token_probability(spam_hits, ham_hits, totals, settings)
        deviation = abs(f - 0.5)
        if deviation >= settings.min_dev and spam_hits + ham_hits > 0:
            scored.append((deviation, token, f))
    scored.sort(key=lambda item: (-item[0], item[1]))
    evidence = scored[: settings.max_evidence]
    probability = combine([f for _d, _t, f in evidence])
    if probability >= settings.spam_cutoff:
        result, edge = SPAM, settings.spam_cutoff
    elif settings.unsure and probability > settings.ham_cutoff:
        result, edge = UNSURE, settings.spam_cutoff
    else:
        result, edge = INNOCENT, settings.ham_cutoff if settings.unsure else settings.spam_cutoff
    confidence = _confidence(probability, result, edge)
    factors = tuple((t, f) for _d, t, f in evidence[: settings.factors])
    return Verdict(result, probability, confidence, factors, len(evidence))


def _confidence(probability: float, result: str, edge: float) -> float:
    """0 at the cut-off the verdict had to pass, 1 at the far end (dspam's Confidence)."""
    if result == SPAM:
        span = 1.0 - edge
        return 1.0 if span <= 0 else min(1.0, max(0.0, (probability - edge) / span))
    if result == INNOCENT:
        return 1.0 if edge <= 0 else min(1.0, max(0.0, (edge - probability) / edge))
    return 0.0
