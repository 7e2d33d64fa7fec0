"""Turn the booted Debian into the guide's mail server with postward, as an admin would.

The steps follow README.md's production path, in its order: install the .deb, put the DKIM key
in place, write postward.conf and the guide's files (postfwd.cf, opendkim.conf with its
KeyTable/SigningTable/TrustedHosts), ``postward postfix-config --apply`` and ``postward
dovecot-config --apply``, then ``systemctl enable --now`` the three units. What the base tree
lacks of the guide's server (its MySQL users) is replaced by the smallest equivalent: a
passwd-file with two users and the guide's static userdb (uid=mail).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tests.dkim.guide_files import (
    GUIDE_CONF,
    GUIDE_KEY_TABLE,
    GUIDE_SIGNING_TABLE,
    GUIDE_TRUSTED_HOSTS,
)
from tests.system.container import CLIENT_IPS, WORLD_IP, Container
from tests.system.world import SINK_PORT

UNITS = ("postward-policyd.service", "postward-dkim.service", "postward-classifierd.service")
GUIDE_RULES = Path(__file__).parents[1] / "policyd" / "rules" / "guide.cf"
USERS = {"bob@example.test": "bob-secret", "alice@example.test": "alice-secret"}
SELECTOR = "mail"
DOMAIN = "example.test"

MAIN_CF = f"""\
# The guide's server, reduced to what the whole-system test needs.
compatibility_level = 3.6
myhostname = mx.{DOMAIN}
mydomain = {DOMAIN}
myorigin = $mydomain
mydestination = localhost
inet_interfaces = all
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination
virtual_mailbox_domains = {DOMAIN}
virtual_mailbox_maps = inline:{{ {', '.join(f'{u}=ok' for u in USERS)} }}
virtual_transport = lmtp:unix:private/dovecot-lmtp
# Outbound mail goes to the world's MX (smtp-sink), by address: no MX lookups needed.
relayhost = [{WORLD_IP}]:{SINK_PORT}
# Deferred mail (a filter that exited 75 while its daemon restarted) is retried within seconds.
queue_run_delay = 2s
minimal_backoff_time = 2s
maximal_backoff_time = 4s
"""

# Changed in the package's postward.conf, where its commented default stands, as an admin does.
POSTWARD_SETTINGS = {
    # Short, so the test's retry comes soon; the rest is postgrey's behaviour.
    ("greylist", "delay"): "3s",
    # Dovecot's LMTP, so delivery needs no setuid helper (the pipe runs as postward).
    ("classifier", "delivery_agent"): "lmtp:unix:/run/dovecot/lmtp",
}

DOVECOT_CONF = """\
# The guide's 10-mail.conf / 10-auth.conf / auth-sql.conf.ext, with a passwd-file for its MySQL.
protocols = imap lmtp
mail_location = maildir:/var/mail/vhosts/%d/%n
mail_privileged_group = mail
first_valid_uid = 0
auth_mechanisms = plain login
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u /etc/dovecot/users
}
userdb {
  driver = static
  args = uid=mail gid=mail home=/var/mail/vhosts/%d/%n
}
# Sieve's fileinto "Spam" makes the mailbox on first use.
lda_mailbox_autocreate = yes
# The guide's Spam rule for every user (postward dovecot-config installs and compiles it).
plugin {
  sieve_before = /etc/dovecot/sieve/dspam.sieve
}
service lmtp {
  unix_listener /var/spool/postfix/private/dovecot-lmtp {
    mode = 0660
    user = postfix
    group = postfix
  }
}
"""



@dataclass
class InstallReport:
    """What the package did on install, before the admin enabled anything."""
    enabled: dict[str, str]
    active: dict[str, bool]
    key_mode: str


def uncomment(text: str, settings: dict[tuple[str, str], str]) -> str:
    """Set ``key = value`` on the line of the commented default ``# key = ...`` in its section."""
    lines, section, todo = [], "", dict(settings)
    for line in text.splitlines():
        header = re.fullmatch(r"\[(\w+)\]", line.strip())
        if header:
            section = header.group(1)
        key = re.match(r"#\s*(\w+) =", line)
        if key and (section, key.group(1)) in todo:
            line = f"{key.group(1)} = {todo.pop((section, key.group(1)))}"
        lines.append(line)
    assert not todo, f"no commented default for {todo}"
    return "\n".join(lines) + "\n"


def install_package(container: Container, deb: Path) -> InstallReport:
    target = container.path("/root") / deb.name
    target.write_bytes(deb.read_bytes())
    container.run(["apt-get", "install", "-y", "-q", f"/root/{deb.name}"], timeout=600)
    enabled = {u: container.run(["systemctl", "is-enabled", u], check=False).stdout.strip()
               for u in UNITS}
    active = {u: container.unit_active(u) for u in UNITS}
    key_mode = container.run(["stat", "-c", "%a %U:%G", "/etc/postward/keys"]).stdout.strip()
    return InstallReport(enabled=enabled, active=active, key_mode=key_mode)


def make_dkim_key(container: Container) -> dict[str, str]:
    """``postward dkim genkey`` in the container; the record the world's DNS must publish."""
    container.sh(f"cd /etc/postward/keys && postward dkim genkey -d {DOMAIN} -s {SELECTOR}"
                 f" && chown postward:postward {SELECTOR}.private"
                 f" && chmod 0600 {SELECTOR}.private")
    txt = container.path(f"/etc/postward/keys/{SELECTOR}.txt").read_text()
    value = "".join(re.findall(r'"([^"]*)"', txt))
    assert "p=" in value, txt
    return {f"{SELECTOR}._domainkey.{DOMAIN}": value}


def configure(container: Container) -> None:
    c = container
    c.write("/etc/postfix/main.cf", MAIN_CF)
    # The guide's postfwd.cf, with the one-line migration from postgrey (docs/migration.md).
    rules = GUIDE_RULES.read_text()
    assert "action=ask(127.0.0.1:10023)" in rules
    c.write("/etc/postfix/postfwd.cf", rules.replace("action=ask(127.0.0.1:10023)",
                                                     "action=greylist()"))
    conf = c.path("/etc/postward/postward.conf")
    conf.write_text(uncomment(conf.read_text(), POSTWARD_SETTINGS))
    # The guide's opendkim.conf as written; its KeyTable and SigningTable for this domain, with
    # the key where the package keeps keys.
    c.write("/etc/opendkim.conf", GUIDE_CONF)
    c.write("/etc/opendkim/KeyTable", GUIDE_KEY_TABLE.replace("tristor.ro", DOMAIN).replace(
        "/etc/opendkim/mail", f"/etc/postward/keys/{SELECTOR}.private"))
    c.write("/etc/opendkim/SigningTable", GUIDE_SIGNING_TABLE.replace("tristor.ro", DOMAIN))
    c.write("/etc/opendkim/TrustedHosts", GUIDE_TRUSTED_HOSTS)

    c.write("/etc/dovecot/conf.d/99-mailserver.conf", DOVECOT_CONF)
    c.write("/etc/dovecot/users", "".join(f"{u}:{p}\n" for u, p in USERS.items()), 0o640)
    c.sh("newaliases && chgrp dovecot /etc/dovecot/users"
         " && sed -i 's/^!include auth-system.conf.ext/#&/' /etc/dovecot/conf.d/10-auth.conf"
         " && install -d -o mail -g mail /var/mail/vhosts")

    c.run(["postward", "postfix-config", "--apply"])
    c.run(["postward", "dovecot-config", "--apply"])
    c.run(["postward", "check-config"])
    c.run(["systemctl", "enable", "--now", *UNITS])
    c.run(["systemctl", "restart", "dovecot.service", "postfix.service"])


def train(container: Container, user: str, spam_words: str, ham_words: str) -> None:
    """Initial training, as from the user's old mail: both classes came in through this MX
    from MIME-aware clients and were delivered (Return-Path:, which pipe's R flag also puts on
    every message the filter sees), so the header tokens Postfix, the LDA and the world's client
    add (Return-Path:, Received:, Content-Type: ...) are no evidence either way. (Missing from
    the corpus, such a header seen once in a later ham message counts as strong ham evidence:
    with 20 messages a class one sighting is a lot, and a spam carrying it scores 0.5.)"""
    received = (f"Received: from client.sender.test (unknown [{CLIENT_IPS['clean']}])\n"
                f"\tby mx.{DOMAIN} (Postfix) with ESMTP id 4AB12C3D4E5\n"
                f"\tfor <{user}>; Wed, 25 Nov 2026 12:00:00 +0000 (UTC)\n")
    for label, words in (("spam", spam_words), ("innocent", ham_words)):
        folder = f"/root/corpus/{label}"
        for i in range(20):
            container.write(f"{folder}/{i}.eml",
                            f"Return-Path: <someone@sender.test>\n"
                            f"{received}From: someone@sender.test\nTo: {user}\n"
                            f"Subject: {words.split()[i % 5]} {i}\n"
                            f"Message-ID: <{label}-{i}@sender.test>\n"
                            f'Content-Type: text/plain; charset="utf-8"\n'
                            f"Content-Transfer-Encoding: 7bit\nMIME-Version: 1.0\n\n"
                            f"{words}\n{words.upper()}\n")
        container.run(["postward", "classifier", "train", "--user", user, "--class", label,
                       folder])
