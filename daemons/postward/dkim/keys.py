"""DKIM keys: loading private keys safely, parsing and writing public key records.

Every private/public key operation goes through ``cryptography`` (OpenSSL): dkimpy does RSA in
pure Python, about 30 times slower, which matters on a milter that signs every outgoing message.
dkimpy is only used here for its RFC 6376 tag=value parser, so record parsing matches what the
rest of the DKIM code (and dkimpy-based peers) accept.

Compatibility with OpenDKIM shapes the rules:

* Private keys are read in every format OpenDKIM and dkimpy-milter users have on disk: PEM
  PKCS#1 ("BEGIN RSA PRIVATE KEY", older ``opendkim-genkey``), PEM PKCS#8 ("BEGIN PRIVATE KEY",
  ``opendkim-genkey`` on OpenSSL 3, RSA or Ed25519), and dkimpy's Ed25519 format (the base64
  32-byte seed on one line, as ``dknewkey --ktype ed25519`` writes it).
* Key files must be private, like OpenDKIM's "key data is not secure" check, but the error says
  exactly which path and mode is wrong and how to fix it. The Debian guide's
  ``chown root:opendkim mail; chmod 0640 mail`` stays valid when the daemon runs as opendkim.
  Unlike OpenDKIM, a sticky world-writable directory (/tmp) on the way is accepted as long as
  the entry in it belongs to root or the daemon: the sticky bit stops others replacing it.
* New keys are written as OpenDKIM writes them (PKCS#1 PEM for RSA) so either daemon reads them.
"""

from __future__ import annotations

import base64
import binascii
import grp
import os
import pwd
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import (
    dsa,
    ec,
    ed448,
    ed25519,
    padding,
    rsa,
    x448,
    x25519,
)
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim.util import DuplicateTag, InvalidTagValueList, parse_tag_value

Algorithm = Literal["rsa", "ed25519"]

# RFC 8301: verifiers must ignore RSA keys shorter than this; signers must not use them.
MIN_RSA_BITS = 1024
# A PEM RSA key of 16384 bits is about 12 KiB; anything far bigger is not a key file.
MAX_KEY_FILE_SIZE = 64 * 1024
# One DNS TXT character-string holds at most 255 bytes (RFC 1035 3.3.14).
TXT_STRING_MAX = 255

_NOT_A_KEY = "not a private key (expected PEM RSA/Ed25519 or a base64 Ed25519 seed)"
_BASE64_TEXT = re.compile(rb"[A-Za-z0-9+/=\s]+")
_P_TAG = re.compile(r"(?:^|;)\s*(p\s*=)")


class KeyFileError(Exception):
    """A private key file cannot be used; the message names the file, the problem and the fix."""


class KeyRecordError(Exception):
    """A DKIM key record is malformed (a permerror for verifiers); the message says what."""


# --------------------------------------------------------------------------------------------
# private keys
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrivateKey:
    """A signing key and where it came from (for error and log messages)."""

    algorithm: Algorithm
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    source: str = "<memory>"

    @property
    def bits(self) -> int:
        """RSA modulus size; 256 for Ed25519 (what DKIM tools report for it)."""
        if isinstance(self.key, rsa.RSAPrivateKey):
            return self.key.key_size
        return 256

    def sign_digest(self, digest: bytes) -> bytes:
        """Sign an already computed SHA-256 digest of the canonicalized header fields.

        RSA: RSASSA-PKCS1-v1_5 with the SHA-256 DigestInfo, exactly what rsa-sha256 needs.
        Ed25519: RFC 8463 signs the 32-byte SHA-256 digest itself with pure Ed25519 (the digest
        is the Ed25519 "message"), not the header data.
        """
        if len(digest) != 32:
            raise ValueError(f"expected a 32-byte SHA-256 digest, got {len(digest)} bytes")
        if isinstance(self.key, rsa.RSAPrivateKey):
            return self.key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
        return self.key.sign(digest)

    def public_key_data(self) -> bytes:
        """The bytes that go base64-encoded into ``p=``: SubjectPublicKeyInfo DER for RSA
        (RFC 6376 3.6.1), the raw 32-byte key for Ed25519 (RFC 8463 4.2)."""
        public = self.key.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            return public.public_bytes(serialization.Encoding.DER,
                                       serialization.PublicFormat.SubjectPublicKeyInfo)
        return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def public_record(self, *, hash_tag: bool = False, flags: str = "", service: str = "") -> str:
        """The DNS TXT record publishing this key, tags in ``opendkim-genkey``'s order.

        ``hash_tag`` adds ``h=sha256`` (the hash name: ``opendkim-genkey -h rsa-sha256``
        wrongly prints ``h=rsa-sha256``, which receivers read as "no acceptable hash").
        ``flags`` becomes ``t=`` ("y" testing, "s" strict, "y:s"); ``service`` becomes ``s=``
        ("email" restricts the key to email, as ``opendkim-genkey -r`` does).
        """
        tags = ["v=DKIM1"]
        if hash_tag:
            tags.append("h=sha256")
        tags.append(f"k={self.algorithm}")
        if flags:
            _check_tag_list("t", flags)
            tags.append(f"t={flags}")
        if service:
            _check_tag_list("s", service)
            tags.append(f"s={service}")
        tags.append("p=" + base64.b64encode(self.public_key_data()).decode("ascii"))
        return "; ".join(tags)

    def matches(self, public: PublicKey) -> bool:
        """True when ``public`` is this key's public half (False for a revoked record)."""
        if public.key is None or public.algorithm != self.algorithm:
            return False
        return public.data == self.public_key_data()

    def to_pem(self) -> bytes:
        """PEM as OpenDKIM reads it: PKCS#1 ("RSA PRIVATE KEY") for RSA, like
        ``opendkim-genkey``; PKCS#8 for Ed25519 (the only PEM form it has)."""
        fmt = (serialization.PrivateFormat.TraditionalOpenSSL
               if isinstance(self.key, rsa.RSAPrivateKey) else serialization.PrivateFormat.PKCS8)
        return self.key.private_bytes(serialization.Encoding.PEM, fmt,
                                      serialization.NoEncryption())


def _check_tag_list(tag: str, value: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9*]+(:[A-Za-z0-9*]+)*", value):
        raise ValueError(f"{tag}= takes colon-separated words, not {value!r}")


def _wrap_private(key: object, source: str) -> PrivateKey:
    if isinstance(key, rsa.RSAPrivateKey):
        return PrivateKey("rsa", key, source)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return PrivateKey("ed25519", key, source)
    kinds = [(ec.EllipticCurvePrivateKey, "an ECDSA"), (dsa.DSAPrivateKey, "a DSA"),
             (ed448.Ed448PrivateKey, "an Ed448"), (x25519.X25519PrivateKey, "an X25519"),
             (x448.X448PrivateKey, "an X448")]
    kind = next((name for cls, name in kinds if isinstance(key, cls)), "another kind of")
    raise KeyFileError(f"{source}: {kind} key; DKIM signs with RSA or Ed25519 keys only")


def parse_private_key(data: bytes, source: str) -> PrivateKey:
    """Parse a private key in any format OpenDKIM, dkimpy or dkimpy-milter users have on disk.

    PEM (PKCS#1 or PKCS#8, RSA or Ed25519), dkimpy's base64 Ed25519 seed (32 bytes; the 64-byte
    libsodium seed+public form is accepted when consistent) and, as OpenDKIM allows, DER either
    raw or base64-encoded. ``source`` names the key in error messages.
    """
    text = data.strip()
    if b"-----BEGIN" in text:
        if b"ENCRYPTED" in text:
            raise KeyFileError(f"{source}: the key is protected by a passphrase, which a "
                               "daemon cannot type; decrypt it with "
                               f"openssl pkey -in {source} -out NEWFILE")
        try:
            key = serialization.load_pem_private_key(text, password=None)
        except TypeError as e:  # "Password was not given but private key is encrypted"
            raise KeyFileError(f"{source}: the key is protected by a passphrase ({e})") from None
        except (ValueError, UnsupportedAlgorithm):
            raise KeyFileError(f"{source}: {_NOT_A_KEY}") from None
        return _wrap_private(key, source)
    raw = text
    if text and _BASE64_TEXT.fullmatch(text):
        try:
            raw = base64.b64decode(b"".join(text.split()), validate=True)
        except binascii.Error:
            raise KeyFileError(f"{source}: {_NOT_A_KEY}") from None
    if len(raw) in (32, 64):
        seed = ed25519.Ed25519PrivateKey.from_private_bytes(raw[:32])
        if len(raw) == 32 or _raw_public(seed) == raw[32:]:
            return PrivateKey("ed25519", seed, source)
    try:
        key = serialization.load_der_private_key(raw, password=None)
    except (TypeError, ValueError, UnsupportedAlgorithm):
        raise KeyFileError(f"{source}: {_NOT_A_KEY}") from None
    return _wrap_private(key, source)


def _raw_public(key: ed25519.Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw)


def generate_private_key(algorithm: str = "rsa", bits: int = 2048) -> PrivateKey:
    """A new key; ``bits`` only matters for RSA and must be at least 1024 (RFC 8301)."""
    if algorithm == "rsa":
        if bits < MIN_RSA_BITS:
            raise ValueError(f"RSA keys need at least {MIN_RSA_BITS} bits (RFC 8301), not {bits}")
        return PrivateKey("rsa", rsa.generate_private_key(public_exponent=65537, key_size=bits))
    if algorithm == "ed25519":
        return PrivateKey("ed25519", ed25519.Ed25519PrivateKey.generate())
    raise ValueError(f"unknown key algorithm {algorithm!r} (expected rsa or ed25519)")


def write_private_key(key: PrivateKey, path: Path, *, force: bool = False) -> None:
    """Write ``key`` as PEM to ``path``, mode 0600 from the moment the file exists.

    The file is created with O_CREAT|O_EXCL and mode 0600, so it is never readable by others,
    not even between creation and a chmod. An existing file is never overwritten unless
    ``force``; then the new key goes to a private temporary file in the same directory that
    atomically replaces the old one, so a crash leaves either the old key or the new one.
    """
    path = Path(path)
    if not force:
        _write_new_file(path, key.to_pem(), path)
        return
    if path.is_dir():
        raise KeyFileError(f"{path}: is a directory; not replacing it with a key")
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    _write_new_file(temporary, key.to_pem(), path)
    try:
        os.replace(temporary, path)
    except OSError as e:
        temporary.unlink(missing_ok=True)
        raise KeyFileError(f"{path}: cannot write it: {e.strerror}") from None


def _write_new_file(path: Path, data: bytes, shown: Path) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{shown}: already exists; not overwriting a key "
                           "(remove it first, or use --force)") from None
    except OSError as e:
        raise KeyFileError(f"{shown}: cannot create it: {e.strerror}") from None
    try:
        os.fchmod(fd, 0o600)  # the umask may have removed bits; make it exactly 0600
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError as e:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise KeyFileError(f"{shown}: cannot write it: {e.strerror}") from None
    os.close(fd)


# --------------------------------------------------------------------------------------------
# key file permissions
# --------------------------------------------------------------------------------------------


def user_ids(user: str) -> tuple[int, set[int]]:
    """The uid and all group ids (primary and supplementary) of ``user``: what the daemon will
    have after dropping privileges to it (OpenDKIM's ``UserID``)."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ValueError(f"no such user: {user}") from None
    return entry.pw_uid, _groups_of(entry)


def _groups_of(entry: pwd.struct_passwd) -> set[int]:
    gids = {entry.pw_gid}
    gids.update(g.gr_gid for g in grp.getgrall() if entry.pw_name in g.gr_mem)
    return gids


def _default_gids(uid: int) -> set[int]:
    """The current process's groups for its own uid, else the groups of ``uid``'s user."""
    if uid == os.geteuid():
        return {os.getegid(), *os.getgroups()}
    try:
        return _groups_of(pwd.getpwuid(uid))
    except KeyError:
        return set()


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    try:
        return f"{grp.getgrgid(gid).gr_name} (gid {gid})"
    except KeyError:
        return f"gid {gid}"


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _file_kind(mode: int) -> str:
    kinds = [(stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
             (stat.S_ISSOCK, "a socket")]
    return next((name for test, name in kinds if test(mode)), "not a plain file")


def check_key_file_permissions(path: Path, daemon_uid: int | None,
                               daemon_gids: set[int] | None = None) -> None:
    """Refuse a key file that other users could read or replace, as OpenDKIM does.

    ``daemon_uid``/``daemon_gids`` are the ids the daemon reads keys with. The file must be a
    regular file (symlinks are followed), with no permission for "other", owned by root or the
    daemon, not group-writable, group-readable only by one of the daemon's groups, and readable
    by the daemon. No directory on the way to it (through symlinks too) may be writable by
    everyone, unless sticky (like /tmp), where others cannot replace what they do not own.
    ``daemon_uid=None`` (daemon user unknown) checks only the rules that do not depend on it.
    Raises :class:`KeyFileError` naming the path, its mode/owner and the fix.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such file") from None
    except OSError as e:
        raise KeyFileError(f"{path}: cannot check it: {e.strerror}") from None
    if daemon_uid is not None and daemon_gids is None:
        daemon_gids = _default_gids(daemon_uid)
    _check_key_stat(path, st, daemon_uid, daemon_gids)
    _check_directories(path, daemon_uid)


def _check_key_stat(path: Path, st: os.stat_result, daemon_uid: int | None,
                    daemon_gids: set[int] | None) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"{path}: {_file_kind(st.st_mode)}, not a key file")
    mode = stat.S_IMODE(st.st_mode)
    shown = f"mode {mode:04o}, owner {_user_name(st.st_uid)}, group {_group_name(st.st_gid)}"
    if mode & stat.S_IRWXO:
        what = [word for bit, word in ((stat.S_IROTH, "readable"), (stat.S_IWOTH, "writable"),
                                       (stat.S_IXOTH, "executable")) if mode & bit]
        raise KeyFileError(f"{path} is {' and '.join(what)} by every user (mode {mode:04o}); "
                           f"chmod o-rwx {path}")
    if mode & stat.S_IWGRP:
        raise KeyFileError(f"{path} is writable by group {_group(st.st_gid)} ({shown}); "
                           f"chmod g-w {path}")
    if daemon_uid is None:
        return
    gids = daemon_gids or set()
    daemon = _user(daemon_uid)
    if st.st_uid not in (0, daemon_uid):
        raise KeyFileError(f"{path} is owned by {_user(st.st_uid)} ({shown}); only root or the "
                           f"daemon's user {daemon} may own a key: "
                           f"chown {_user_name(daemon_uid)} {path}")
    daemon_group = _group_name(min(gids)) if gids else "GROUP"
    if mode & stat.S_IRGRP and st.st_gid not in gids:
        raise KeyFileError(f"{path} is readable by group {_group(st.st_gid)} ({shown}), which "
                           f"the daemon's user {daemon} is not in; "
                           f"chgrp {daemon_group} {path}, or chmod g-r {path}")
    readable = (daemon_uid == 0
                or (st.st_uid == daemon_uid and mode & stat.S_IRUSR)
                or (st.st_gid in gids and mode & stat.S_IRGRP))
    if not readable:
        raise KeyFileError(f"{path} is not readable by the daemon's user {daemon} ({shown}); "
                           f"chown {_user_name(daemon_uid)} {path} and chmod 0600 {path}")


def _check_directories(path: Path, daemon_uid: int | None) -> None:
    """No directory on the way to the key, before or after resolving symlinks, may let others
    replace it. A world-writable directory is refused unless sticky (like /tmp): there only an
    entry's owner can rename it, so the next path component must be root's or the daemon's."""
    for chain in (Path(os.path.abspath(path)), Path(os.path.realpath(path))):
        below = chain
        for directory in chain.parents:
            try:
                st = os.stat(directory)
            except OSError:
                below = directory
                continue  # a missing or unreadable directory fails the open more clearly
            mode = stat.S_IMODE(st.st_mode)
            if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
                raise KeyFileError(f"{path}: directory {directory} is writable by every user "
                                   f"(mode {mode:04o}), so anyone could replace the key; "
                                   f"chmod o-w {directory}")
            if st.st_mode & stat.S_IWOTH and daemon_uid is not None:
                owner = _owner_or_root(below)
                if owner not in (0, daemon_uid):
                    raise KeyFileError(
                        f"{path}: {below} is owned by {_user(owner)} inside the "
                        f"world-writable directory {directory} (mode {mode:04o}), so that user "
                        f"could replace the key; keep keys in a directory of root's, such as "
                        f"/etc/dkimkeys")
            below = directory


def _owner_or_root(path: Path) -> int:
    try:
        return os.lstat(path).st_uid
    except OSError:
        return 0  # gone meanwhile: the open that follows reports it


def load_private_key(path: Path, daemon_uid: int | None = None,
                     daemon_gids: set[int] | None = None,
                     require_safe: bool = True) -> PrivateKey:
    """Read and parse a private key file, refusing it (``require_safe``) if it is not private.

    ``daemon_uid``/``daemon_gids`` default to the current process's. The permission check uses
    the stat of the very file descriptor that is read, so the file cannot be swapped between
    check and read.
    """
    path = Path(path)
    uid = os.geteuid() if daemon_uid is None else daemon_uid
    gids = _default_gids(uid) if daemon_gids is None else daemon_gids
    try:
        # O_NONBLOCK: opening a FIFO must not hang; it is then refused as not a regular file.
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such file") from None
    except PermissionError:
        raise KeyFileError(f"{path}: permission denied reading it as "
                           f"{_user(os.geteuid())}") from None
    except OSError as e:
        raise KeyFileError(f"{path}: cannot open it: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if require_safe:
            _check_key_stat(path, st, uid, gids)
            _check_directories(path, uid)
        elif not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{path}: {_file_kind(st.st_mode)}, not a key file")
        data = os.read(fd, MAX_KEY_FILE_SIZE + 1)
    except OSError as e:
        raise KeyFileError(f"{path}: cannot read it: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_KEY_FILE_SIZE:
        raise KeyFileError(f"{path}: {_NOT_A_KEY}; it is larger than {MAX_KEY_FILE_SIZE} bytes")
    return parse_private_key(data, str(path))


# --------------------------------------------------------------------------------------------
# public key records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublicKey:
    """A parsed DKIM key record (RFC 6376 3.6.1). ``key`` is None when the key is revoked
    (empty ``p=``); ``hashes``, ``flags`` and ``services`` are the ``h=``, ``t=`` and ``s=``
    lists (empty = not given: any hash, no flags, any service)."""

    algorithm: Algorithm
    key: rsa.RSAPublicKey | ed25519.Ed25519PublicKey | None
    bits: int
    hashes: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    services: tuple[str, ...] = ()

    @property
    def revoked(self) -> bool:
        return self.key is None

    @property
    def testing(self) -> bool:
        """t=y: the domain is testing DKIM; verifiers must not treat failures differently
        from unsigned mail."""
        return "y" in self.flags

    @property
    def strict(self) -> bool:
        """t=s: the i= domain must equal d=, no subdomains."""
        return "s" in self.flags

    @property
    def allows_email(self) -> bool:
        """s= absent, ``*`` or listing ``email``: the key may verify mail signatures."""
        return not self.services or "*" in self.services or "email" in self.services

    def allows_hash(self, name: str) -> bool:
        """h= absent or listing ``name`` ("sha256", "sha1")."""
        return not self.hashes or name in self.hashes

    @property
    def data(self) -> bytes:
        """The key as ``p=`` carries it (SubjectPublicKeyInfo DER / raw 32 bytes); b"" if
        revoked. A bare PKCS#1 record comes back as SubjectPublicKeyInfo."""
        if self.key is None:
            return b""
        if isinstance(self.key, rsa.RSAPublicKey):
            return self.key.public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
        return self.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def verify_digest(self, signature: bytes, digest: bytes, hash_name: str = "sha256") -> bool:
        """Check a signature over an already computed digest (see PrivateKey.sign_digest).

        A bad signature (or a revoked key) gives False, never an exception: a verifier turns
        that into dkim=fail. ``hash_name`` is "sha1" only for legacy rsa-sha1 signatures.
        """
        if self.key is None:
            return False
        try:
            if isinstance(self.key, rsa.RSAPublicKey):
                self.key.verify(signature, digest, padding.PKCS1v15(),
                                Prehashed(_hash_algorithm(hash_name)))
            else:
                self.key.verify(signature, digest)
        except InvalidSignature:
            return False
        return True


def _hash_algorithm(name: str) -> hashes.HashAlgorithm:
    if name == "sha256":
        return hashes.SHA256()
    if name == "sha1":
        return hashes.SHA1()
    raise ValueError(f"unknown DKIM hash {name!r} (expected sha256 or sha1)")


def parse_public_record(txt: str) -> PublicKey:
    """Parse a DKIM key record (the TXT strings of one record, joined).

    RFC 6376 3.6.1: ``v=`` is optional but, if present, must be first and DKIM1; ``k=``
    defaults to rsa; ``p=`` is required and empty means revoked; whitespace inside base64 is
    ignored. RSA ``p=`` is SubjectPublicKeyInfo DER (a bare PKCS#1 RSAPublicKey, which some old
    records carry, is accepted too); Ed25519 ``p=`` is the raw 32-byte key (RFC 8463). Unknown
    tags are ignored. Raises :class:`KeyRecordError` saying what is wrong.
    """
    try:
        data = txt.encode("ascii")
    except UnicodeEncodeError:
        raise KeyRecordError("the record has non-ASCII characters") from None
    try:
        tags = parse_tag_value(data)
    except DuplicateTag as e:
        raise KeyRecordError(f"tag {e.args[0].decode('ascii', 'replace')}= appears twice") \
            from None
    except InvalidTagValueList as e:
        spec = e.args[0].decode("ascii", "replace").strip() if e.args else ""
        raise KeyRecordError(f"not a tag=value list: {spec!r} has no '='") from None
    fields = {k.decode("ascii"): v.decode("ascii") for k, v in tags.items()}
    if "v" in fields:
        if next(iter(fields)) != "v":
            raise KeyRecordError("v= must be the first tag")
        if fields["v"] != "DKIM1":
            raise KeyRecordError(f"v={fields['v']} is not DKIM1")
    algorithm = fields.get("k", "rsa").lower()
    if algorithm not in ("rsa", "ed25519"):
        raise KeyRecordError(f"unknown key type k={fields['k']} (expected rsa or ed25519)")
    if "p" not in fields:
        raise KeyRecordError("no p= tag (the public key)")
    extras = {"hashes": _colon_list(fields.get("h", "")),
              "flags": _colon_list(fields.get("t", "")),
              "services": _colon_list(fields.get("s", ""))}
    encoded = "".join(fields["p"].split())
    if not encoded:
        return PublicKey(algorithm, None, 0, **extras)
    try:
        raw = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise KeyRecordError("p= is not valid base64") from None
    if algorithm == "ed25519":
        if len(raw) != 32:
            hint = (" (it looks like a SubjectPublicKeyInfo; publish only the raw 32-byte key)"
                    if len(raw) == 44 else "")
            raise KeyRecordError(f"k=ed25519 needs a raw 32-byte p= (RFC 8463), "
                                 f"got {len(raw)} bytes{hint}")
        ed_key = ed25519.Ed25519PublicKey.from_public_bytes(raw)
        return PublicKey("ed25519", ed_key, 256, **extras)
    try:
        # Accepts SubjectPublicKeyInfo and a bare PKCS#1 RSAPublicKey alike.
        key = serialization.load_der_public_key(raw)
    except (ValueError, UnsupportedAlgorithm):
        raise KeyRecordError("p= is not a DER RSA public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        kind = ("an Ed25519 key (publish it with k=ed25519, as the raw 32 bytes)"
                if isinstance(key, ed25519.Ed25519PublicKey) else "a key of another type")
        raise KeyRecordError(f"k=rsa but p= holds {kind}")
    return PublicKey("rsa", key, key.key_size, **extras)


def _colon_list(value: str) -> tuple[str, ...]:
    return tuple(item.strip().lower() for item in value.split(":") if item.strip())


# --------------------------------------------------------------------------------------------
# DNS text
# --------------------------------------------------------------------------------------------


def txt_record_strings(record: str) -> list[str]:
    """Cut a record into TXT character-strings of at most 255 bytes (RFC 1035), never inside
    a UTF-8 character. DKIM verifiers concatenate them without separators."""
    strings: list[str] = []
    current: list[str] = []
    size = 0
    for char in record:
        width = len(char.encode())
        if size + width > TXT_STRING_MAX:
            strings.append("".join(current))
            current, size = [], 0
        current.append(char)
        size += width
    strings.append("".join(current))
    return strings


def _zone_quote(text: str) -> str:
    """One zone-file character-string: quotes, backslashes and non-printable bytes escaped."""
    out = []
    for byte in text.encode():
        if byte in (0x22, 0x5C):
            out.append("\\" + chr(byte))
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


def zone_file_text(selector: str, domain: str, record: str, ttl: int | None = None) -> str:
    """The record as a zone-file entry, laid out like ``opendkim-genkey``'s ``.txt``.

    The tags before ``p=`` form the first string and the key follows in strings of at most 255
    bytes each, so BIND, nsd, unbound and Knot load it as-is. The owner name is relative to the
    domain's zone (``mail._domainkey``), as ``opendkim-genkey`` writes it.
    """
    match = _P_TAG.search(record)
    offset = match.start(1) if match else len(record)
    head, tail = record[:offset], record[offset:]
    strings = [s for s in (*txt_record_strings(head), *txt_record_strings(tail)) if s] or [""]
    owner = f"{selector}._domainkey"
    ttl_field = f"{ttl}\t" if ttl is not None else ""
    body = "\n\t  ".join(_zone_quote(s) for s in strings)
    return (f"{owner}\t{ttl_field}IN\tTXT\t( {body} )  ; ----- DKIM key {selector} for "
            f"{domain}\n")
