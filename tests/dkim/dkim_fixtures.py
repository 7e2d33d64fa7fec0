"""pytest fixtures for DKIM interop tests: throwaway keys, a DNS test bed publishing them, and
the peer harness (:mod:`tests.dkim.peers`) bound to it. All three are session-scoped: keys
take ~0.1-0.5 s to generate and the test bed ~0.3 s to start, and nothing here changes after
start. A test that needs different DNS data starts its own bed (``dns_testbed_factory``) and
builds ``DkimPeers(bed.nameserver, tmp_path)`` on it.

Fixtures
--------
``dkim_keys``   :class:`DkimKeys`: ``rsa2048`` (example.test, s=rsa2048), ``rsa1024``
                (s=rsa1024), ``ed25519`` (s=ed), ``other`` (other.test, s=sel, RSA 2048),
                and ``revoked``/``broken``: the rsa2048 private key claiming the selectors
                whose records are ``p=`` (revoked) and garbage, so signatures made with them
                must not verify anywhere. Generated at run time, never committed.
``dkim_dns``    :class:`DkimDns`: a started test bed (the default data set of
                ``tests.testbed.dns_fixtures`` plus the records above and ``other.test``) and
                the libunbound file OpenDKIM needs to use it.
``dkim_peers``  :class:`~tests.dkim.peers.DkimPeers` bound to ``dkim_dns``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.dkim.peers import DkimKey, DkimPeers, generate_key, write_libunbound_conf
from tests.testbed.dns_servers import DnsTestbed, LocalZone, Record, txt

DKIM_DOMAIN = "example.test"
OTHER_DOMAIN = "other.test"
REVOKED_SELECTOR = "revoked"
BROKEN_SELECTOR = "broken"
MISSING_SELECTOR = "nokey"  # no record at all: NXDOMAIN
REVOKED_RECORD = "v=DKIM1; k=rsa; p="
# Valid base64 that is no public key ("this is not a public key, only text").
BROKEN_RECORD = "v=DKIM1; k=rsa; p=dGhpcyBpcyBub3QgYSBwdWJsaWMga2V5LCBvbmx5IHRleHQ="
KEY_TTL = 3600


@dataclass(frozen=True)
class DkimKeys:
    rsa2048: DkimKey
    rsa1024: DkimKey
    ed25519: DkimKey
    other: DkimKey

    @property
    def revoked(self) -> DkimKey:
        """Signs with s=revoked: the published record is ``p=``."""
        return self.rsa2048.with_selector(REVOKED_SELECTOR)

    @property
    def broken(self) -> DkimKey:
        """Signs with s=broken: the published record's p= is not a key."""
        return self.rsa2048.with_selector(BROKEN_SELECTOR)

    @property
    def missing(self) -> DkimKey:
        """Signs with s=nokey: nothing is published there."""
        return self.rsa2048.with_selector(MISSING_SELECTOR)

    def published(self) -> tuple[DkimKey, ...]:
        """The keys whose public half is in DNS."""
        return (self.rsa2048, self.rsa1024, self.ed25519, self.other)


def dkim_records(keys: DkimKeys) -> list[Record]:
    """Every TXT record the DKIM test DNS publishes (RSA 2048 records are split into 255-byte
    character-strings by :func:`txt`, as DNS requires)."""
    records = [txt(key.record_name, key.public_record, KEY_TTL) for key in keys.published()]
    records += [
        txt(f"{REVOKED_SELECTOR}._domainkey.{DKIM_DOMAIN}", REVOKED_RECORD, KEY_TTL),
        txt(f"{BROKEN_SELECTOR}._domainkey.{DKIM_DOMAIN}", BROKEN_RECORD, KEY_TTL),
    ]
    return records


def dkim_local_zones(keys: DkimKeys) -> list[LocalZone]:
    """The default host data with the DKIM records added to example.test, plus other.test."""
    # Imported here: a plugin module imported before pytest registers dns_fixtures as a plugin
    # would stop pytest from assertion-rewriting it (PytestAssertRewriteWarning).
    from tests.testbed.dns_fixtures import DEFAULT_LOCAL_ZONES

    records = dkim_records(keys)
    zones = []
    for zone in DEFAULT_LOCAL_ZONES:
        if zone.name == DKIM_DOMAIN + ".":
            own = [r for r in records if r.name.endswith(f".{DKIM_DOMAIN}.")]
            zone = LocalZone(zone.name, [*zone.records, *own], zone.kind, zone.soa,
                             zone.negative_ttl)
        zones.append(zone)
    zones.append(LocalZone(OTHER_DOMAIN,
                           [r for r in records if r.name.endswith(f".{OTHER_DOMAIN}.")]))
    return zones


@dataclass(frozen=True)
class DkimDns:
    bed: DnsTestbed
    resolver_conf: Path
    """libunbound configuration forwarding to ``bed``, for OpenDKIM's ResolverConfiguration."""

    @property
    def nameserver(self) -> str:
        return self.bed.nameserver

    @property
    def address(self) -> str:
        return self.bed.address

    @property
    def port(self) -> int:
        return self.bed.port


@pytest.fixture(scope="session")
def dkim_keys(tmp_path_factory: pytest.TempPathFactory) -> DkimKeys:
    directory = tmp_path_factory.mktemp("dkim-keys")
    return DkimKeys(
        rsa2048=generate_key(directory, DKIM_DOMAIN, "rsa2048", "rsa", 2048),
        rsa1024=generate_key(directory, DKIM_DOMAIN, "rsa1024", "rsa", 1024),
        ed25519=generate_key(directory, DKIM_DOMAIN, "ed", "ed25519"),
        other=generate_key(directory, OTHER_DOMAIN, "sel", "rsa", 2048),
    )


@pytest.fixture(scope="session")
def dkim_dns(testbed_root: Path, loopback: str, dkim_keys: DkimKeys) -> Iterator[DkimDns]:
    from tests.testbed.dns_fixtures import DEFAULT_ZONES

    # testbed_root, not a pytest tmp dir: rbldnsd runs unprivileged and must enter it.
    directory = Path(tempfile.mkdtemp(prefix="dns-dkim-", dir=testbed_root))
    directory.chmod(0o755)
    bed = DnsTestbed(directory / "dns", loopback, DEFAULT_ZONES, dkim_local_zones(dkim_keys))
    bed.start()
    try:
        conf = write_libunbound_conf(directory / "libunbound.conf", bed.address, bed.port)
        yield DkimDns(bed, conf)
    finally:
        bed.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def dkim_peers(dkim_dns: DkimDns, tmp_path_factory: pytest.TempPathFactory) -> DkimPeers:
    return DkimPeers(dkim_dns.nameserver, tmp_path_factory.mktemp("dkim-peers"),
                     resolver_conf=dkim_dns.resolver_conf)
