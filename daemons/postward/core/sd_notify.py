"""Telling systemd how a daemon is doing (sd_notify(3)), without libsystemd.

The units are ``Type=notify``: systemd counts a daemon as started when it sends ``READY=1``,
which each daemon does once its listening socket is bound, so Postfix (ordered after the units)
never meets a refused connection. ``STOPPING=1`` when it starts draining, ``RELOADING=1`` then
``READY=1`` around a reload, ``STATUS=`` for ``systemctl status``.

The protocol is one datagram of newline-separated ``KEY=value`` lines to the unix socket named
in ``$NOTIFY_SOCKET`` (``@name``: an abstract socket). Without that variable (not started by
systemd, or by a unit of another type) every call is a no-op, and a failed send is never an
error: a daemon must not stop serving mail because its supervisor went away.
"""

from __future__ import annotations

import os
import socket

READY = "READY=1"
RELOADING = "RELOADING=1"
STOPPING = "STOPPING=1"


def status(text: str) -> str:
    """A ``STATUS=`` line (one line: a newline would start a new assignment)."""
    return "STATUS=" + " ".join(text.split())


def notify(*lines: str) -> bool:
    """Send ``lines`` (``READY``, ``status("...")``, ...) in one datagram; True if it went out."""
    address = _address(os.environ.get("NOTIFY_SOCKET", ""))
    if address is None or not lines:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall("\n".join(lines).encode("utf-8", "replace"))
        return True
    except OSError:
        return False


def forget() -> None:
    """Drop ``$NOTIFY_SOCKET`` from this process (a forked worker: only the main process
    speaks for the unit, and systemd ignores the others under ``NotifyAccess=main``)."""
    os.environ.pop("NOTIFY_SOCKET", None)


def _address(name: str) -> str | None:
    if name.startswith("@"):
        return "\0" + name[1:]  # Linux's abstract namespace: a leading NUL, no file
    if name.startswith("/"):
        return name
    return None  # unset, or a kind of address this module does not speak (vsock:)
