"""postward.dkim.keys: key formats, signatures, key-file safety and the DNS record text.

Signatures are checked against independent implementations: dkimpy's pure-Python RSA (PKCS#1
v1.5 is deterministic, so the bytes must be identical), the published RFC 8463 Appendix A
signatures (Ed25519 is deterministic too), OpenSSL's command line and opendkim-genkey's files.
Every key is made in tmp_path; none is kept in the repository.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import stat
import subprocess
from pathlib import Path

import dkim
import dkim.crypto
import dns.rdatatype
import dns.zone
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from dkim.canonicalization import CanonicalizationPolicy
from dkim.util import parse_tag_value

from postward.dkim.keys import (
    KeyFileError,
    KeyRecordError,
    PrivateKey,
    check_key_file_permissions,
    generate_private_key,
    load_private_key,
    parse_private_key,
    parse_public_record,
    txt_record_strings,
    write_private_key,
    zone_file_text,
)

# RFC 8463 Appendix A: the Ed25519 key, the RSA key record and a message signed with both.
RFC8463_SEED = "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A="
RFC8463_PUBLIC = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
RFC8463_RSA_RECORD = (
    "v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDkHlOQoBTzWRiGs5V6NpP3idY6Wk08a5qhdR"
    "6wy5bdOKb2jLQiY/J16JYi0Qvx/byYzCNb3W91y3FutACDfzwQ/BC/e/8uBsCR+yz1Lxj+PL6lHvqMKrM3rG4hstT5Q"
    "jvHO9PzoxZyVYLzBfO2EeC3Ip3G+2kryOTIKT+l/K4w3QIDAQAB")
RFC8463_MESSAGE = "\r\n".join([
    "DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;",
    " d=football.example.com; i=@football.example.com;",
    " q=dns/txt; s=brisbane; t=1528637909; h=from : to :",
    " subject : date : message-id : from : subject : date;",
    " bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;",
    " b=/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11Bus",
    " Fa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw==",
    "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;",
    " d=football.example.com; i=@football.example.com;",
    " q=dns/txt; s=test; t=1528637909; h=from : to : subject :",
    " date : message-id : from : subject : date;",
    " bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;",
    " b=F45dVWDfMbQDGHJFlXUNB2HKfbCeLRyhDXgFpEL8GwpsRe0IeIixNTe3",
    " DhCVlUrSjV4BwcVcOF6+FF3Zo9Rpo1tFOeS9mPYQTnGdaSGsgeefOsk2Jz",
    " dA+L10TeYt9BgDfQNZtKdN1WO//KgIqXP7OdEFE4LjFYNcUxZQ4FADY+8=",
    "From: Joe SixPack <joe@football.example.com>",
    "To: Suzie Q <suzie@shopping.example.net>",
    "Subject: Is dinner ready?",
    "Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)",
    "Message-ID: <20030712040037.46341.5F8J@football.example.com>",
    "", "Hi.", "", "We lost the game.  Are you hungry yet?", "", "Joe.", "",
]).encode()

FOREIGN_UID = 12345
FOREIGN_GID = 12345
DAEMON_UID = 4242
DAEMON_GID = 4343


@pytest.fixture(scope="module")
def rsa_key() -> PrivateKey:
    return generate_private_key("rsa", 2048)


@pytest.fixture(scope="module")
def ed_key() -> PrivateKey:
    return generate_private_key("ed25519")


def p_tag(record: str) -> str:
    return "".join(parse_tag_value(record.encode())[b"p"].decode().split())


def write_file(path: Path, data: bytes, mode: int = 0o600, uid: int = 0, gid: int = 0) -> Path:
    path.write_bytes(data)
    os.chown(path, uid, gid)
    path.chmod(mode)
    return path


# --------------------------------------------------------------------------------------------
# RFC 8463 vectors
# --------------------------------------------------------------------------------------------


def rfc8463_digest_and_signature(index: int) -> tuple[bytes, bytes]:
    """The header hash of signature ``index`` of the RFC 8463 message, computed with dkimpy's
    canonicalization (independent of postward's), and that signature's b= bytes."""
    headers, _ = dkim.rfc822_parse(RFC8463_MESSAGE)
    field = headers[index]
    tags = parse_tag_value(field[1].replace(b"\r\n", b""))
    include = [h.strip().lower() for h in tags[b"h"].split(b":")]
    policy = CanonicalizationPolicy.from_c_value(tags[b"c"])
    hasher = hashlib.sha256()
    dkim.hash_headers(hasher, policy, policy.canonicalize_headers(headers), include, field, tags)
    return hasher.digest(), base64.b64decode(re.sub(rb"\s+", b"", tags[b"b"]))


def test_rfc8463_seed_gives_the_published_public_key() -> None:
    key = parse_private_key(RFC8463_SEED.encode() + b"\n", "rfc8463")
    assert key.algorithm == "ed25519"
    assert key.bits == 256
    assert key.public_record() == f"v=DKIM1; k=ed25519; p={RFC8463_PUBLIC}"
    assert base64.b64encode(key.public_key_data()).decode() == RFC8463_PUBLIC


def test_rfc8463_ed25519_signature_is_reproduced_and_verifies() -> None:
    """RFC 8463: the Ed25519 'message' is the 32-byte SHA-256 header digest itself."""
    digest, signature = rfc8463_digest_and_signature(0)
    key = parse_private_key(RFC8463_SEED.encode(), "rfc8463")
    assert key.sign_digest(digest) == signature  # Ed25519 is deterministic
    public = parse_public_record(f"v=DKIM1; k=ed25519; p={RFC8463_PUBLIC}")
    assert public.verify_digest(signature, digest)
    assert not public.verify_digest(signature, hashlib.sha256(b"other").digest())


def test_rfc8463_rsa_signature_verifies() -> None:
    digest, signature = rfc8463_digest_and_signature(1)
    public = parse_public_record(RFC8463_RSA_RECORD)
    assert public.algorithm == "rsa"
    assert public.bits == 1024
    assert public.verify_digest(signature, digest)
    assert not public.verify_digest(signature[:-1] + bytes([signature[-1] ^ 1]), digest)


# --------------------------------------------------------------------------------------------
# signatures against dkimpy and cryptography
# --------------------------------------------------------------------------------------------


def test_rsa_sign_digest_equals_dkimpy(rsa_key: PrivateKey) -> None:
    hashobj = hashlib.sha256(b"canonicalized header fields")
    dkimpy_key = dkim.crypto.parse_pem_private_key(rsa_key.to_pem())
    ours = rsa_key.sign_digest(hashobj.digest())
    assert ours == dkim.crypto.RSASSA_PKCS1_v1_5_sign(hashobj, dkimpy_key)
    public = dkim.crypto.parse_public_key(rsa_key.public_key_data())
    assert dkim.crypto.RSASSA_PKCS1_v1_5_verify(hashobj, ours, public)
    assert not dkim.crypto.RSASSA_PKCS1_v1_5_verify(hashlib.sha256(b"x"), ours, public)


def test_rsa_verify_digest_accepts_dkimpy_signatures(rsa_key: PrivateKey) -> None:
    hashobj = hashlib.sha256(b"headers")
    signature = dkim.crypto.RSASSA_PKCS1_v1_5_sign(
        hashobj, dkim.crypto.parse_pem_private_key(rsa_key.to_pem()))
    public = parse_public_record(rsa_key.public_record())
    assert public.verify_digest(signature, hashobj.digest())
    assert not public.verify_digest(signature, hashlib.sha256(b"other").digest())
    assert not public.verify_digest(b"\x00" * 256, hashobj.digest())
    assert not public.verify_digest(b"short", hashobj.digest())


def test_legacy_rsa_sha1_verification(rsa_key: PrivateKey) -> None:
    """rsa-sha1 is refused by policy (RFC 8301), but the primitive can still check it."""
    digest = hashlib.sha1(b"headers").digest()
    assert isinstance(rsa_key.key, rsa.RSAPrivateKey)
    signature = rsa_key.key.sign(b"headers", padding.PKCS1v15(), hashes.SHA1())
    public = parse_public_record(rsa_key.public_record())
    assert public.verify_digest(signature, digest, "sha1")
    assert not public.verify_digest(signature, hashlib.sha1(b"x").digest(), "sha1")
    with pytest.raises(ValueError, match="unknown DKIM hash 'md5'"):
        public.verify_digest(signature, digest, "md5")


def test_ed25519_signature_verifies_with_cryptography(ed_key: PrivateKey) -> None:
    digest = hashlib.sha256(b"headers").digest()
    signature = ed_key.sign_digest(digest)
    assert len(signature) == 64
    ed_key.key.public_key().verify(signature, digest)  # raises if wrong
    public = parse_public_record(ed_key.public_record())
    assert public.verify_digest(signature, digest)
    assert not public.verify_digest(signature, hashlib.sha256(b"x").digest())


def test_sign_digest_wants_a_sha256_digest(rsa_key: PrivateKey, ed_key: PrivateKey) -> None:
    for key in (rsa_key, ed_key):
        with pytest.raises(ValueError, match="32-byte SHA-256 digest"):
            key.sign_digest(b"not a digest")


def test_dkimpy_verifies_a_message_signed_with_our_key_and_record(tmp_path: Path,
                                                                   rsa_key: PrivateKey) -> None:
    """End to end through dkimpy: our PEM signs, our public_record() verifies."""
    path = tmp_path / "mail.private"
    write_private_key(rsa_key, path)
    message = b"From: a@example.test\r\nTo: b@example.test\r\nSubject: hi\r\n\r\nbody\r\n"
    signed = dkim.sign(message, b"mail", b"example.test", path.read_bytes()) + message
    records = {b"mail._domainkey.example.test.": rsa_key.public_record().encode()}
    assert dkim.verify(signed, dnsfunc=lambda name, timeout=5: records.get(name))
    hashed = rsa_key.public_record(hash_tag=True, flags="y", service="email").encode()
    records[b"mail._domainkey.example.test."] = hashed
    assert dkim.verify(signed, dnsfunc=lambda name, timeout=5: records.get(name))


# --------------------------------------------------------------------------------------------
# private key formats
# --------------------------------------------------------------------------------------------


def test_parses_every_supported_format(rsa_key: PrivateKey, ed_key: PrivateKey) -> None:
    assert isinstance(rsa_key.key, rsa.RSAPrivateKey)
    assert isinstance(ed_key.key, ed25519.Ed25519PrivateKey)
    nopass = serialization.NoEncryption()
    pem, der = serialization.Encoding.PEM, serialization.Encoding.DER
    pkcs1, pkcs8 = serialization.PrivateFormat.TraditionalOpenSSL, \
        serialization.PrivateFormat.PKCS8
    rsa_der = rsa_key.key.private_bytes(der, pkcs1, nopass)
    ed_seed = ed_key.key.private_bytes(serialization.Encoding.Raw,
                                       serialization.PrivateFormat.Raw, nopass)
    cases = {
        "PKCS#1 PEM": (rsa_key.key.private_bytes(pem, pkcs1, nopass), rsa_key),
        "PKCS#8 PEM rsa": (rsa_key.key.private_bytes(pem, pkcs8, nopass), rsa_key),
        "PKCS#8 PEM ed25519": (ed_key.key.private_bytes(pem, pkcs8, nopass), ed_key),
        "dkimpy seed": (base64.b64encode(ed_seed), ed_key),
        "dkimpy seed + newline": (base64.b64encode(ed_seed) + b"\n", ed_key),
        "seed + public": (base64.b64encode(ed_seed + ed_key.public_key_data()), ed_key),
        "raw DER": (rsa_der, rsa_key),
        "base64 DER": (base64.encodebytes(rsa_der), rsa_key),
    }
    assert rsa_key.key.private_bytes(pem, pkcs1, nopass).startswith(
        b"-----BEGIN RSA PRIVATE KEY-----")
    for name, (data, expected) in cases.items():
        parsed = parse_private_key(data, name)
        assert parsed.algorithm == expected.algorithm, name
        assert parsed.public_key_data() == expected.public_key_data(), name
        assert parsed.source == name


@pytest.mark.parametrize("data", [
    b"", b"garbage", b"-----BEGIN RSA PRIVATE KEY-----\nnonsense\n-----END RSA PRIVATE KEY-----\n",
    b"AAAA", b"\x00\x01\x02", base64.b64encode(b"\x01" * 48),
    base64.b64encode(b"\x01" * 64),  # 64 bytes whose second half is not the seed's public key
])
def test_garbage_is_not_a_key(data: bytes) -> None:
    with pytest.raises(KeyFileError) as e:
        parse_private_key(data, "/etc/dkimkeys/mail")
    assert str(e.value) == ("/etc/dkimkeys/mail: not a private key (expected PEM RSA/Ed25519 or "
                            "a base64 Ed25519 seed)")


def test_encrypted_and_foreign_keys_are_refused(rsa_key: PrivateKey) -> None:
    encrypted = rsa_key.key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.BestAvailableEncryption(b"pw"))
    with pytest.raises(KeyFileError, match=r"^k: the key is protected by a passphrase"):
        parse_private_key(encrypted, "k")
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    with pytest.raises(KeyFileError, match=r"^k: an ECDSA key; DKIM signs with RSA or "
                                           r"Ed25519 keys only$"):
        parse_private_key(ec_pem, "k")


def test_generate_private_key() -> None:
    key = generate_private_key("rsa", 1024)
    assert (key.algorithm, key.bits, key.source) == ("rsa", 1024, "<memory>")
    assert generate_private_key("ed25519").bits == 256
    with pytest.raises(ValueError, match="at least 1024 bits"):
        generate_private_key("rsa", 512)
    with pytest.raises(ValueError, match="unknown key algorithm 'dsa'"):
        generate_private_key("dsa")


# --------------------------------------------------------------------------------------------
# writing keys
# --------------------------------------------------------------------------------------------


def test_write_private_key_is_0600_pem_whatever_the_umask(tmp_path: Path, rsa_key: PrivateKey,
                                                         ed_key: PrivateKey) -> None:
    old = os.umask(0)
    try:
        write_private_key(rsa_key, tmp_path / "rsa.private")
        write_private_key(ed_key, tmp_path / "ed.private")
    finally:
        os.umask(old)
    for name in ("rsa.private", "ed.private"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    assert (tmp_path / "rsa.private").read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert (tmp_path / "ed.private").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert load_private_key(tmp_path / "rsa.private").public_key_data() == \
        rsa_key.public_key_data()
    assert load_private_key(tmp_path / "ed.private").public_key_data() == \
        ed_key.public_key_data()


def test_written_keys_are_readable_by_openssl(tmp_path: Path, rsa_key: PrivateKey,
                                              ed_key: PrivateKey) -> None:
    for name, key in (("rsa.private", rsa_key), ("ed.private", ed_key)):
        write_private_key(key, tmp_path / name)
        result = subprocess.run(["openssl", "pkey", "-in", str(tmp_path / name), "-noout"],
                                capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
        public = subprocess.run(["openssl", "pkey", "-in", str(tmp_path / name), "-pubout",
                                 "-outform", "DER"], capture_output=True, check=True).stdout
        expected = key.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        assert public == expected


def test_write_refuses_to_overwrite_unless_forced(tmp_path: Path, rsa_key: PrivateKey,
                                                  ed_key: PrivateKey) -> None:
    path = tmp_path / "mail.private"
    write_private_key(rsa_key, path)
    with pytest.raises(KeyFileError,
                       match=f"^{re.escape(str(path))}: already exists; not overwriting"):
        write_private_key(ed_key, path)
    assert load_private_key(path).algorithm == "rsa"
    path.chmod(0o640)
    write_private_key(ed_key, path, force=True)
    assert load_private_key(path).algorithm == "ed25519"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mail.private"]  # no temp left


def test_write_does_not_follow_a_planted_symlink(tmp_path: Path, rsa_key: PrivateKey) -> None:
    target = tmp_path / "elsewhere"
    (tmp_path / "mail.private").symlink_to(target)
    with pytest.raises(KeyFileError, match="already exists"):
        write_private_key(rsa_key, tmp_path / "mail.private")
    assert not target.exists()


# --------------------------------------------------------------------------------------------
# opendkim-genkey interoperability
# --------------------------------------------------------------------------------------------


def test_opendkim_genkey_key_loads_and_gives_the_same_record(tmp_path: Path) -> None:
    subprocess.run(["opendkim-genkey", "-D", str(tmp_path), "-d", "example.test", "-s", "sel"],
                   check=True, capture_output=True)
    key = load_private_key(tmp_path / "sel.private")
    assert key.algorithm == "rsa"
    zone_text = (tmp_path / "sel.txt").read_text()
    theirs = "".join(re.findall(r'"([^"]*)"', zone_text))
    assert p_tag(theirs) == p_tag(key.public_record())
    assert parse_public_record(theirs).hashes == ("sha256",)  # it adds h=sha256 by default
    # Our zone text for the same record has the layout of theirs, line by line.
    ours = zone_file_text("sel", "example.test", theirs)
    assert ours.splitlines()[0].split("\t")[:4] == zone_text.splitlines()[0].split("\t")[:4]
    assert ours.rstrip().endswith("; ----- DKIM key sel for example.test")
    assert "".join(re.findall(r'"([^"]*)"', ours)) == theirs


# --------------------------------------------------------------------------------------------
# key file permissions
# --------------------------------------------------------------------------------------------


@pytest.fixture
def keydir(tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    directory.mkdir(mode=0o755)
    return directory


@pytest.fixture
def pem(rsa_key: PrivateKey) -> bytes:
    return rsa_key.to_pem()


def test_the_guides_setups_are_accepted(keydir: Path, pem: bytes) -> None:
    # chown root:opendkim mail; chmod 0640 mail -- daemon running as opendkim
    guide = write_file(keydir / "guide", pem, 0o640, 0, DAEMON_GID)
    check_key_file_permissions(guide, DAEMON_UID, {DAEMON_GID})
    assert load_private_key(guide, DAEMON_UID, {DAEMON_GID}).algorithm == "rsa"
    # chown opendkim mail; chmod 0600 mail
    own = write_file(keydir / "own", pem, 0o600, DAEMON_UID, DAEMON_GID)
    check_key_file_permissions(own, DAEMON_UID, {DAEMON_GID})
    # root's 0600 key for a daemon running as root, and 0400
    check_key_file_permissions(write_file(keydir / "root", pem), 0, {0})
    check_key_file_permissions(write_file(keydir / "ro", pem, 0o400), 0, {0})


def test_world_readable_key(keydir: Path, pem: bytes) -> None:
    path = write_file(keydir / "mail", pem, 0o644)
    with pytest.raises(KeyFileError) as e:
        check_key_file_permissions(path, 0, {0})
    assert str(e.value) == f"{path} is readable by every user (mode 0644); chmod o-rwx {path}"
    with pytest.raises(KeyFileError, match="readable by every user"):
        load_private_key(path)
    assert load_private_key(path, require_safe=False).algorithm == "rsa"


def test_world_writable_and_executable_key(keydir: Path, pem: bytes) -> None:
    path = write_file(keydir / "mail", pem, 0o602)
    with pytest.raises(KeyFileError, match=r"is writable by every user \(mode 0602\); chmod o-rwx"):
        check_key_file_permissions(path, 0, {0})
    path.chmod(0o601)
    with pytest.raises(KeyFileError, match=r"is executable by every user \(mode 0601\)"):
        check_key_file_permissions(path, 0, {0})


def test_group_readable_by_a_foreign_group(keydir: Path, pem: bytes) -> None:
    path = write_file(keydir / "mail", pem, 0o640, 0, FOREIGN_GID)
    with pytest.raises(KeyFileError) as e:
        check_key_file_permissions(path, DAEMON_UID, {DAEMON_GID})
    assert str(e.value) == (
        f"{path} is readable by group gid {FOREIGN_GID} (mode 0640, owner root, group "
        f"{FOREIGN_GID}), which the daemon's user uid {DAEMON_UID} is not in; "
        f"chgrp {DAEMON_GID} {path}, or chmod g-r {path}")
    # 0660 too (group-writable is reported first: it is the worse problem)
    path.chmod(0o660)
    with pytest.raises(KeyFileError, match=f"is writable by group gid {FOREIGN_GID}"):
        check_key_file_permissions(path, DAEMON_UID, {DAEMON_GID})


def test_group_writable_even_for_the_daemons_group(keydir: Path, pem: bytes) -> None:
    path = write_file(keydir / "mail", pem, 0o660, 0, DAEMON_GID)
    with pytest.raises(KeyFileError) as e:
        check_key_file_permissions(path, DAEMON_UID, {DAEMON_GID})
    assert str(e.value) == (f"{path} is writable by group gid {DAEMON_GID} (mode 0660, owner "
                            f"root, group {DAEMON_GID}); chmod g-w {path}")


def test_foreign_owner(keydir: Path, pem: bytes) -> None:
    path = write_file(keydir / "mail", pem, 0o600, FOREIGN_UID, 0)
    with pytest.raises(KeyFileError) as e:
        check_key_file_permissions(path, DAEMON_UID, {DAEMON_GID})
    assert str(e.value) == (
        f"{path} is owned by uid {FOREIGN_UID} (mode 0600, owner {FOREIGN_UID}, group root); "
        f"only root or the daemon's user uid {DAEMON_UID} may own a key: "
        f"chown {DAEMON_UID} {path}")


def test_key_the_daemon_cannot_read(keydir: Path, pem: bytes) -> None:
    path = write_file(keydir / "mail", pem, 0o600)  # root's, daemon is not root
    with pytest.raises(KeyFileError, match=re.escape(
            f"{path} is not readable by the daemon's user uid {DAEMON_UID} (mode 0600, owner "
            f"root, group root); chown {DAEMON_UID} {path} and chmod 0600 {path}")):
        check_key_file_permissions(path, DAEMON_UID, {DAEMON_GID})


def test_not_a_regular_file(keydir: Path) -> None:
    with pytest.raises(KeyFileError) as e:
        check_key_file_permissions(keydir, 0, {0})
    assert str(e.value) == f"{keydir}: a directory, not a key file"
    with pytest.raises(KeyFileError, match="a directory, not a key file"):
        load_private_key(keydir)
    fifo = keydir / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(KeyFileError, match=f"^{re.escape(str(fifo))}: a FIFO, not a key file$"):
        load_private_key(fifo)  # and does not hang opening it


def test_symlink_to_a_safe_file_is_allowed(keydir: Path, pem: bytes) -> None:
    target = write_file(keydir / "mail.private", pem)
    link = keydir / "mail"
    link.symlink_to(target)
    check_key_file_permissions(link, 0, {0})
    assert load_private_key(link).source == str(link)
    dangling = keydir / "dangling"
    dangling.symlink_to(keydir / "nowhere")
    with pytest.raises(KeyFileError, match=f"^{re.escape(str(dangling))}: no such file$"):
        check_key_file_permissions(dangling, 0, {0})


def test_symlink_to_an_unsafe_file_is_refused(keydir: Path, pem: bytes) -> None:
    target = write_file(keydir / "mail.private", pem, 0o644)
    link = keydir / "mail"
    link.symlink_to(target)
    with pytest.raises(KeyFileError, match=f"^{re.escape(str(link))} is readable by every user"):
        load_private_key(link)


def test_missing_file(keydir: Path) -> None:
    path = keydir / "nothing"
    with pytest.raises(KeyFileError, match=f"^{re.escape(str(path))}: no such file$"):
        check_key_file_permissions(path, 0, {0})
    with pytest.raises(KeyFileError, match=f"^{re.escape(str(path))}: no such file$"):
        load_private_key(path)


def test_garbage_file(keydir: Path) -> None:
    path = write_file(keydir / "mail", b"hello world\n")
    with pytest.raises(KeyFileError) as e:
        load_private_key(path)
    assert str(e.value) == (f"{path}: not a private key (expected PEM RSA/Ed25519 or a base64 "
                            "Ed25519 seed)")
    huge = write_file(keydir / "huge", b"A" * 100_000)
    with pytest.raises(KeyFileError, match="larger than 65536 bytes"):
        load_private_key(huge)


def test_world_writable_parent_directory(keydir: Path, pem: bytes) -> None:
    path = write_file(keydir / "mail", pem)
    keydir.chmod(0o777)
    with pytest.raises(KeyFileError) as e:
        check_key_file_permissions(path, 0, {0})
    assert str(e.value) == (f"{path}: directory {keydir} is writable by every user (mode 0777), "
                            f"so anyone could replace the key; chmod o-w {keydir}")
    with pytest.raises(KeyFileError, match="is writable by every user"):
        load_private_key(path)
    # ... also when only the symlink's target lives there
    safe = keydir.parent / "safe"
    safe.mkdir(mode=0o755)
    (safe / "mail").symlink_to(path)
    with pytest.raises(KeyFileError,
                       match=f"directory {re.escape(str(keydir))} is writable by every user"):
        check_key_file_permissions(safe / "mail", 0, {0})


def test_sticky_world_writable_directory(keydir: Path, pem: bytes) -> None:
    """Like /tmp: others cannot replace what they do not own, so root's key is safe there,
    but an entry owned by another user is not."""
    path = write_file(keydir / "mail", pem)
    keydir.chmod(0o1777)
    check_key_file_permissions(path, 0, {0})
    sub = keydir / "sub"
    sub.mkdir(mode=0o755)
    os.chown(sub, FOREIGN_UID, FOREIGN_GID)
    inner = write_file(sub / "mail", pem)
    with pytest.raises(KeyFileError) as e:
        check_key_file_permissions(inner, 0, {0})
    assert str(e.value) == (
        f"{inner}: {sub} is owned by uid {FOREIGN_UID} inside the world-writable directory "
        f"{keydir} (mode 1777), so that user could replace the key; keep keys in a directory "
        "of root's, such as /etc/dkimkeys")


def test_unknown_daemon_user_checks_only_the_universal_rules(keydir: Path, pem: bytes) -> None:
    check_key_file_permissions(write_file(keydir / "a", pem, 0o640, FOREIGN_UID, FOREIGN_GID),
                               None)
    with pytest.raises(KeyFileError, match="readable by every user"):
        check_key_file_permissions(write_file(keydir / "b", pem, 0o604), None)


def test_load_defaults_to_the_current_process(keydir: Path, pem: bytes) -> None:
    # The tests run as root: a root-owned 0600 key is fine, a foreign owner is not.
    assert os.geteuid() == 0
    assert load_private_key(write_file(keydir / "ok", pem)).bits == 2048
    with pytest.raises(KeyFileError, match="is owned by uid 12345"):
        load_private_key(write_file(keydir / "foreign", pem, 0o600, FOREIGN_UID))


# --------------------------------------------------------------------------------------------
# public key records
# --------------------------------------------------------------------------------------------


def test_public_record_forms(rsa_key: PrivateKey, ed_key: PrivateKey) -> None:
    spki = base64.b64encode(rsa_key.key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    assert rsa_key.public_record() == f"v=DKIM1; k=rsa; p={spki}"
    assert rsa_key.public_record(hash_tag=True, flags="y", service="email") == \
        f"v=DKIM1; h=sha256; k=rsa; t=y; s=email; p={spki}"
    raw = base64.b64encode(ed_key.public_key_data()).decode()
    assert len(ed_key.public_key_data()) == 32
    assert ed_key.public_record() == f"v=DKIM1; k=ed25519; p={raw}"
    with pytest.raises(ValueError, match="t= takes colon-separated words"):
        rsa_key.public_record(flags="y; p=evil")


def test_parse_public_record_fields(rsa_key: PrivateKey) -> None:
    record = rsa_key.public_record(hash_tag=True, flags="y:s", service="email")
    public = parse_public_record(record)
    assert (public.algorithm, public.bits) == ("rsa", 2048)
    assert (public.hashes, public.flags, public.services) == (("sha256",), ("y", "s"),
                                                              ("email",))
    assert public.testing and public.strict and public.allows_email and not public.revoked
    assert public.allows_hash("sha256") and not public.allows_hash("sha1")
    assert rsa_key.matches(public)
    bare = parse_public_record(f"p={p_tag(record)}")  # no v=, no k=: rsa
    assert (bare.algorithm, bare.hashes, bare.flags, bare.services) == ("rsa", (), (), ())
    assert not bare.testing and bare.allows_email and bare.allows_hash("sha1")
    # Folding whitespace inside p= (as in a zone file or a joined TXT) is ignored.
    p = p_tag(record)
    spaced = parse_public_record(f"v=DKIM1;\tk=rsa ;\r\n p = {p[:100]} {p[100:200]}\t{p[200:]};")
    assert spaced.data == public.data
    assert parse_public_record(f"v=DKIM1; s=tlsrpt:email; p={p}").allows_email
    assert not parse_public_record(f"v=DKIM1; s=tlsrpt; p={p}").allows_email
    assert parse_public_record(f"v=DKIM1; n=a note; x=unknown; p={p}").data == public.data


def test_bare_pkcs1_public_key_is_accepted(rsa_key: PrivateKey) -> None:
    pkcs1 = rsa_key.key.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.PKCS1)
    public = parse_public_record(f"v=DKIM1; k=rsa; p={base64.b64encode(pkcs1).decode()}")
    assert public.bits == 2048
    assert rsa_key.matches(public)


def test_revoked_record() -> None:
    public = parse_public_record("v=DKIM1; k=rsa; p=")
    assert public.revoked and public.key is None and public.bits == 0
    assert not public.verify_digest(b"sig", hashlib.sha256(b"").digest())
    assert parse_public_record("v=DKIM1; k=ed25519; p= ;").revoked


@pytest.mark.parametrize(("record", "message"), [
    ("", "no p= tag (the public key)"),
    ("v=DKIM1; k=rsa", "no p= tag (the public key)"),
    ("v=DKIM1; p", "not a tag=value list: 'p' has no '='"),
    ("k=rsa; v=DKIM1; p=", "v= must be the first tag"),
    ("v=DKIM2; p=", "v=DKIM2 is not DKIM1"),
    ("v=spf1 -all", "v=spf1 -all is not DKIM1"),
    ("v=DKIM1; k=dsa; p=", "unknown key type k=dsa (expected rsa or ed25519)"),
    ("v=DKIM1; p=a; p=b", "tag p= appears twice"),
    ("v=DKIM1; p=not*base64", "p= is not valid base64"),
    ("v=DKIM1; k=rsa; p=AAAA", "p= is not a DER RSA public key"),
    ("v=DKIM1; k=ed25519; p=AAAA", "k=ed25519 needs a raw 32-byte p= (RFC 8463), got 3 bytes"),
    ("v=DKIM1; p=caf\u00e9", "the record has non-ASCII characters"),
])
def test_malformed_records(record: str, message: str) -> None:
    with pytest.raises(KeyRecordError) as e:
        parse_public_record(record)
    assert str(e.value) == message


def test_wrong_key_types_in_p(ed_key: PrivateKey) -> None:
    spki = ed_key.key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    encoded = base64.b64encode(spki).decode()
    with pytest.raises(KeyRecordError, match="looks like a SubjectPublicKeyInfo"):
        parse_public_record(f"v=DKIM1; k=ed25519; p={encoded}")
    with pytest.raises(KeyRecordError,
                       match=r"k=rsa but p= holds an Ed25519 key \(publish it with k=ed25519"):
        parse_public_record(f"v=DKIM1; k=rsa; p={encoded}")


def test_matches_tells_keys_apart(rsa_key: PrivateKey, ed_key: PrivateKey) -> None:
    other = generate_private_key("rsa", 1024)
    assert not rsa_key.matches(parse_public_record(other.public_record()))
    assert not rsa_key.matches(parse_public_record(ed_key.public_record()))
    assert not rsa_key.matches(parse_public_record("v=DKIM1; p="))
    assert ed_key.matches(parse_public_record(ed_key.public_record()))


# --------------------------------------------------------------------------------------------
# DNS text
# --------------------------------------------------------------------------------------------


def test_txt_record_strings() -> None:
    record = "x" * 600
    assert [len(s) for s in txt_record_strings(record)] == [255, 255, 90]
    assert txt_record_strings("") == [""]
    assert txt_record_strings("a" * 255) == ["a" * 255]
    # never splits inside a UTF-8 character
    strings = txt_record_strings("a" * 254 + "\u00e9" + "b")
    assert strings == ["a" * 254, "\u00e9b"]
    assert all(len(s.encode()) <= 255 for s in strings)


@pytest.mark.parametrize("bits", [1024, 2048, 4096])
def test_zone_file_text_loads_in_a_zone_parser(bits: int) -> None:
    key = generate_private_key("rsa", bits)
    record = key.public_record(hash_tag=True)
    text = zone_file_text("mail", "example.com", record, ttl=3600)
    assert text.startswith("mail._domainkey\t3600\tIN\tTXT\t( \"v=DKIM1; h=sha256; k=rsa; \"\n")
    assert text.endswith(" )  ; ----- DKIM key mail for example.com\n")
    zone = dns.zone.from_text(
        "$TTL 300\n@ SOA ns hostmaster 1 3600 600 86400 60\n@ NS ns\nns A 192.0.2.53\n" + text,
        origin="example.com.")
    rdataset = zone.find_rdataset("mail._domainkey", dns.rdatatype.TXT)
    assert rdataset.ttl == 3600
    (rdata,) = list(rdataset)
    assert all(len(s) <= 255 for s in rdata.strings)
    assert b"".join(rdata.strings).decode() == record
    assert parse_public_record(record).data == key.public_key_data()


def test_zone_file_text_without_ttl_and_escapes() -> None:
    text = zone_file_text("sel", "example.test", 'v=DKIM1; n=say "hi"\\; p=AAAA')
    assert text == ('sel._domainkey\tIN\tTXT\t( "v=DKIM1; n=say \\"hi\\"\\\\; "\n\t  "p=AAAA" )'
                    "  ; ----- DKIM key sel for example.test\n")
    zone = dns.zone.from_text("@ 300 SOA ns hostmaster 1 3600 600 86400 60\n@ 300 NS ns\n"
                              + text.replace("\tIN", "\t300\tIN"), origin="example.test.")
    (rdata,) = list(zone.find_rdataset("sel._domainkey", dns.rdatatype.TXT))
    assert b"".join(rdata.strings) == b'v=DKIM1; n=say "hi"\\; p=AAAA'
