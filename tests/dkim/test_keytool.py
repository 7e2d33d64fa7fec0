"""``postward dkim genkey|testkey``: files like opendkim-genkey's, and testkey against real DNS.

testkey is run against the test bed's unbound serving freshly generated keys: a 2048-bit RSA
record split into 255-byte strings (the answer is bigger than 512 bytes, so it comes over TCP
after a truncated UDP answer), an Ed25519 one, a revoked one, a mismatched one, and a record
loaded by unbound from the very zone file genkey wrote (proof that the .txt is valid zone-file
syntax for a real server). Every key lives in tmp_path.
"""

from __future__ import annotations

import argparse
import base64
import grp
import os
import re
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from postward.dkim.keys import (
    PrivateKey,
    generate_private_key,
    load_private_key,
    parse_public_record,
    txt_record_strings,
    write_private_key,
)
from postward.dkim.keytool import (
    DnsLookupError,
    UsageError,
    add_keytool_commands,
    build_parser,
    check_published_key,
    dns_txt_lookup,
    main,
    parse_nameserver,
)
from tests.testbed.dns_fixtures import DnsTestbedFactory
from tests.testbed.dns_servers import DnsTestbed, LocalZone, txt
from tests.testbed.net import free_port

ROOT = Path(__file__).parents[2]
DOMAIN = "keys.test"


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def quoted_strings(zone_text: str) -> list[str]:
    return re.findall(r'"([^"]*)"', zone_text)


def static_lookup(records: dict[str, list[str]]) -> Callable[[str], list[str]]:
    return lambda name: records.get(name, [])


def short_rsa_record(tmp_path: Path) -> str:
    """A 512-bit RSA key record: cryptography refuses to make one, OpenSSL's CLI still does."""
    pem = tmp_path / "short.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
                    "rsa_keygen_bits:512", "-out", str(pem)], check=True, capture_output=True)
    der = subprocess.run(["openssl", "pkey", "-in", str(pem), "-pubout", "-outform", "DER"],
                         check=True, capture_output=True).stdout
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


@pytest.fixture(scope="module")
def rsa_key() -> PrivateKey:
    return generate_private_key("rsa", 2048)


@pytest.fixture(scope="module")
def ed_key() -> PrivateKey:
    return generate_private_key("ed25519")


# --------------------------------------------------------------------------------------------
# genkey
# --------------------------------------------------------------------------------------------


def test_genkey_writes_the_opendkim_genkey_files(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    args = parse("genkey", "-d", "example.com", "-s", "mail", "-D", str(tmp_path))
    assert args.func(args) == 0
    out, err = capsys.readouterr()
    private, public = tmp_path / "mail.private", tmp_path / "mail.txt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mail.private", "mail.txt"]
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert out == public.read_text()
    assert out.startswith('mail._domainkey\tIN\tTXT\t( "v=DKIM1; k=rsa; "\n\t  "p=')
    assert out.endswith(" )  ; ----- DKIM key mail for example.com\n")
    record = "".join(quoted_strings(out))
    key = load_private_key(private)
    assert (key.algorithm, key.bits) == ("rsa", 2048)
    assert record == key.public_record()  # no h= by default
    assert all(len(s) <= 255 for s in quoted_strings(out))
    assert f"wrote the private key to {private} (mode 0600, owner root)" in err
    assert f"chown opendkim: {private}" in err
    assert "0640" not in err  # group-readable keys are not suggested (see keytool)
    assert f"postward dkim testkey -d example.com -s mail -k {private}" in err


def test_genkey_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = parse("genkey", "-d", "example.com", "-s", "s1", "-D", str(tmp_path), "-b", "1024",
                 "-r", "-t", "--hash", "--user", "dkim")
    assert args.func(args) == 0
    out, err = capsys.readouterr()
    public = parse_public_record("".join(quoted_strings(out)))
    assert (public.bits, public.hashes, public.flags, public.services) == (
        1024, ("sha256",), ("y",), ("email",))
    assert out.startswith('s1._domainkey\tIN\tTXT\t( "v=DKIM1; h=sha256; k=rsa; t=y; s=email; "')
    assert "chown dkim: " in err


def test_genkey_ed25519(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = parse("genkey", "-a", "ed25519", "-d", "example.com", "-s", "ed", "-D", str(tmp_path))
    assert args.func(args) == 0
    out, err = capsys.readouterr()
    key = load_private_key(tmp_path / "ed.private")
    assert key.algorithm == "ed25519"
    assert (tmp_path / "ed.private").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert "".join(quoted_strings(out)) == key.public_record()
    assert "sign with an RSA key under a second selector as well" in err


def test_genkey_refuses_to_overwrite_unless_forced(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["genkey", "-d", "example.com", "-s", "mail", "-D", str(tmp_path), "-b", "1024"]
    assert main(argv) == 0
    before = (tmp_path / "mail.private").read_bytes()
    capsys.readouterr()
    assert main(argv) == 1
    assert capsys.readouterr().err == (
        f"genkey: not overwriting {tmp_path / 'mail.private'}, {tmp_path / 'mail.txt'} "
        "(use --force)\n")
    assert (tmp_path / "mail.private").read_bytes() == before
    (tmp_path / "mail.private").unlink()  # the .txt alone still blocks
    assert main(argv) == 1
    assert "not overwriting " + str(tmp_path / "mail.txt") in capsys.readouterr().err
    assert main([*argv, "--force"]) == 0
    assert (tmp_path / "mail.private").read_bytes() != before
    assert stat.S_IMODE((tmp_path / "mail.private").stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mail.private", "mail.txt"]


@pytest.mark.parametrize(("argv", "code", "message"), [
    (["-s", "mail", "-b", "512"], 2, "genkey: RSA keys need 1024 to 8192 bits, not 512"),
    (["-s", "../etc/x"], 2, "genkey: bad selector '../etc/x': expected dot-separated DNS labels"),
    (["-s", "a/b"], 2, "genkey: bad selector 'a/b'"),
    (["-s", "mail", "-D", "/nonexistent/dir"], 1, "genkey: /nonexistent/dir: no such directory"),
])
def test_genkey_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              argv: list[str], code: int, message: str) -> None:
    full = ["genkey", "-d", "example.com", "-D", str(tmp_path), *argv]
    assert main(full) == code
    assert capsys.readouterr().err.startswith(message)
    assert not list(tmp_path.iterdir())


def test_genkey_selector_with_dots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["genkey", "-d", "example.com", "-s", "2024.mail", "-D", str(tmp_path),
                 "-b", "1024"]) == 0
    assert capsys.readouterr().out.startswith("2024.mail._domainkey\t")
    assert (tmp_path / "2024.mail.private").exists()


def test_add_keytool_commands_plugs_into_any_parser() -> None:
    parser = argparse.ArgumentParser(prog="postward")
    sub = parser.add_subparsers(dest="command")
    dkim = sub.add_parser("dkim").add_subparsers(dest="dkim_command", required=True)
    add_keytool_commands(dkim)
    args = parser.parse_args(["dkim", "testkey", "-d", "a.test", "-s", "s", "-k", "/k",
                              "--nameserver", "127.0.0.1:5353"])
    assert args.func.__name__ == "run_testkey"
    assert (args.domain, args.selector, args.key, args.nameserver) == (
        "a.test", "s", Path("/k"), "127.0.0.1:5353")
    args = parser.parse_args(["dkim", "genkey", "-d", "a.test", "-s", "s"])
    assert args.func.__name__ == "run_genkey"
    assert (args.algorithm, args.bits, args.directory, args.hash) == ("rsa", 2048, Path("."),
                                                                      False)


# --------------------------------------------------------------------------------------------
# testkey logic (no DNS)
# --------------------------------------------------------------------------------------------


def test_nameserver_parsing() -> None:
    assert parse_nameserver("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_nameserver("192.0.2.1") == ("192.0.2.1", 53)
    assert parse_nameserver("[::1]:5300") == ("::1", 5300)
    assert parse_nameserver("[2001:db8::1]") == ("2001:db8::1", 53)
    assert parse_nameserver("2001:db8::1") == ("2001:db8::1", 53)
    for bad in ("ns.example.com", "127.0.0.1:0", "127.0.0.1:x", "[::1]x", "1.2.3.4:99999"):
        with pytest.raises(UsageError, match="bad --nameserver"):
            parse_nameserver(bad)


def test_check_published_key_reasons(tmp_path: Path, rsa_key: PrivateKey,
                                     ed_key: PrivateKey) -> None:
    name = "mail._domainkey.example.com"
    other = generate_private_key("rsa", 1024)

    def check(records: list[str], key: PrivateKey | None = rsa_key) -> tuple[str, ...]:
        return check_published_key("example.com", "mail", key,
                                   static_lookup({name: records})).problems

    assert check([rsa_key.public_record()]) == ()
    assert check([ed_key.public_record()], ed_key) == ()
    assert check([]) == (f"{name}: record not found (no TXT record at that name)",)
    assert check(["v=DKIM1; k=rsa; p="]) == (f"{name}: key revoked (the record's p= is empty)",)
    assert check(["v=DKIM1; k=rsa; p=AAAA"]) == (
        f"{name}: malformed record: p= is not a DER RSA public key",)
    assert check([other.public_record()]) == (
        f"{name}: key mismatch: the published public key is not the public half of <memory>",)
    assert check([ed_key.public_record()]) == (
        f"{name}: key mismatch: the record has k=ed25519 but <memory> is an rsa key",)
    assert check([short_rsa_record(tmp_path)], None) == (
        f"{name}: key too short: 512-bit RSA; receivers ignore RSA keys under 1024 bits "
        "(RFC 8301)",)
    assert check([rsa_key.public_record(), other.public_record()]) == (
        f"{name}: 2 TXT records; receivers pick any one of them, so publish exactly one",)
    assert check([rsa_key.public_record(service="tlsrpt")]) == (
        f"{name}: s=tlsrpt restricts the key to other services than email",)
    sha1_only = rsa_key.public_record().replace("k=rsa", "h=sha1; k=rsa")
    assert check([sha1_only])[0].startswith(f"{name}: h=sha1 does not allow sha256")

    def failing(_: str) -> list[str]:
        raise DnsLookupError("no answer from 192.0.2.1 within 5 s")

    result = check_published_key("example.com", "mail", rsa_key, failing)
    assert result.problems == (f"{name}: DNS lookup failed: no answer from 192.0.2.1 "
                               "within 5 s",)


def test_check_published_key_notes(rsa_key: PrivateKey) -> None:
    name = "mail._domainkey.example.com"
    small = generate_private_key("rsa", 1024)
    result = check_published_key("example.com", "mail", small, static_lookup(
        {name: [small.public_record(flags="y")]}))
    assert result.ok
    assert result.notes == (
        f"{name}: 1024-bit RSA works, but 2048 bits is recommended (RFC 8301)",
        f"{name}: testing mode (t=y): receivers treat failures like unsigned mail")


def test_run_testkey_output(tmp_path: Path, rsa_key: PrivateKey,
                            capsys: pytest.CaptureFixture[str]) -> None:
    key_file = tmp_path / "mail.private"
    write_private_key(rsa_key, key_file)
    lookup = static_lookup({"mail._domainkey.example.com": [rsa_key.public_record()]})
    args = parse("testkey", "-d", "example.com", "-s", "mail", "-k", str(key_file))
    assert args.func(args, lookup) == 0
    assert capsys.readouterr() == ("key OK\n", "")
    args = parse("testkey", "-d", "example.com", "-s", "mail")
    assert args.func(args, lookup) == 0
    assert capsys.readouterr().out == (
        "record OK (give -k KEYFILE to check it against the private key)\n")
    args = parse("testkey", "-d", "example.com", "-s", "other", "-k", str(key_file))
    assert args.func(args, lookup) == 1
    assert capsys.readouterr() == (
        "", "other._domainkey.example.com: record not found (no TXT record at that name)\n")


def test_run_testkey_key_file_problems(tmp_path: Path, rsa_key: PrivateKey,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    key_file = tmp_path / "mail.private"
    write_private_key(rsa_key, key_file)
    lookup = static_lookup({"mail._domainkey.example.com": [rsa_key.public_record()]})
    key_file.chmod(0o644)
    args = parse("testkey", "-d", "example.com", "-s", "mail", "-k", str(key_file))
    assert args.func(args, lookup) == 1
    assert capsys.readouterr().err == (
        f"key not secure: {key_file} is readable by every user (mode 0644); "
        f"chmod o-rwx {key_file}\n")
    # --user: the daemon's view. Root's 0600 key cannot be read by opendkim.
    key_file.chmod(0o600)
    args = parse("testkey", "-d", "example.com", "-s", "mail", "-k", str(key_file),
                 "--user", "opendkim")
    assert args.func(args, lookup) == 1
    assert "is not readable by the daemon's user opendkim" in capsys.readouterr().err
    os.chown(key_file, 0, grp.getgrnam("opendkim").gr_gid)
    key_file.chmod(0o640)
    assert args.func(args, lookup) == 0
    assert capsys.readouterr().out == "key OK\n"
    # missing or garbage key files
    args = parse("testkey", "-d", "example.com", "-s", "mail", "-k", str(tmp_path / "none"))
    assert args.func(args, lookup) == 1
    assert capsys.readouterr().err == f"{tmp_path / 'none'}: no such file\n"
    (tmp_path / "junk").write_text("junk")
    args = parse("testkey", "-d", "example.com", "-s", "mail", "-k", str(tmp_path / "junk"))
    assert args.func(args, lookup) == 1
    assert "not a private key" in capsys.readouterr().err
    args = parse("testkey", "-d", "example.com", "-s", "mail", "--user", "no-such-user")
    assert args.func(args, lookup) == 2
    assert capsys.readouterr().err == "testkey: bad --user: no such user: no-such-user\n"


# --------------------------------------------------------------------------------------------
# testkey against unbound
# --------------------------------------------------------------------------------------------


@pytest.fixture
def published(tmp_path: Path, rsa_key: PrivateKey, ed_key: PrivateKey,
              testbed_dir: Path, dns_testbed_factory: DnsTestbedFactory) -> DnsTestbed:
    """unbound serving keys.test with: rsa (2048, split strings), ed (Ed25519), revoked,
    mismatch (another key's record), garbage; and genkey.test loaded from a zone file that
    genkey wrote (owner names in it are relative to that zone)."""
    other = generate_private_key("rsa", 2048)
    records = {
        "rsa": txt_record_strings(rsa_key.public_record()),
        "ed": txt_record_strings(ed_key.public_record()),
        "revoked": ["v=DKIM1; k=rsa; p="],
        "mismatch": txt_record_strings(other.public_record()),
        "garbage": ["v=DKIM1; k=rsa; p=bm90IGEga2V5"],
    }
    assert [len(s) for s in records["rsa"]] == [255, len(rsa_key.public_record()) - 255]
    zone = LocalZone(DOMAIN, [txt(f"{sel}._domainkey.{DOMAIN}", strings)
                              for sel, strings in records.items()])
    # genkey's .txt, loaded by unbound itself as an authoritative zone.
    assert main(["genkey", "-d", "genkey.test", "-s", "mail", "-D", str(tmp_path)]) == 0
    zone_file = testbed_dir / "genkey.test.zone"
    zone_file.write_text("$ORIGIN genkey.test.\n$TTL 300\n"
                         "@ SOA ns hostmaster 1 3600 600 86400 60\n@ NS ns\nns A 192.0.2.53\n"
                         + (tmp_path / "mail.txt").read_text())
    zone_file.chmod(0o644)
    extra = ['local-zone: "genkey.test." transparent',
             "auth-zone:", 'name: "genkey.test."', f'zonefile: "{zone_file}"',
             "for-downstream: yes", "for-upstream: yes", "fallback-enabled: no"]
    return dns_testbed_factory(local_zones=[zone], extra=extra)


def _testkey(bed: DnsTestbed, selector: str, key_file: Path | None,
             domain: str = DOMAIN) -> list[str]:
    argv = ["testkey", "-d", domain, "-s", selector, "--nameserver", bed.nameserver,
            "--timeout", "5"]
    return argv + (["-k", str(key_file)] if key_file else [])


@pytest.mark.integration
def test_testkey_against_unbound(published: DnsTestbed, tmp_path: Path, rsa_key: PrivateKey,
                                 ed_key: PrivateKey, capsys: pytest.CaptureFixture[str]) -> None:
    rsa_file, ed_file = tmp_path / "rsa.private", tmp_path / "ed.private"
    write_private_key(rsa_key, rsa_file)
    write_private_key(ed_key, ed_file)

    def run(selector: str, key_file: Path | None) -> tuple[int, str, str]:
        code = main(_testkey(published, selector, key_file))
        out, err = capsys.readouterr()
        return code, out, err

    name = f"._domainkey.{DOMAIN}"
    assert run("rsa", rsa_file) == (0, "key OK\n", "")
    assert run("ed", ed_file) == (0, "key OK\n", "")
    assert run("rsa", ed_file) == (
        1, "", f"rsa{name}: key mismatch: the record has k=rsa but {ed_file} is an ed25519 key\n")
    assert run("mismatch", rsa_file) == (
        1, "", f"mismatch{name}: key mismatch: the published public key is not the public half "
               f"of {rsa_file}\n")
    assert run("revoked", rsa_file) == (
        1, "", f"revoked{name}: key revoked (the record's p= is empty)\n")
    assert run("garbage", rsa_file) == (
        1, "", f"garbage{name}: malformed record: p= is not a DER RSA public key\n")
    assert run("absent", rsa_file) == (
        1, "", f"absent{name}: record not found (no TXT record at that name)\n")
    # genkey's zone file, served by unbound from the file itself
    assert run_genkey_zone(published, tmp_path, capsys) == (0, "key OK\n", "")


def run_genkey_zone(bed: DnsTestbed, tmp_path: Path,
                    capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(_testkey(bed, "mail", tmp_path / "mail.private", domain="genkey.test"))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.integration
def test_dns_lookup_gets_the_whole_split_record(published: DnsTestbed,
                                                rsa_key: PrivateKey) -> None:
    lookup = dns_txt_lookup(published.nameserver)
    assert lookup(f"rsa._domainkey.{DOMAIN}") == [rsa_key.public_record()]
    assert lookup(f"absent._domainkey.{DOMAIN}") == []
    assert lookup(f"{DOMAIN}") == []  # the zone apex has a SOA but no TXT


@pytest.mark.integration
def test_dns_lookup_failure_is_reported(loopback: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port(loopback)  # nothing listens there
    code = main(["testkey", "-d", DOMAIN, "-s", "rsa", "--nameserver", f"{loopback}:{port}",
                 "--timeout", "1"])
    assert code == 1
    assert capsys.readouterr().err == (
        f"rsa._domainkey.{DOMAIN}: DNS lookup failed: no answer from {loopback} within 1 s\n")


@pytest.mark.integration
def test_testkey_as_a_subprocess(published: DnsTestbed, tmp_path: Path,
                                 ed_key: PrivateKey) -> None:
    key_file = tmp_path / "ed.private"
    write_private_key(ed_key, key_file)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "daemons")}
    command = [sys.executable, "-m", "postward.dkim.keytool",
               *_testkey(published, "ed", key_file)]
    good = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60,
                          check=False)
    assert (good.returncode, good.stdout, good.stderr) == (0, "key OK\n", "")
    command = [sys.executable, "-m", "postward.dkim.keytool",
               *_testkey(published, "revoked", key_file)]
    bad = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60,
                         check=False)
    assert bad.returncode == 1
    assert bad.stderr == f"revoked._domainkey.{DOMAIN}: key revoked (the record's p= is empty)\n"
