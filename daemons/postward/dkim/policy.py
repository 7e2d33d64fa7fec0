"""What the milter acts on: opendkim.conf plus [dkim], with every key file loaded and checked.

Built whole at start and on each reload (SIGUSR1); a reload that fails keeps the old policy.
Key files are read here, once, so a key that is missing, unreadable, too open or too short
stops the start with ``KeyTable-file:line: reason`` instead of failing mail later.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from postward.core.config_file import ConfigError, Problem
from postward.core.logs import get_log
from postward.dkim.arc import ArcSealer
from postward.dkim.keys import KeyFileError, PrivateKey, load_private_key
from postward.dkim.keytables import KeyTable, MissingKey
from postward.dkim.opendkim_conf import OpenDkimConfig, load_opendkim_conf
from postward.dkim.opendkim_values import MilterSocket
from postward.dkim.settings import DkimSettings
from postward.dkim.signer import SigningKey
from postward.dkim.verifier import FAIL, PASS, PERMERROR, TEMPERROR, Outcome

log = get_log("dkim")


@dataclass(frozen=True)
class RunAs:
    """The user the daemon serves as (its key files are judged for this user)."""

    uid: int
    gid: int
    groups: frozenset[int]


@dataclass(frozen=True)
class DkimPolicy:
    conf: OpenDkimConfig
    settings: DkimSettings
    keys: dict[str, PrivateKey]          # key file path -> loaded key
    socket: MilterSocket
    arc_sealer: ArcSealer | None = None

    # -- what the milter asks ----------------------------------------------------------------

    @property
    def sign(self) -> bool:
        return self.conf.mode_sign

    @property
    def verify(self) -> bool:
        return self.conf.mode_verify

    @property
    def header_canonicalization(self) -> str:
        return self.conf.header_canon

    @property
    def body_canonicalization(self) -> str:
        return self.conf.body_canon

    @property
    def sign_headers(self) -> tuple[str, ...]:
        return self.conf.sign_headers

    @property
    def oversign_headers(self) -> tuple[str, ...]:
        return self.conf.oversign_headers

    @property
    def max_signatures(self) -> int:
        return self.settings.max_signatures or self.conf.maximum_signatures_to_verify

    @property
    def minimum_key_bits(self) -> int:
        return self.conf.minimum_key_bits

    @property
    def authserv_id(self) -> str:
        return self.conf.authserv_id

    @property
    def always_add_ar_header(self) -> bool:
        return self.conf.always_add_ar_header

    @property
    def log_why(self) -> bool:
        return self.conf.log_why

    @property
    def log_success(self) -> bool:
        return self.conf.syslog_success

    @property
    def max_header_bytes(self) -> int:
        return self.conf.maximum_headers or 10_000_000

    @property
    def arc_verify(self) -> bool:
        return self.settings.arc_verify

    @property
    def arc_max_message_size(self) -> int:
        return self.settings.arc_max_message_size

    @property
    def temporary_directory(self) -> str:
        return str(self.conf.temporary_directory)

    @property
    def umask(self) -> int:
        return self.conf.umask if self.conf.umask is not None else 0o077

    @property
    def pid_file(self) -> str:
        return str(self.conf.pid_file) if self.conf.pid_file else ""

    @property
    def user(self) -> str | None:
        return self.conf.user

    @property
    def group(self) -> str | None:
        return self.conf.group

    def is_internal(self, ip: str | None, hostname: str | None) -> bool:
        return self.conf.internal_hosts.matches(ip, hostname)

    def is_peer(self, ip: str | None, hostname: str | None) -> bool:
        return self.conf.peer_list is not None and self.conf.peer_list.matches(ip, hostname)

    def signing_keys(self, sender: str) -> list[SigningKey]:
        """The keys for mail From: ``sender``. A key named through a ``%`` template that does
        not exist raises (the message is tempfailed, as OpenDKIM does), never goes unsigned."""
        try:
            choices = self.conf.signing_keys_for(sender)
        except MissingKey as e:
            raise LookupError(f"SigningTable names a key that does not exist: {e}") from None
        keys = []
        for c in choices:
            path = str(c.key_path)
            key = self.keys.get(path)
            if key is None:
                # A KeyTable path with "%" in it: only known per message; loaded and checked
                # on first use, then kept.
                key = self.keys[path] = load_private_key(c.key_path, None,
                                                         require_safe=self.conf.require_safe_keys)
            keys.append(SigningKey(c.domain, c.selector, key))
        return keys

    def action_for(self, outcomes: Sequence[Outcome]) -> str:
        """OpenDKIM's On-* settings applied to a message's verdicts. One good signature is
        enough; a broken one counts as no signature (RFC 6376 6.1)."""
        actions = self.conf.actions
        results = {o.result for o in outcomes}
        if not outcomes:
            return actions.no_signature
        if PASS in results:
            return "accept"
        if FAIL in results:
            return actions.bad_signature
        if TEMPERROR in results:
            return actions.dns_error
        if results == {PERMERROR} and all(o.reason.startswith("no key published")
                                         for o in outcomes):
            return actions.key_not_found
        return actions.bad_signature


def _ids(run_as: RunAs | None) -> tuple[int, set[int]]:
    """The uid and groups key files are judged for: the user we will run as, else ourselves."""
    if run_as is None:
        return os.getuid(), {os.getgid(), *os.getgroups()}
    return run_as.uid, set(run_as.groups | {run_as.gid})


def _tables(conf: OpenDkimConfig) -> list[KeyTable]:
    return [t for t in (conf.key_table, conf.key_table_ed25519) if t is not None]


def _load_keys(conf: OpenDkimConfig, run_as: RunAs | None) -> tuple[dict[str, PrivateKey],
                                                                     list[Problem]]:
    keys: dict[str, PrivateKey] = {}
    problems: list[Problem] = []
    uid, gids = _ids(run_as)
    for table in _tables(conf):
        for entry in table.entries:
            where, _, line = entry.source.rpartition(":")
            path = entry.key_path
            if path in keys or entry.path_is_template:
                continue
            try:
                key = load_private_key(Path(path), uid, gids, require_safe=conf.require_safe_keys)
            except KeyFileError as e:
                problems.append(Problem(where or str(conf.path), int(line or 0),
                                        f"{table.option} {entry.name}: {e}"))
                continue
            if key.algorithm == "rsa" and key.bits < conf.minimum_key_bits:
                problems.append(Problem(where, int(line or 0),
                                        f"{path}: a {key.bits}-bit key is below MinimumKeyBits "
                                        f"{conf.minimum_key_bits}; receivers will not trust it"))
                continue
            keys[path] = key
    return keys, problems


def load_policy(conf_path: Path, settings: DkimSettings, run_as: RunAs | None,
                socket_override: str | None = None, check_keys: bool = True) -> DkimPolicy:
    """Read opendkim.conf and its tables, load every key; ConfigError lists all problems."""
    conf = load_opendkim_conf(conf_path, socket_override or settings.socket or None)
    keys, problems = _load_keys(conf, run_as) if check_keys else ({}, [])
    sock = conf.socket
    if not sock.is_loopback and not settings.allow_non_loopback:
        problems.append(Problem(str(conf_path), 0,
                                f"Socket {sock}: not a loopback address or local socket; the "
                                f"milter protocol has no authentication (set [dkim] "
                                f"allow_non_loopback = yes to insist)"))
    sealer = None
    if settings.arc_seal_key and check_keys:
        uid, gids = _ids(run_as)
        try:
            key = load_private_key(Path(settings.arc_seal_key), uid, gids,
                                   require_safe=conf.require_safe_keys)
            if key.algorithm != "rsa":
                raise KeyFileError(f"{settings.arc_seal_key}: ARC seals are RSA-SHA256 only "
                                   f"(RFC 8617); this is an {key.algorithm} key")
            sealer = ArcSealer(settings.arc_seal_domain, settings.arc_seal_selector, key)
        except KeyFileError as e:
            problems.append(Problem(str(conf_path), 0, f"[dkim] arc_seal_key: {e}"))
    if problems:
        raise ConfigError(problems)
    return DkimPolicy(conf, settings, keys, sock, sealer)
