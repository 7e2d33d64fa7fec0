"""postward.conf: values parse to types, and every mistake is reported as file:line: reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from postward.core.config_file import ConfigError, parse_ini
from postward.core.config_values import HostPort
from postward.schema import load_config


def write(tmp_path: Path, text: str, mode: int = 0o644) -> Path:
    p = tmp_path / "postward.conf"
    p.write_text(text)
    p.chmod(mode)
    return p


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_config(path)
    return [str(p) for p in e.value.problems]


def test_empty_file_gives_the_documented_defaults(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, ""))
    assert c.redis.url == "redis://127.0.0.1:6379/0"
    assert c.redis.key_prefix == "postward:"
    assert c.dns.nameservers == ()
    assert c.dns.timeout == 2.0
    assert c.metrics.policyd == HostPort("127.0.0.1", 9740)
    assert c.logging.level == "info"


def test_values_are_typed(tmp_path: Path) -> None:
    pw = tmp_path / "redis.pass"
    pw.write_text("s3cret\n")
    pw.chmod(0o600)
    c = load_config(write(tmp_path, f"""
# shared Redis
[redis]
url = unix:///run/redis/redis.sock?db=2
username = postward
password_file = {pw}
sentinels = 10.0.0.1:26379, 10.0.0.2
  10.0.0.3:26380
sentinel_master = mail

[dns]
nameservers = 127.0.0.1:5353 [::1]:53 192.0.2.1
timeout = 750ms
negative_ttl = 5m
cache = no

[metrics]
policyd = [::1]:9100

[logging]
level = DEBUG
"""))
    assert c.redis.url == "unix:///run/redis/redis.sock?db=2"
    assert c.redis.password_file == str(pw)
    assert c.redis.sentinels == (HostPort("10.0.0.1", 26379), HostPort("10.0.0.2", 26379),
                                 HostPort("10.0.0.3", 26380))
    assert [str(n) for n in c.dns.nameservers] == ["127.0.0.1:5353", "[::1]:53", "192.0.2.1:53"]
    assert c.dns.timeout == 0.75
    assert c.dns.negative_ttl == 300
    assert c.dns.cache is False
    assert c.metrics.policyd == HostPort("::1", 9100)
    assert c.logging.level == "debug"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[dns]\ntimeout = fast\n",
         ":2: [dns] timeout: expected a duration such as 500ms, 2s, 5m, 1h or 1d, got 'fast'"),
        ("[dns]\n\nnameservers = 127.0.0.1:99999\n", ":3: [dns] nameservers: port must be 1-65535"),
        ("[dns]\nnameservers = dns.example\n",
         ":2: [dns] nameservers: expected an IP address, got 'dns.example'"),
        ("[redis]\nurl = http://x\n",
         ":2: [redis] url: expected a redis://, rediss:// or unix:// URL, got 'http://x'"),
        ("[redis]\npool_size = 0\n", ":2: [redis] pool_size: must be at least 1, got 0"),
        ("[redis]\ntimout = 1s\n", ":2: [redis] unknown key 'timout' (did you mean 'timeout'?)"),
        ("[redis]\nsentinels = 10.0.0.1\n",
         ":2: [redis] sentinels: needs sentinel_master, the name of the master"),
        ("[redis]\npassword_file = /nonexistent/pw\n",
         ":2: [redis] password_file: cannot read /nonexistent/pw: No such file or directory"),
        ("[redsi]\n", ":1: unknown section [redsi] (did you mean [redis]?)"),
        ("[logging]\nlevel = loud\n",
         ":2: [logging] level: expected one of debug, info, warning, error, got 'loud'"),
        ("[metrics]\npolicyd = 0.0.0.0:9740\n",
         ":2: [metrics] policyd: 0.0.0.0:9740 is not a loopback address"),
        ("url = redis://x\n", ":1: 'url' is outside any [section]"),
        ("[redis]\nthis is not a setting\n",
         ":2: expected 'key = value' or '[section]', got 'this is not a setting'"),
        ("[dns]\ntimeout = 1s\ntimeout = 2s\n", ":3: [dns] timeout: set twice (first at line 2)"),
        ("[dns]\n[dns]\n", ":2: section [dns] appears twice (first at line 1)"),
    ],
)
def test_each_mistake_names_file_line_and_reason(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    problems = problems_of(path)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{path}{expected}"), problems[0]


def test_all_mistakes_are_reported_at_once_in_line_order(tmp_path: Path) -> None:
    path = write(tmp_path, "[redis]\npool_size = many\n[dns]\ntries = 9\n[bogus]\n")
    problems = problems_of(path)
    assert [p.split(":")[1] for p in problems] == ["2", "4", "5"]


def test_world_readable_password_file_is_refused(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("x")
    pw.chmod(0o644)
    path = write(tmp_path, f"[redis]\npassword_file = {pw}\n")
    [problem] = problems_of(path)
    assert "is readable by everyone (mode 0644)" in problem


def test_continuation_lines_join_the_value_above() -> None:
    sections = parse_ini("[dns]\nnameservers = 127.0.0.1\n\t127.0.0.2\n   127.0.0.3\n", "f")
    assert sections["dns"].values["nameservers"].text == "127.0.0.1 127.0.0.2 127.0.0.3"
    assert sections["dns"].values["nameservers"].line == 2


def test_check_config_command_exits_2_with_file_line_reason(tmp_path: Path) -> None:
    path = write(tmp_path, "[dns]\ntimeout = soon\n")
    r = subprocess.run([sys.executable, "-m", "postward.cli", "--config", str(path),
                        "check-config"], capture_output=True, text=True)
    assert r.returncode == 2
    assert f"{path}:2: [dns] timeout: expected a duration" in r.stderr
    assert "not starting" in r.stderr


def test_check_config_command_accepts_a_good_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[dns]\ntimeout = 1s\n")
    r = subprocess.run([sys.executable, "-m", "postward.cli", "--config", str(path),
                        "check-config"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{path}: ok"


def test_config_reference_lists_every_key_and_loads_back(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "postward.cli", "config-reference"],
                       capture_output=True, text=True, check=True)
    assert "[redis]" in r.stdout and "key_prefix = postward:" in r.stdout
    # The reference is itself a valid config: every default is spelled as the parser reads it.
    assert load_config(write(tmp_path, r.stdout)) == load_config(write(tmp_path, ""))


def test_docs_reference_block_matches_the_code() -> None:
    """docs/configuration.md shows every key and default: a golden copy of config-reference."""
    from postward.core.config import describe
    from postward.schema import SCHEMA

    doc = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    block = doc.split("```ini\n")[-1].split("```")[0]
    assert block == describe(SCHEMA), "regenerate: postward config-reference"
