"""Words and OSB pairs of normalized text: the tokenizer's inner loops.

The rules (what a word is, which are kept, what an OSB pair is) are in the ``tokenizer``
module docstring. Here is how they are computed fast, each step as a C-level pass where one
exists: ASCII text is split with ``str.translate`` plus ``str.split``; other text with one
regex (``\\w+``, or a CJK-aware one when Han or kana is present). The usual text has no
overlong word, which one ``max(map(len, ...))`` tells, and then a single length filter is
left. OSB pairs are made by ``map(str.join, zip(...))``, a chunk of words at a time, with
the token cap checked between chunks.
"""

from __future__ import annotations

import re
import unicodedata
from types import MappingProxyType

__all__ = ["CHUNK", "add_osb", "full", "normalize", "split_words"]

CHUNK = 2048  # words per OSB batch; the token cap is checked between batches

_WORD = re.compile(r"\w+")  # "_" is replaced by a space first: [^\W_]+ is slower
# For ASCII text the same words come from str.translate + str.split: every ASCII character
# that is not a letter or digit becomes a space.
_ASCII_SEPARATORS = MappingProxyType(
    {i: " " for i in range(128) if not chr(i).isalnum()}
)
# Han, kana and CJK compatibility ideographs: written without spaces, one word per character.
_CJK_CHARS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_CJK = re.compile(f"[{_CJK_CHARS}]")
# Each Han/kana character alone, other words whole. 5x faster than spacing the CJK characters
# out with re.sub, but 3x slower than \w+ on other scripts, so used only when CJK is present.
_WORD_OR_CJK = re.compile(f"[{_CJK_CHARS}]|[^\\W_{_CJK_CHARS}]+")


def full(out: list[str], limit: int) -> bool:
    """Whether ``out`` holds ``limit`` distinct tokens. Tokens are collected in a plain list
    (one hash insert per token, at the end); this deduplicates in place only when the list
    is long enough to possibly reach the cap."""
    if len(out) < limit:
        return False
    out[:] = dict.fromkeys(out)
    return len(out) >= limit


def normalize(text: str) -> str:
    """NFKC, then lower case."""
    return unicodedata.normalize("NFKC", text).lower()


def split_words(text: str, low: int, high: int) -> tuple[list[str], list[str]]:
    """The words of normalized ``text`` from ``low`` to ``high`` characters long (and lone
    CJK characters), and the skip tokens of the overlong ones."""
    if text.isascii():  # the common case: C-level split, 4-5x faster than the regex
        found = text.translate(_ASCII_SEPARATORS).split()
        has_cjk = False
    elif _CJK.search(text) is not None:
        found = _WORD_OR_CJK.findall(text)
        has_cjk = True
    else:
        found = _WORD.findall(text.replace("_", " ") if "_" in text else text)
        has_cjk = False
    if has_cjk and low > 1:  # a lone character from U+3040 on is a CJK word (or Hangul, Yi..)
        words = [w for w in found if low <= len(w) <= high or (len(w) == 1 and w >= "\u3040")]
    elif max(map(len, found), default=0) <= high:  # the common case: no overlong word
        return [w for w in found if len(w) >= low], []
    else:
        words = [w for w in found if low <= len(w) <= high]
    skipped = [f"skip:{w[0]}:{len(w) // 10 * 10}" for w in found if len(w) > high]
    return words, skipped


def add_osb(out: list[str], words: list[str], window: int, limit: int, prefix: str = "") -> None:
    """Unigrams and distance-tagged pairs, a chunk at a time until ``limit`` is reached.
    The pairs are built by ``map(str.join, zip(...))``: no Python-level loop per token."""
    if prefix:
        words = [prefix + w for w in words]
    separators = [f"~{j}~" for j in range(1, window)]
    cut = len(prefix)
    for start in range(0, len(words), CHUNK):
        stop = start + CHUNK
        chunk = words[start:stop]
        out += chunk
        for j, sep in enumerate(separators, 1):
            right = words[start + j : stop + j]
            if cut:
                right = [w[cut:] for w in right]
            out += map(sep.join, zip(chunk, right, strict=False))  # the last j have no pair
        if full(out, limit):
            return
