"""Parsers for the single values of opendkim.conf options; each raises ValueError saying what is
wrong and what to write instead. Where OpenDKIM's reading is odd the docstring says how postward
reads it and why."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Action = Literal["accept", "discard", "quarantine", "reject", "tempfail"]
Canon = Literal["simple", "relaxed"]
SocketKind = Literal["inet", "inet6", "local"]

_TRUE = frozenset({"yes", "true", "1", "y", "t"})
_FALSE = frozenset({"no", "false", "0", "n", "f"})
_ACTIONS: dict[str, Action] = {
    "a": "accept", "accept": "accept", "d": "discard", "discard": "discard",
    "q": "quarantine", "quarantine": "quarantine", "r": "reject", "reject": "reject",
    "t": "tempfail", "tempfail": "tempfail",
}
FACILITIES = ("auth", "authpriv", "cron", "daemon", "ftp", "kern", "lpr", "mail", "news",
              "syslog", "user", "uucp", *(f"local{i}" for i in range(8)))
_HOSTNAME = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?\Z", re.ASCII)
_USER = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*\$?\Z", re.ASCII)
_TOKEN = re.compile(r"[!#$%&'*+.0-9A-Z^_`a-z{|}~-]+\Z", re.ASCII)  # RFC 2045 token
SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux


def parse_bool(text: str) -> bool:
    """yes/no, true/false, 1/0 (and y/n, t/f), any case.

    OpenDKIM looks at the first character only, so it reads ``yesterday`` as yes and ``on`` as
    an error; postward takes whole words, so a typo is an error, not a guess."""
    word = text.lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a yes/no value; write yes or no (true/false and 1/0 "
                     f"work too)")


def parse_int(text: str, minimum: int = 0) -> int:
    """A decimal number of at least ``minimum``. (OpenDKIM's strtol() would also read 0x10 as
    16 and 010 as 8; decimal is what every config in practice means.)"""
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"{text!r} is not a whole number; write digits only, e.g. 5")
    value = int(text)
    if value < minimum:
        raise ValueError(f"{value} is too small; give at least {minimum}")
    return value


def parse_umask(text: str) -> int:
    """An octal file mode mask such as 022 or 007.

    OpenDKIM reads the number with strtol(..., 0): octal only with a leading 0, so ``22``
    means decimal 22 (octal 026) there. A value that reads differently as decimal and octal
    is ambiguous, so postward asks for the leading zero."""
    if not re.fullmatch(r"[0-7]+", text):
        raise ValueError(f"{text!r} is not an octal mask; write e.g. 022 or 007")
    value = int(text, 8)
    if len(text) > 1 and not text.startswith("0"):
        raise ValueError(f"{text!r} is ambiguous: OpenDKIM reads it as decimal {int(text)}, "
                         f"octal {oct(value)[2:]} was probably meant; write 0{text}")
    if value > 0o777:
        raise ValueError(f"{text} is larger than 0777")
    return value


def parse_user(text: str) -> tuple[str, str | None]:
    """``user`` or ``user:group`` (names; they are looked up when the daemon starts)."""
    user, colon, group = text.partition(":")
    for part in (user, group) if colon else (user,):
        if not _USER.match(part):
            raise ValueError(f"{text!r} is not user or user:group; write e.g. "
                             f"opendkim:opendkim")
    return user, (group if colon else None)


def parse_mode(text: str) -> tuple[bool, bool]:
    """``(sign, verify)`` from the letters s and v (lower case, as OpenDKIM requires)."""
    bad = sorted(set(text) - {"s", "v"})
    if bad:
        raise ValueError(f"unknown mode letter {bad[0]!r} in {text!r}; Mode takes s (sign) "
                         f"and/or v (verify), e.g. sv")
    return "s" in text, "v" in text


def parse_canon(text: str) -> tuple[Canon, Canon]:
    """``(header, body)``. One word names the header method; the body is then simple, as in
    OpenDKIM (and RFC 6376's c= tag)."""
    header, slash, body = text.lower().partition("/")
    for word in (header, body) if slash else (header,):
        if word not in ("simple", "relaxed"):
            raise ValueError(f"unknown canonicalization {word!r} in {text!r}; write relaxed, "
                             f"simple or header/body such as relaxed/relaxed")
    return header, (body if slash else "simple")  # type: ignore[return-value]


def parse_action(text: str) -> Action:
    action = _ACTIONS.get(text.lower())
    if action is None:
        raise ValueError(f"{text!r} is not an action; write accept, reject, tempfail, discard "
                         f"or quarantine")
    return action


def parse_facility(text: str) -> str:
    if text.lower() not in FACILITIES:
        raise ValueError(f"{text!r} is not a syslog facility; write e.g. mail or local0")
    return text.lower()


def parse_algorithm(text: str) -> Literal["rsa-sha256", "ed25519-sha256"]:
    word = text.lower()
    if word == "rsa-sha1":
        raise ValueError("rsa-sha1 is refused: RFC 8301 forbids signing with SHA-1; write "
                         "rsa-sha256")
    if word not in ("rsa-sha256", "ed25519-sha256"):
        raise ValueError(f"unknown signing algorithm {text!r}; write rsa-sha256 or "
                         f"ed25519-sha256")
    return word  # type: ignore[return-value]


def parse_abs_path(text: str) -> Path:
    if not text.startswith("/"):
        raise ValueError(f"{text!r} is a relative path, which OpenDKIM resolves against the "
                         f"directory it was started in; give the absolute path")
    return Path(text)


def parse_nameservers(text: str) -> tuple[str, ...]:
    """A comma-separated list of IP addresses."""
    servers = []
    for item in (i.strip(" \t") for i in text.split(",")):
        try:
            servers.append(str(ipaddress.ip_address(item)))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address; Nameservers is a comma-separated "
                             f"list of addresses, e.g. 127.0.0.1,::1") from None
    return tuple(servers)


def parse_authserv_id(text: str, hostname: str) -> str:
    """The authserv-id; ``HOSTNAME`` (exactly so, as in OpenDKIM) means this host's name."""
    if text == "HOSTNAME":
        return hostname
    if not _TOKEN.match(text):
        raise ValueError(f"{text!r} cannot be an authserv-id (a token such as a hostname: no "
                         f"spaces, ';', '@' or quotes)")
    return text


@dataclass(frozen=True)
class MilterSocket:
    """Where the milter listens: ``inet``/``inet6`` host and port, or a ``local`` socket path.

    ``host`` is "" for all interfaces (``inet:8891``). ``is_loopback`` is true when only this
    machine can connect: a loopback address, ``localhost``, or a local (UNIX) socket."""

    kind: SocketKind
    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def pymilter_spec(self) -> str:
        """The string libmilter's smfi_setconn() (pymilter's milter.setconn()) takes."""
        if self.kind == "local":
            return f"unix:{self.path}"
        if not self.host:
            return f"{self.kind}:{self.port}"
        host = f"[{self.host}]" if self.kind == "inet6" and _is_ip(self.host) else self.host
        return f"{self.kind}:{self.port}@{host}"

    @property
    def is_loopback(self) -> bool:
        if self.kind == "local":
            return True
        if self.host.lower().rstrip(".") == "localhost":
            return True
        return _is_ip(self.host) and ipaddress.ip_address(self.host).is_loopback

    def __str__(self) -> str:
        return self.pymilter_spec


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


_SOCKET_FORMS = "write inet:PORT@HOST, inet6:PORT@HOST or local:/path"


def parse_socket(text: str) -> MilterSocket:
    """``inet:PORT[@HOST]``, ``inet6:PORT[@HOST]``, ``local:/path``, ``unix:/path`` or a bare
    ``/path``, as libmilter reads them; HOST may be an address in square brackets."""
    kind, colon, rest = text.partition(":")
    if not colon:
        return _local(text)
    kind = kind.lower()
    if kind in ("local", "unix", ""):
        return _local(rest)
    if kind not in ("inet", "inet6"):
        raise ValueError(f"unknown socket type {kind!r} in {text!r}; {_SOCKET_FORMS}")
    port_text, at, host = rest.partition("@")
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{port_text!r} is not a port number (1-65535) in {text!r}; "
                         f"{_SOCKET_FORMS}")
    port = int(port_text)
    if at and not host:
        raise ValueError(f"{text!r} has '@' but no host; write {kind}:{port}@127.0.0.1, or "
                         f"{kind}:{port} for all interfaces")
    return MilterSocket(kind, _socket_host(host, kind, port), port)  # type: ignore[arg-type]


def _local(path: str) -> MilterSocket:
    if not path.startswith("/"):
        raise ValueError(f"local socket path {path!r} is relative; give the absolute path, "
                         f"e.g. local:/run/opendkim/opendkim.sock")
    if len(path.encode()) > SUN_PATH_MAX:
        raise ValueError(f"local socket path {path!r} is longer than {SUN_PATH_MAX} bytes, "
                         f"the most a UNIX socket address holds")
    return MilterSocket("local", path=path)


def _socket_host(host: str, kind: str, port: int) -> str:
    bracketed = host.startswith("[") and host.endswith("]")
    bare = host[1:-1] if bracketed else host
    if not bare:
        return ""
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        if bracketed or not _HOSTNAME.match(bare):
            raise ValueError(f"{host!r} is neither an IP address nor a hostname; write e.g. "
                             f"{kind}:{port}@127.0.0.1") from None
        return bare
    if kind == "inet" and address.version == 6:
        raise ValueError(f"{bare} is an IPv6 address; write inet6:{port}@[{bare}]")
    if kind == "inet6" and address.version == 4:
        raise ValueError(f"{bare} is an IPv4 address; write inet:{port}@{bare}")
    return str(address)
