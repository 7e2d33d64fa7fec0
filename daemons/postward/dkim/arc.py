"""ARC (RFC 8617): checking the chain on incoming mail, and sealing it on hosts that forward.

dkimpy implements ARC only on a message held whole in memory, so for ARC the body is kept in a
spool file as it streams (in memory up to 1 MB, then on disk in TemporaryDirectory) and read
back at end of message. Messages larger than ``[dkim] arc_max_message_size`` are passed without
ARC processing (counted in ``postward_dkim_arc_total{result="skipped"}``); DKIM signing and
verification never hold the body, whatever its size.

Sealing adds ARC-Authentication-Results (a copy of our Authentication-Results, including the
``arc=`` verdict on the chain so far, from which the seal's ``cv=`` follows),
ARC-Message-Signature and ARC-Seal for instance i = n + 1. Seals are RSA-SHA256, the only
algorithm RFC 8617 defines.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import IO

import dkim

from postward.dkim.keys import PrivateKey
from postward.dkim.verifier import KeyLookup

ARC_FIELDS = (b"arc-seal", b"arc-message-signature", b"arc-authentication-results")
_IN_MEMORY = 1 << 20


@dataclass(frozen=True)
class ArcSealer:
    domain: str
    selector: str
    key: PrivateKey


@dataclass(frozen=True)
class ArcOutcome:
    result: str          # pass, fail, none
    instance: int = 0
    reason: str = ""

    def resinfo(self) -> str:
        """The ``arc=`` part of Authentication-Results (RFC 8617 7)."""
        if self.result == "none":
            return "arc=none"
        reason = self.reason.replace("(", "[").replace(")", "]")
        return f"arc={self.result} (i={self.instance}{'; ' + reason if reason else ''})"


class BodySpool:
    """The body as it streams, up to ``limit`` bytes (beyond: dropped, ``too_big`` set)."""

    def __init__(self, limit: int, directory: str | None = None) -> None:
        # Closed by close(), which the milter calls at end of message whatever happens.
        self._file: IO[bytes] = tempfile.SpooledTemporaryFile(  # noqa: SIM115
            max_size=_IN_MEMORY, dir=directory)
        self._limit = limit
        self.size = 0
        self.too_big = False

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self._limit:
            if not self.too_big:
                self.too_big = True
                self._file.close()
            return
        self._file.write(chunk)

    def read(self) -> bytes:
        self._file.seek(0)
        return self._file.read()

    def close(self) -> None:
        self._file.close()


def has_arc(fields: list[tuple[bytes, bytes]]) -> bool:
    return any(name.lower() in ARC_FIELDS for name, _v in fields)


def dnsfunc_from(lookup: KeyLookup):  # type: ignore[no-untyped-def]
    """dkimpy's ``dnsfunc(name, timeout)`` on top of postward's key lookup."""

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        answer = lookup(name.decode("ascii", "replace").rstrip("."))
        return answer.records[0].encode() if answer.records else None

    return dnsfunc


def whole_message(fields: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    return b"".join(n + b":" + v for n, v in fields) + b"\r\n" + body


def verify_chain(message: bytes, lookup: KeyLookup, minimum_bits: int) -> ArcOutcome:
    cv, results, reason = dkim.arc_verify(message, dnsfunc=dnsfunc_from(lookup),
                                          minkey=minimum_bits)
    instance = max((r.get("instance", 0) for r in results), default=0)
    if cv == dkim.CV_Pass:
        return ArcOutcome("pass", instance)
    if cv == dkim.CV_None and not results:
        return ArcOutcome("none")
    return ArcOutcome("fail", instance, str(reason)[:120])


def seal(message: bytes, sealer: ArcSealer, authserv_id: str,
         timestamp: int) -> list[tuple[str, bytes]]:
    """The three ARC fields (name, value with LF folding) to add; ``message`` must already carry
    our Authentication-Results with its ``arc=`` result."""
    lines = dkim.arc_sign(message, sealer.selector.encode(), sealer.domain.encode(),
                          sealer.key.to_pem(), authserv_id.encode(), timestamp=timestamp)
    fields = []
    for line in lines:
        name, _, value = line.partition(b":")
        fields.append((name.decode("ascii"), value.rstrip(b"\r\n").replace(b"\r\n", b"\n")))
    return fields
