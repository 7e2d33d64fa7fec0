"""SignHeaders and OversignHeaders: lists of header field names, as OpenDKIM reads them.

A list is a file: or csl: data set of names (never refile:, which OpenDKIM refuses for these).
SignHeaders may extend its default instead of replacing it: when the list holds ``*``, that
stands for the default, ``+Name`` adds a field and ``-Name`` removes one (dkimf_db_mkarray() in
OpenDKIM; a plain name next to ``*`` is ignored there, so postward refuses it). From is always
signed: RFC 6376 requires it, and OpenDKIM adds it when a list leaves it out.
"""

from __future__ import annotations

import re

from postward.core.config_file import Problem
from postward.dkim.datasets import DataSet, fold

# RFC 6376 section 5.4.1's "SHOULD be signed" list, as libopendkim's dkim_should_signhdrs.
DEFAULT_SIGN_HEADERS = (
    "from", "reply-to", "subject", "date", "to", "cc", "resent-date", "resent-from",
    "resent-sender", "resent-to", "resent-cc", "in-reply-to", "references", "list-id",
    "list-help", "list-unsubscribe", "list-subscribe", "list-post", "list-owner", "list-archive",
)
# postward's default (OpenDKIM's is none): the fields whose later addition would most mislead.
DEFAULT_OVERSIGN_HEADERS = ("from", "to", "subject", "date")
_FIELD_NAME = re.compile(r"[!-9;-~]+\Z")  # RFC 5322 ftext


def _problem(key: str, sign: str, text: str, delta: bool) -> str | None:
    if key == "*":
        return None if delta else "'*' (the default list) means nothing here; remove it"
    if sign and not delta:
        return (f"{key!r}: +Name and -Name change the default list, which needs '*' in the "
                f"list too (e.g. *,+Sender); OpenDKIM would read {key!r} as a name")
    if delta and not sign:
        return (f"{key!r}: with '*' in the list a plain name is ignored by OpenDKIM; write "
                f"+{key} to add it")
    if not _FIELD_NAME.match(text):
        return f"{key!r} is not a header field name (printable ASCII without ':' or spaces)"
    return None


def header_names(ds: DataSet, default: tuple[str, ...] | None,
                 problems: list[Problem]) -> tuple[str, ...]:
    """The lower-case names in ``ds``; with a ``default`` (SignHeaders) '*' and +/- apply."""
    delta = default is not None and "*" in ds
    names: list[str] = list(default) if delta and default else []
    for e in ds.entries:
        sign, text = (e.key[0], e.key[1:]) if e.key[:1] in ("+", "-") else ("", e.key)
        problem = _problem(e.key, sign, text, delta)
        if problem:
            problems.append(Problem(e.path, e.line, f"{ds.option}: {problem}"))
        elif sign == "-":
            names = [n for n in names if n != fold(text)]
        elif text != "*" and fold(text) not in names:
            names.append(fold(text))
    return tuple(names)


def sign_and_oversign(sign_ds: DataSet | None, oversign_ds: DataSet | None,
                      problems: list[Problem]) -> tuple[tuple[str, ...], tuple[str, ...],
                                                        list[str]]:
    """(sign, oversign, oversigned fields missing from sign). The default oversign list keeps
    only fields that are signed; an explicit one naming others is the caller's error."""
    sign = header_names(sign_ds, DEFAULT_SIGN_HEADERS, problems) if sign_ds else ()
    sign = sign or DEFAULT_SIGN_HEADERS
    if "from" not in sign:
        sign = ("from", *sign)
    if oversign_ds is None:
        return sign, tuple(h for h in DEFAULT_OVERSIGN_HEADERS if h in sign), []
    oversign = header_names(oversign_ds, None, problems)
    return sign, oversign, [h for h in oversign if h not in sign]
