"""The [dkim] section of postward.conf: where the OpenDKIM-format config is, and what
postward-dkim adds to it. Everything OpenDKIM itself configures stays in opendkim.conf, so the
guide's files work unchanged."""

from __future__ import annotations

from dataclasses import dataclass

from postward.core import config_values as v
from postward.core.config import setting


@dataclass(frozen=True)
class DkimSettings:
    opendkim_conf: str = setting("/etc/opendkim.conf", v.non_empty,
                                 "the OpenDKIM config file (with its KeyTable, SigningTable, "
                                 "TrustedHosts) postward-dkim reads")
    socket: str = setting("", v.text,
                          "where to listen, in OpenDKIM's Socket syntax (inet:8891@localhost, "
                          "local:/path); empty: opendkim.conf's Socket")
    on_error: str = setting("tempfail", v.choice("tempfail", "accept"),
                            "what a message gets when postward-dkim fails on it: tempfail "
                            "(Postfix retries it later; nothing leaves unsigned) or accept "
                            "(it flows on unsigned / unverified)")
    milter_timeout: float = setting(300.0, v.duration(1, 7200),
                                    "how long libmilter waits for Postfix between steps")
    key_lookup_budget: float = setting(5.0, v.duration(0.1, 60),
                                       "longest one signature's key lookup may take")
    max_signatures: int = setting(0, v.integer(0, 50),
                                  "signatures verified per message at most (0: opendkim.conf's "
                                  "MaximumSignaturesToVerify)")
    allow_non_loopback: bool = setting(False, v.boolean,
                                       "allow an inet socket on a non-loopback address (the "
                                       "milter protocol has no authentication)")
    arc_verify: bool = setting(True, v.boolean,
                               "check ARC chains (RFC 8617) on incoming mail; arc= goes into "
                               "Authentication-Results")
    arc_seal_key: str = setting("", v.text,
                                "RSA key file to ARC-seal incoming mail with (a forwarding host: "
                                "mailing lists, aliases to other domains); empty: no sealing")
    arc_seal_domain: str = setting("", v.text, "d= of the ARC seal")
    arc_seal_selector: str = setting("", v.text, "s= of the ARC seal")
    arc_max_message_size: int = setting(10 * 1024 * 1024, v.integer(0, 1 << 31),
                                        "ARC needs the whole message in hand: bigger messages "
                                        "(bytes) pass without ARC checks or seals")

    def check(self) -> list[tuple[str, str]]:
        seal = (self.arc_seal_key, self.arc_seal_domain, self.arc_seal_selector)
        if any(seal) and not all(seal):
            return [("arc_seal_key", "ARC sealing needs arc_seal_key, arc_seal_domain and "
                                     "arc_seal_selector together")]
        return []
