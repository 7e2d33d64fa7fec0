"""`apt install ./postward_*.deb` on a fresh Debian 12, which has none of its dependencies:
apt fetches them from Debian's mirror (the one registry this machine reaches), the maintainer
scripts run without a running systemd (as in an image build or a chroot), then reinstall and
purge. The booted whole-system test starts from a server that already has Postfix, Dovecot
and the dependencies; this one checks the package's own Depends and scripts.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.container import mount_overlay, unmount
from tests.system.deb_build import build_deb
from tests.system.debian_tree import fresh_tree

pytestmark = [pytest.mark.integration, pytest.mark.system, pytest.mark.timeout(1800)]

UNITS = ("postward-policyd.service", "postward-dkim.service", "postward-classifierd.service")


class Tree:
    def __init__(self, root: Path, deb: Path) -> None:
        self.root = root
        self.deb = deb

    def run(self, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``script`` in the tree (not booted), with the machine's network for apt."""
        done = subprocess.run(
            ["systemd-nspawn", "-q", "--register=no", "--keep-unit", "-D", str(self.root),
             "--resolv-conf=copy-host", f"--bind-ro={self.deb}:/root/{self.deb.name}",
             "env", "DEBIAN_FRONTEND=noninteractive", "sh", "-ec", script],
            capture_output=True, text=True, timeout=900, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"{script}: exit {done.returncode}\n{done.stdout}\n"
                                 f"{done.stderr}")
        return done


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tree]:
    workdir = tmp_path_factory.mktemp("fresh")
    deb = build_deb(workdir)
    root = mount_overlay(fresh_tree(), workdir / "overlay")
    try:
        yield Tree(root, deb)
    finally:
        unmount(root)


def test_apt_installs_the_deb_and_its_dependencies_on_a_fresh_debian(tree: Tree) -> None:
    assert tree.run("dpkg-query -W python3.11 2>/dev/null || echo absent").stdout.strip() \
        .endswith("absent"), "the fresh tree should not have the dependencies yet"
    tree.run(f"apt-get update -q && apt-get install -y -q /root/{tree.deb.name}")
    out = tree.run("dpkg-query -W -f='${Status}\\n' postward python3.11 libmilter1.0.1").stdout
    assert out.split("\n")[:3] == ["install ok installed"] * 3, out
    # The maintainer scripts' work: user, directories, units installed but not enabled.
    assert tree.run("id -un postward").stdout.strip() == "postward"
    assert tree.run("stat -c '%a %U:%G' /etc/postward/keys").stdout.strip() == \
        "700 postward:postward"
    assert tree.run("stat -c '%a %U:%G' /var/lib/postward").stdout.strip() == \
        "750 postward:postward"
    enabled = tree.run(f"systemctl is-enabled {' '.join(UNITS)}", check=False).stdout.split()
    assert enabled == ["disabled"] * 3, enabled
    # The commands work from the private venv with Debian's python3.11.
    assert "ok" in tree.run("postward check-config").stdout
    rules = tree.run("echo 'id=R1 ; client_address=192.0.2.1 ; action=REJECT' > /tmp/r.cf"
                     " && postward-policyd -f /tmp/r.cf -C").stdout
    assert 'id->"R1"; action->"REJECT"' in rules, rules  # postfwd -C's format
    # The pipe client as master.cf runs it: a bad option defers (75), never bounces.
    filt = tree.run("/opt/postward/bin/python -I -S /opt/postward/lib/postward-filter.py"
                    " --no-such-option </dev/null", check=False)
    assert filt.returncode == 75, filt.stderr
    assert tree.run("test -f /usr/share/postward/postfix-snippets/policyd.main.cf"
                    " && echo found").stdout.strip() == "found"


def test_reinstall_then_purge_keeps_the_admins_keys(tree: Tree) -> None:
    tree.run(f"apt-get install -y -q --reinstall /root/{tree.deb.name}")
    tree.run("install -m 0600 -o postward -g postward /dev/null /etc/postward/keys/mail.private")
    tree.run("apt-get purge -y -q postward")
    status = tree.run("dpkg-query -W -f='${Status}' postward 2>&1", check=False).stdout
    assert "ok installed" not in status and "config-files" not in status, status
    gone = tree.run("test -e /opt/postward || echo gone; test -e /etc/postward/postward.conf"
                    " || echo conf-gone; test -f /etc/postward/keys/mail.private && echo key-kept")
    assert gone.stdout.split() == ["gone", "conf-gone", "key-kept"], gone.stdout
