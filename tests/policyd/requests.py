"""Postfix policy requests for the postfwd/postward differential tests.

* :func:`postfix_request` builds a complete, realistic request (every attribute Postfix 3.7
  sends) for each protocol_state, IPv4 or IPv6, with the DNS test bed's addresses and names.
* :func:`corpora` pairs each rule file in ``rules/`` with requests that make every rule both hit
  and miss. Rules there are picked by ``policy_context`` (a real attribute; Postfix fills it
  from ``smtpd_policy_service_policy_context``), so :func:`probe` is a realistic RCPT request
  carrying the rule's context and the attributes under test.
* :func:`policy_requests` / :func:`request_lists` are hypothesis strategies: attribute values
  drawn from pools that make the corpora's rules hit often, plus noise (unicode, empty, odd
  case, over-long values, missing and unknown attributes).
* :func:`now_rules` writes date/time rules relative to the current moment, with margins, and
  says which of them must hit.

Requests never carry CR or LF (the protocol has no way to send them) and always carry
``request=smtpd_access_policy`` (postfwd answers nothing else).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from hypothesis import strategies as st

from tests.testbed.dns_fixtures import (
    CLIENT6_CLEAN,
    CLIENT6_LISTED,
    CLIENT_ALLOWED,
    CLIENT_CLEAN,
    CLIENT_IN_RANGE,
    CLIENT_ON_ONE,
    CLIENT_ON_THREE,
)

HERE = Path(__file__).resolve().parent
RULES_DIR = HERE / "rules"
GOLDEN_DIR = HERE / "golden"

Request = dict[str, str]
State = Literal["CONNECT", "EHLO", "HELO", "MAIL", "RCPT", "DATA", "END-OF-MESSAGE", "VRFY",
                "ETRN"]
STATES: tuple[State, ...] = ("CONNECT", "EHLO", "HELO", "MAIL", "RCPT", "DATA", "END-OF-MESSAGE",
                             "VRFY", "ETRN")

# PTR names of the test bed's clients ("unknown" where it has none, as Postfix says).
CLIENT_NAMES = {
    CLIENT_ON_THREE: "dsl-66.dynamic.example.test",  # PTR, but not forward-confirmed
    CLIENT_ON_ONE: "mx.one-list.example.test",
    CLIENT_CLEAN: "mail.clean.example.test",
    CLIENT_ALLOWED: "relay.allowed.example.test",
    CLIENT_IN_RANGE: "unknown",
    CLIENT6_LISTED: "v6.spammer.example.test",
    CLIENT6_CLEAN: "unknown",
    "192.0.2.25": "mail.example.test",
}
# Postfix's client_name is "unknown" unless the PTR name is forward-confirmed.
UNCONFIRMED = {CLIENT_ON_THREE}

# The attributes Postfix 3.7 sends, in its order.
ATTRIBUTES = (
    "request", "protocol_state", "protocol_name", "helo_name", "queue_id", "sender", "recipient",
    "recipient_count", "client_address", "client_name", "reverse_client_name", "instance",
    "sasl_method", "sasl_username", "sasl_sender", "size", "ccert_subject", "ccert_issuer",
    "ccert_fingerprint", "ccert_pubkey_fingerprint", "encryption_protocol", "encryption_cipher",
    "encryption_keysize", "etrn_domain", "stress", "policy_context", "server_address",
    "server_port", "compatibility_level", "mail_version", "client_port",
)


def postfix_request(
    state: State = "RCPT",
    *,
    client: str = CLIENT_CLEAN,
    client_name: str | None = None,
    helo: str | None = None,
    sender: str = "carol@clean.example.test",
    recipients: tuple[str, ...] = ("dave@example.test",),
    size: int = 2048,
    sasl_username: str = "",
    tls: bool = True,
    **overrides: str,
) -> Request:
    """A request as Postfix 3.7's smtpd sends it at ``state`` (overrides win, "" included)."""
    name = client_name if client_name is not None else CLIENT_NAMES.get(client, "unknown")
    reverse = name
    if client in UNCONFIRMED and client_name is None:
        name = "unknown"
    greeted = state != "CONNECT"
    in_mail = state in ("MAIL", "RCPT", "DATA", "END-OF-MESSAGE")
    after_rcpt = state in ("DATA", "END-OF-MESSAGE")
    recipient = {"RCPT": recipients[0], "VRFY": recipients[0]}.get(state, "")
    if after_rcpt and len(recipients) == 1:
        recipient = recipients[0]
    request: Request = {
        "request": "smtpd_access_policy",
        "protocol_state": state,
        "protocol_name": "SMTP" if state == "HELO" else ("ESMTP" if greeted else ""),
        "helo_name": (helo if helo is not None else reverse if reverse != "unknown"
                      else f"[{client}]") if greeted else "",
        "queue_id": "8045F2AB23" if after_rcpt else "",
        "sender": sender if in_mail else "",
        "recipient": recipient,
        "recipient_count": str(len(recipients)) if after_rcpt else "0",
        "client_address": client,
        "client_name": name,
        "reverse_client_name": reverse,
        "instance": "4f1a.6560b1e2.8c0d1.0" if in_mail else "",
        "sasl_method": "PLAIN" if sasl_username else "",
        "sasl_username": sasl_username,
        "sasl_sender": "",
        "size": str(size) if state in ("MAIL", "RCPT", "DATA", "END-OF-MESSAGE") else "0",
        "ccert_subject": "",
        "ccert_issuer": "",
        "ccert_fingerprint": "",
        "ccert_pubkey_fingerprint": "",
        "encryption_protocol": "TLSv1.3" if tls and greeted else "",
        "encryption_cipher": "TLS_AES_256_GCM_SHA384" if tls and greeted else "",
        "encryption_keysize": "256" if tls and greeted else "0",
        "etrn_domain": "example.test" if state == "ETRN" else "",
        "stress": "",
        "policy_context": "",
        "server_address": "198.51.100.25",
        "server_port": "25",
        "compatibility_level": "3.6",
        "mail_version": "3.7.11",
        "client_port": "40312",
    }
    request.update(overrides)
    return request


def every_state(**kwargs: str) -> list[Request]:
    """One request per protocol_state, IPv4 and IPv6 clients, listed and clean."""
    out = []
    for client in (CLIENT_CLEAN, CLIENT_ON_THREE, CLIENT_ON_ONE, CLIENT6_LISTED, CLIENT6_CLEAN):
        for state in STATES:
            out.append(postfix_request(state, client=client, **kwargs))
    return out


def probe(context: str, **attributes: str) -> Request:
    """A realistic RCPT request that selects the rules with ``policy_context==context``."""
    return postfix_request("RCPT", policy_context=context, **attributes)


def without(request: Request, *names: str) -> Request:
    """``request`` with some attributes left out altogether (not sent, not even empty)."""
    return {k: v for k, v in request.items() if k not in names}


# --- request sets, one per rule file ---------------------------------------------------------

def items_attributes_requests() -> list[Request]:
    p = probe
    return [
        p("request"),
        p("protocol_state"), postfix_request("MAIL", policy_context="protocol_state"),
        p("protocol_name"), p("protocol_name", protocol_name="SMTP"),
        p("helo_name"), p("helo_name", helo_name="localhost"),
        # postfwd's request cache ignores queue_id and instance: client_port tells these apart
        p("queue_id", queue_id="8045F2AB23"), p("queue_id", client_port="40313"),
        p("sender", sender="Alice@Example.TEST"), p("sender", sender="alice@example.test.evil"),
        p("recipient"), p("recipient", recipient="dave@example.test.evil"),
        p("client_name"), p("client_name", client_name="unknown"),
        p("reverse_client_name"), p("reverse_client_name", reverse_client_name="unknown"),
        p("instance"), p("instance", instance="4f1a.6560b1e2.8c0d1.1", client_port="40313"),
        p("sasl_method", sasl_method="PLAIN"), p("sasl_method", sasl_method="LOGIN"),
        p("sasl_username", sasl_username="bob"), p("sasl_username"),
        p("sasl_sender", sasl_sender="bob@example.test"), p("sasl_sender"),
        p("ccert_subject", ccert_subject="solaris9.porcupine.org"), p("ccert_subject"),
        p("ccert_issuer", ccert_issuer="Wietse+20Venema"),
        p("ccert_issuer", ccert_issuer="Wietse+20Venema+20Jr"),
        p("ccert_fingerprint", ccert_fingerprint="c2:9d:f4:87:71:73:73:d9:18:e7:c2:f3:c1:da:6e:04"),
        p("ccert_fingerprint", ccert_fingerprint="C2:9D:F4:87:71:73:73:D9:18:E7:C2:F3:C1:DA:6E:05"),
        p("ccert_pubkey_fingerprint", ccert_pubkey_fingerprint="68:B3:29:DA:98:93:E3:40"),
        p("ccert_pubkey_fingerprint", ccert_pubkey_fingerprint="00:68:B3:29"),
        p("encryption_protocol"), p("encryption_protocol", encryption_protocol="TLSv1.2"),
        p("encryption_cipher"),
        p("encryption_cipher", encryption_cipher="ECDHE-RSA-AES256-GCM-SHA384"),
        postfix_request("ETRN", policy_context="etrn_domain"),
        postfix_request("ETRN", policy_context="etrn_domain", etrn_domain="other.test"),
        p("stress", stress="yes"), p("stress"),
        p("server_address"), p("server_address", server_address="198.51.100.250"),
        p("server_port", server_port="587"), p("server_port"),
        p("compatibility_level"), p("compatibility_level", compatibility_level="3.60"),
        p("mail_version"), p("mail_version", mail_version="3.8.1"),
        p("client_port"), p("client_port", client_port="80"), p("client_port", client_port=""),
        p("size", size="10000"), p("size", size="9999"), p("size", size="1e5"),
        p("size", size="12abc"), p("size", size=" 20000"), p("size", size=""),
        postfix_request("DATA", policy_context="recipient_count",
                        recipients=("a@example.test", "b@example.test")),
        postfix_request("DATA", policy_context="recipient_count"),
        p("encryption_keysize"), p("encryption_keysize", encryption_keysize="128"),
        p("client_address", client_address="192.0.2.25"),
        p("client_address", client_address=CLIENT_ON_ONE),
        p("client_address", client_address=CLIENT6_LISTED),
        p("sender_localpart", sender="Alice@example.test"), p("sender_localpart", sender=""),
        p("sender_domain", sender="x@example.test"),
        p("sender_domain", sender="x@sub.example.test"),
        p("sender_domain", sender="a@b@example.test"), p("sender_domain", sender="example.test"),
        p("recipient_localpart", recipient="postmaster@example.test"),
        p("recipient_localpart", recipient="postmaster"),
        p("recipient_domain"), p("recipient_domain", recipient="dave@other.test"),
        # no "@" in the recipient: postfwd keeps the sender's parts (a stale Perl match)
        p("recipient_domain", recipient="", sender="x@example.test"),
        p("recipient_domain", recipient="no-at-sign", sender="x@example.test"),
        p("version"),
        p("reverse_address"), p("reverse_address", client_address=CLIENT_ON_ONE),
        p("derived_override", sender_domain="evil.example"),
        p("derived_override", sender="x@evil.example"),
        p("custom", x_custom_flag="1"), p("custom"),
        p("absent"), p("absent", x_never_sent="anything"),
        p("matches"),
        p("or_and", sender="alice@example.test"), p("or_and", sender="BOB@example.test"),
        p("or_and", sender="carol@example.test"),
        p("or_and", sender="alice@example.test", recipient="dave@other.test"),
        p("unselected"),
    ]


def operators_requests() -> list[Request]:
    p = probe
    out = [
        p("s_eq", sender="alice@example.test"), p("s_eq", sender="bob@example.test"),
        p("s_slashes", sender="alice@example.test"), p("s_slashes", sender="malice@example.test"),
        p("s_eqeq", sender="alice@example.test"), p("s_eqeq", sender="alice@example.testx"),
        p("s_ne", sasl_username="carol"), p("s_ne", sasl_username="BOB"), p("s_ne"),
        p("s_match", helo_name="mail7.example.test"), p("s_match", helo_name="smtp.example.test"),
        p("s_match2", helo_name="MX.example.test"), p("s_match2", helo_name="mx1.example.test"),
        p("s_nomatch", helo_name="localhost"), p("s_nomatch", helo_name="mail.example.test"),
        p("s_neg", sender="x@other.test"), p("s_neg", sender="x@example.test"),
        p("s_negparen", sasl_username="carol"), p("s_negparen", sasl_username="alice"),
        p("s_negparen"),
        p("s_neg_eqeq", sasl_username="carol"), p("s_neg_eqeq", sasl_username="bob"),
        p("s_neg_ne", sasl_username="bob"), p("s_neg_ne", sasl_username="carol"), p("s_neg_ne"),
        p("s_var_eq", client_name="mail.example.test", helo_name="example.test"),
        p("s_var_eq", client_name="mail.example.test", helo_name="other.test"),
        p("s_var_eq", client_name="mailXexample.test", helo_name="mail.example.test"),
        p("s_var_eqeq", client_name="MAIL.example.test", helo_name="mail.EXAMPLE.test"),
        p("s_var_eqeq", client_name="mail.example.test", helo_name="example.test"),
        p("s_var_neg", client_name="mail.example.test", helo_name="other.test"),
        p("s_var_neg", client_name="mail.example.test", helo_name="mail.example.test"),
        p("s_var_neg", client_name="", helo_name="mail.example.test"),
        p("s_var_negparen", client_name="mail.example.test", helo_name="other.test"),
        p("s_var_negparen", client_name="mail.example.test", helo_name="mail.example.test"),
        p("s_var_in_regex", sasl_username="bob", sender="bob@example.test"),
        p("s_var_in_regex", sasl_username="bob", sender="^bob@example.test"),
    ]
    for name in ("s_lt", "s_gt", "s_le", "s_ge", "s_ge2", "s_le2", "s_notle", "s_notge"):
        out += [p(name, x_level=v) for v in ("4", "5", "6", "5.5abc", "")]
    for name in ("n_eq", "n_eqeq", "n_ne", "n_lt", "n_gt", "n_le", "n_ge", "n_notle", "n_notge",
                 "n_regex", "n_neg"):
        out += [p(name, size=v) for v in ("999", "1000", "1001", "1000.0", "")]
    out += [
        p("c_net", client_address="192.0.2.200"), p("c_net", client_address="192.0.3.1"),
        p("c_net", client_address="192.000.002.066"),
        p("c_host", client_address=CLIENT_ON_ONE), p("c_host", client_address="198.51.100.24"),
        p("c_ne", client_address=CLIENT_CLEAN), p("c_ne", client_address=CLIENT_ON_THREE),
        p("c_ne", client_address=""),
        p("c_regex", client_address="192.0.2.1"), p("c_regex", client_address=CLIENT_CLEAN),
        p("c_list", client_address="10.1.2.3"), p("c_list", client_address=CLIENT_IN_RANGE),
        p("c_list", client_address="172.20.0.1"), p("c_list", client_address=CLIENT_CLEAN),
        p("c_all", client_address=CLIENT_CLEAN), p("c_all", client_address=CLIENT6_CLEAN),
        p("c_all", client_address=""),
        p("c_neg", client_address=CLIENT_CLEAN), p("c_neg", client_address=CLIENT_ON_THREE),
        p("c_v6", client_address=CLIENT6_LISTED),
        p("c_v6_literal", client_address=CLIENT6_LISTED),
        p("c_v6_literal", client_address=CLIENT6_CLEAN),
        p("c_v6_regex", client_address=CLIENT6_CLEAN), p("c_v6_regex", client_address="::1"),
        p("unselected"),
    ]
    return out


def macros_files_requests() -> list[Request]:
    p = probe
    return [
        p("m_one_line", sender="macro@example.test"), p("m_one_line"),
        p("m_multi_line", helo_name="mail.example.test", client_address="192.0.2.25"),
        p("m_multi_line", helo_name="mail.example.test"),
        p("m_nested", sasl_method="plain", sasl_username="bob"),
        p("m_nested", sasl_username="bob", sasl_method=""),
        p("m_action_macro", sender="go@example.test"), p("m_action_macro"),
        p("m_later", recipient="later@example.test"), p("m_later"),
        p("m_undefined"),
        p("m_ampersands", sender="a&&b@example.test"),
        p("m_too_early", sender="late@example.test"),
        p("m_prefix", sasl_username="pre"), p("m_prefix", sasl_username="whole"),
        p("m_prefix", sasl_username="preFIX"),
        p("f_file_cidr", client_address="192.0.2.100"),
        p("f_file_cidr", client_address="192.0.2.200"),
        p("f_file_cidr", client_address=CLIENT_ON_ONE),
        p("f_file_cidr", client_address=CLIENT_ALLOWED),
        p("f_file_mixed", client_address="10.9.8.7"),
        p("f_file_mixed", client_address=CLIENT_ALLOWED),
        p("f_file_mixed", client_address=CLIENT_CLEAN),
        p("f_file_regex", sender="spam-king@example.test"),
        p("f_file_regex", sender="x@bulkmail.example"),
        p("f_file_regex", sender="x@news.bulkmail.example.test"), p("f_file_regex"),
        p("f_file_neg", sender="spam-king@example.test"), p("f_file_neg"),
        p("f_table", helo_name="mail.example.test"), p("f_table", helo_name="LOCALHOST"),
        p("f_table", helo_name="bare-key-only"), p("f_table", helo_name="OK"),
        p("f_cfile", client_address=CLIENT_ALLOWED), p("f_cfile"),
        p("f_missing", client_address="192.0.2.1"),
        p("f_lfile", sasl_username="Carol"), p("f_lfile", sasl_username="eve"),
        p("f_ltable", sender="x@spammer.example"), p("f_ltable", sender="x@example.test"),
        p("f_ltable", sender="x@554"),
        p("unselected"),
    ]


def syntax_requests() -> list[Request]:
    p = probe
    return [
        p("x_indent", sender="indent@example.test"), p("x_indent"),
        p("x_backslash", sender="backslash@example.test"), p("x_backslash"),
        p("x_mixed", sender="mixed@example.test"), p("x_mixed"),
        p("x_glued", sender="glued@example.test"),
        p("x_hash_regex", sender="a@example.test"),
        p("x_hash_action"),
        p("x_quotes", sender="quoted@example.test"), p("x_quotes", sender='"quoted@example.test"'),
        p("x_spaces", sender="spaces@example.test"), p("x_spaces"),
        p("x_empty_value", sasl_username=""), p("x_empty_value", sasl_username="bob"),
        p("x_bad_operator", sender="x@example.test"),
        p("x_invalid"), p("x_bare_word", bogus="yes"),
        p("x_upper_action", ACTION="REJECT"),
        p("x_twice"), p("x_no_id"),
        p("x_macro_brace", sender="closing@example.test"), p("x_macro_brace"),
        p("unselected"),
    ]


def actions_requests() -> list[Request]:
    contexts = ("p_reject", "p_reject_text", "p_lower", "p_defer", "p_defer_if_permit",
                "p_defer_if_reject", "p_ok", "p_dunno", "p_prepend", "p_redirect", "p_warn",
                "p_hold", "p_discard", "p_filter", "p_bcc", "p_4xx", "p_5xx", "p_class", "p_zero",
                "p_parens_text", "p_unknown_command", "p_exec", "v_attrs", "v_undefined_first",
                "v_undefined_last", "v_spaced", "v_glued", "t_set", "t_arith", "t_set_override",
                "t_set_bad", "j_jump", "j_nowhere", "n_note", "end_commands")
    out = [probe(c) for c in contexts]
    out += [
        probe("v_attrs", sender="", helo_name=""),
        probe("v_glued", sender="x@example.test"),
        probe("t_set_vars", sasl_username="bob"), probe("t_set_vars", sasl_username="alice"),
        probe("n_note", x_wait="yes"),
        probe("unselected"),
    ]
    return out


def scores_requests() -> list[Request]:
    p = probe
    return [
        p("sc_add"), p("sc_default_sign"), p("sc_math"), p("sc_set"), p("sc_comma"),
        p("sc_tiny"), p("sc_negative"), p("sc_invalid"),
        p("sc_to_4"), p("sc_to_6"), p("sc_to_8"), p("sc_to_12"), p("sc_stepwise"),
        p("sc_from_request", request_score="6"), p("sc_from_request", request_score="2"),
        p("sc_from_request", request_score="abc"),
        p("unselected"),
        # the late threshold: set by the first, applied to the second and later requests
        p("sc_late"), p("sc_late", client_port="40313"), p("sc_add", client_port="40314"),
    ]


SCORE_ARGS = ("-s", "3.5=REJECT [threshold 3.5] score $$request_score",
              "-s", "10=WARN [threshold 10]")


def dnsbl_requests() -> list[Request]:
    out: list[Request] = []
    four = (CLIENT_ON_THREE, CLIENT_ON_ONE, CLIENT_IN_RANGE, CLIENT_ALLOWED, CLIENT_CLEAN,
            CLIENT6_LISTED)
    for context in ("d_rbl", "d_rbl_reply", "d_rbl_allow", "d_rbl_no_txt", "d_rbl_list",
                    "d_rbl_file", "d_rblcount_2", "d_rblcount_all", "d_rbl_negated",
                    "d_rbl_unknown_zone", "d_counts"):
        out += [probe(context, client=client) for client in four]
    names = ("spammer.example", "news.bulkmail.example", "www.phish.example", "phish.example",
             "SPAMMER.Example", "unknown", "mail.clean.example.test")
    for context in ("d_rhsbl", "d_rhsbl_client", "d_rhsblcount_same"):
        out += [probe(context, client_name=n) for n in names]
    out += [probe("d_rhsbl_reverse_client", reverse_client_name=n) for n in names]
    for domain in ("spammer.example", "bulkmail.example", "sub.spammer.example", "example.test"):
        out.append(probe("d_rhsbl_sender", sender=f"someone@{domain}"))
    out.append(probe("d_rhsbl_sender", sender=""))
    out += [probe("d_rhsbl_helo", helo_name=n) for n in ("spammer.example", "example.test")]
    # rhsbl_helo looks at an attribute named helo_domain that Postfix never sends
    out.append(probe("d_rhsbl_helo", helo_name="spammer.example", helo_domain="x"))
    for sender in ("a@spammer.example", "a@example.test"):
        for name in ("spammer.example", "mail.clean.example.test", "unknown"):
            for context in ("d_rhsblcount_across", "d_rhsblcount_all"):
                out.append(probe(context, client_name=name, sender=sender))
    out += [
        probe("d_both", client=CLIENT_ON_ONE, sender="x@bulkmail.example"),
        probe("d_both", client=CLIENT_ON_ONE, sender="x@example.test"),
        probe("d_both", client=CLIENT_CLEAN, sender="x@bulkmail.example"),
        probe("d_label", client_name="spammer.example"),
        probe("d_label", client_name="www.phish.example"),
        probe("unselected", client=CLIENT_ON_THREE),
    ]
    return out


def dns_items_requests() -> list[Request]:
    out: list[Request] = []
    helos = ("mail.example.test", "example.test", "ns.example.test", "nowhere.example.test",
             "localhost", "[192.0.2.66]", "")
    for context in ("h_helo_address", "h_helo_unknown", "h_helo_ne"):
        out += [probe(context, helo_name=h) for h in helos]
    senders = ("x@example.test", "x@EXAMPLE.test", "x@mail.example.test", "x@other.test", "")
    for context in ("h_ns_names", "h_ns_names_eq", "h_ns_none", "h_ns_addrs", "h_mx_names",
                    "h_mx_addrs", "h_mx_addrs_miss", "h_values"):
        out += [probe(context, sender=s) for s in senders]
    out.append(probe("unselected"))
    return out


def dates_requests() -> list[Request]:
    contexts = [m.group(1) for m in re.finditer(r"policy_context==(\S+?);",
                                                (RULES_DIR / "dates.cf").read_text())]
    return [probe(c) for c in contexts] + [probe("unselected")]


def limits_requests() -> list[Request]:
    p = probe
    return [
        p("l_rate", sender="a@example.test"), p("l_rate", sender="A@EXAMPLE.test"),
        p("l_rate", sender="b@example.test"), p("l_rate", sender="a@Example.Test"),
        p("l_rate", sender="a@example.test"), p("l_rate", sender="b@example.test"),
        p("l_rate_client", client_address="192.0.2.1"),
        p("l_rate_client", client_address="192.0.2.1"),
        p("l_rate_client", client_address="192.0.2.2"),
        p("l_rate5321", sender="Bob@Example.test"), p("l_rate5321", sender="bob@example.test"),
        p("l_rate5321", sender="Bob@EXAMPLE.TEST"),
        p("l_size", sasl_username="bob", size="3000"),
        p("l_size", sasl_username="BOB", size="1500"),
        p("l_size", sasl_username="bob", size="600"), p("l_size", sasl_username="bob", size="400"),
        p("l_size", sasl_username="eve", size="9000"),
        p("l_size5321", recipient="Rcpt@example.test", size="4000"),
        p("l_size5321", recipient="rcpt@example.test", size="4000"),
        p("l_size5321", recipient="Rcpt@EXAMPLE.test", size="4000"),
        postfix_request("DATA", policy_context="l_rcpt", client=CLIENT_ON_ONE,
                        recipients=("a@x.test", "b@x.test", "c@x.test")),
        postfix_request("DATA", policy_context="l_rcpt", client=CLIENT_ON_ONE,
                        recipients=("a@x.test", "b@x.test")),
        postfix_request("DATA", policy_context="l_rcpt", client=CLIENT_ON_ONE,
                        recipients=("a@x.test",)),
        postfix_request("DATA", policy_context="l_rcpt5321", sender="Ann@x.test",
                        recipients=("a@x.test",) * 4),
        postfix_request("DATA", policy_context="l_rcpt5321", sender="ann@x.test",
                        recipients=("a@x.test",) * 4),
        postfix_request("DATA", policy_context="l_rcpt5321", sender="Ann@X.TEST",
                        recipients=("a@x.test",) * 2),
        p("l_old_syntax", sasl_username="carol"), p("l_old_syntax", sasl_username="carol"),
        p("l_nested", helo_name="h1.example.test"), p("l_nested", helo_name="h1.example.test"),
        p("l_nested", helo_name="h1.example.test"),
        p("l_missing_item"), p("l_missing_item"),
        p("l_zero_size", size="0"), p("l_zero_size", size="0"), p("l_zero_size", size="5"),
        p("unselected"),
    ]


def quit_requests() -> list[Request]:
    return [probe("q_before"), probe("q_quit"), probe("q_after")]


def ask_requests() -> list[Request]:
    p = probe
    return [
        p("k_ask", client_address=CLIENT_ON_ONE), p("k_ask", client_address=CLIENT_CLEAN),
        p("k_ask", client_address=CLIENT_ON_THREE), p("k_ask", client_address=CLIENT_ALLOWED),
        p("k_ask_ignore", client_address=CLIENT_CLEAN),
        p("k_ask_ignore", client_address=CLIENT_ON_ONE),
        p("k_dead"), p("unselected"),
    ]


def ask_server_answer(request: Mapping[str, str]) -> str:
    """What the test policy service behind ask() says (a postgrey stand-in)."""
    client = request.get("client_address", "")
    if client == CLIENT_ON_ONE:
        return "action=DEFER_IF_PERMIT Greylisted, see http://postgrey.example.test/"
    if client == CLIENT_CLEAN:
        return "action=DUNNO"
    if client == CLIENT_ON_THREE:
        return "no action= prefix here"
    return "action=PREPEND X-Greylist: delayed 0 seconds"


def guide_requests() -> list[Request]:
    """Requests for the guide's rules: every state, and clients on 0 to 3 (or 4) lists."""
    out = every_state()
    for client in (CLIENT_ON_THREE, CLIENT_ON_ONE, CLIENT_IN_RANGE, CLIENT_ALLOWED, CLIENT_CLEAN):
        for sender in ("x@spammer.example", "x@example.test"):
            for name in ("spammer.example", "unknown"):
                out.append(postfix_request("RCPT", client=client, client_name=name, sender=sender))
    # a request may carry HIT_dnsbls itself: the guide's set() overwrites it
    out.append(postfix_request("RCPT", client=CLIENT_CLEAN, HIT_dnsbls="5"))
    return out


def debian_sample_requests() -> list[Request]:
    """Requests for Debian's samples; all stop before the sample's weekday/time greylisting."""
    r = postfix_request
    return [
        r(client="192.168.1.10"), r(client="172.16.128.40"),
        r(client_name="smtp.domain1.net"), r(sasl_username="alice"),
        r(ccert_fingerprint="aa:bb:cc:dd:ee:ff:11:22:33:44:55:66"),
        r(stress="yes"),
        r(encryption_keysize="256", client_name="mail.static.example.test"),
        r(client=CLIENT_ON_THREE), r(client=CLIENT_IN_RANGE, tls=False),
        r(client_name="mout.gmx.net", tls=False), r(client_name="mail-3.example.test", tls=False),
        r(client_name="mail.web.de", helo="mail.web.de", tls=False),
        r(client_name="host-1-2-3-4.dialup.example.test", tls=False),
        r(client_name="x12345.example.test", helo="x12345.example.test", tls=False),
        r(client_name="unknown", helo="unknown", tls=False),
        r("CONNECT", client=CLIENT_ON_THREE, tls=False),
    ]


def debian_cfg2_requests() -> list[Request]:
    r = postfix_request
    return [
        r(helo="localhost", client_name="unknown"),
        r(helo="192-0-2-66.example.test", client_name="mail.example.test"),
        r(helo="nodots", client_name="unknown"),
        r(helo="mail.example.test", client_name="mail.example.test"),
        r(client=CLIENT_ON_THREE, helo="x"), r(client=CLIENT_ON_ONE, sender="x@spammer.example"),
        r(client=CLIENT6_LISTED, helo="h", client_name="unknown"),
    ]


# --- the corpora ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Corpus:
    """A rule file, the requests that exercise it and the command-line arguments it needs."""

    name: str
    requests: tuple[Request, ...]
    extra_args: tuple[str, ...] = ()
    # "@ASK@"/"@DEAD@" in the file are replaced by policy servers before running (ask.cf).
    template: bool = False
    # postfwd stops answering part-way (quit()): compare what it did answer and its exit.
    partial: bool = False
    # safe to run hypothesis-generated requests against (no quit(), no template).
    fuzz: bool = True
    # rules that depend on the weekday/time (answers may change at such a boundary).
    clock_dependent: bool = False
    # the [RULE_ID]s of its actions that no request can make answer (None: not checked)
    never_hit: tuple[str, ...] | None = None

    @property
    def rule_file(self) -> Path:
        return RULES_DIR / f"{self.name}.cf"

    def golden_file(self, dns: bool) -> Path:
        return GOLDEN_DIR / f"{self.name}.{'dns' if dns else 'nodns'}.txt"


def corpora() -> tuple[Corpus, ...]:
    """Every rule file with its requests (fresh objects on every call)."""
    return (
        Corpus("guide", tuple(guide_requests())),
        Corpus("guide_testbed", tuple(guide_requests())),
        Corpus("debian_sample", tuple(debian_sample_requests()), clock_dependent=True),
        Corpus("debian_example_cfg2", tuple(debian_cfg2_requests())),
        Corpus("items_attributes", tuple(items_attributes_requests()), never_hit=()),
        Corpus("operators", tuple(operators_requests()), never_hit=("C_regex", "C_v6")),
        Corpus("macros_files", tuple(macros_files_requests()),
               never_hit=("F_missing", "M_ampersands", "M_too_early", "M_undefined")),
        Corpus("syntax", tuple(syntax_requests()),
               never_hit=("X_bad_operator", "X_first", "X_glued", "X_hash_regex", "X_invalid",
                          "X_upper_action")),
        Corpus("actions", tuple(actions_requests()), never_hit=("J_skipped",)),
        Corpus("scores", tuple(scores_requests()), extra_args=SCORE_ARGS,
               never_hit=("SC_stepwise_show",)),
        Corpus("dnsbl", tuple(dnsbl_requests()), never_hit=()),
        Corpus("dns_items", tuple(dns_items_requests()), never_hit=("H_mx_addrs_miss",)),
        Corpus("dates", tuple(dates_requests()),
               never_hit=("T_date_future", "T_date_past", "T_date_past_range",
                          "T_days_backwards", "T_months_backwards", "T_ne_always",
                          "T_neg_always", "T_sample_window", "T_time_none")),
        Corpus("limits", tuple(limits_requests()), never_hit=("L_missing_item",)),
        Corpus("ask", tuple(ask_requests()), template=True, fuzz=False, never_hit=()),
        Corpus("quit", tuple(quit_requests()), partial=True, fuzz=False, never_hit=()),
    )


def corpus(name: str) -> Corpus:
    return next(c for c in corpora() if c.name == name)


def render(corpus: Corpus, directory: Path, substitutions: Mapping[str, str]) -> Path:
    """Write ``corpus``'s rule file with its @NAME@ placeholders filled into ``directory``."""
    text = corpus.rule_file.read_text()
    for key, value in substitutions.items():
        text = text.replace(key, value)
    target = directory / corpus.rule_file.name
    target.write_text(text)
    return target


# --- what postfwd needs from a request to survive it ------------------------------------------

MAX_VALUE_BYTES = 512  # postfwd keeps the first 512 bytes of a value


def wire(value: str) -> bytes:
    """``value`` as postfwd holds it: UTF-8 bytes, cut at 512."""
    return value.encode("utf-8", errors="surrogateescape")[:MAX_VALUE_BYTES]


def _label_length(label: bytes) -> int:
    # Net::DNS::Domain encodes postfwd's byte string as Latin-1 characters to UTF-8 before it
    # checks the length: every byte from 0x80 up counts twice.
    return len(label) + sum(1 for byte in label if byte >= 0x80)


def dns_name_ok(name: bytes) -> bool:
    """Whether Net::DNS accepts ``name`` (+ a zone) as a query name instead of dying.

    Net::DNS::Domain croaks on an empty label ("a..b", a leading or trailing dot, "") and on a
    label over 63 bytes (after its Latin-1 to UTF-8 step); postfwd does not catch that in its
    DNSBL code, so it dies. Backslash escapes are refused here rather than modelled.
    """
    labels = name.split(b".")
    return (bool(name) and b"\\" not in name and sum(map(_label_length, labels)) <= 200
            and all(1 <= _label_length(label) <= 63 for label in labels))


def dnsbl_query_names(request: Mapping[str, str]) -> list[bytes]:
    """The names postfwd may send to a DNSBL for ``request`` (its rbl/rhsbl items)."""
    names = []
    address = wire(request.get("client_address", ""))
    if b":" not in address:
        names.append(b".".join(reversed(address.split(b"."))))
    for attribute in ("client_name", "reverse_client_name"):
        value = wire(request.get(attribute, ""))
        if value != b"unknown":
            names.append(value)
    sender = wire(request.get("sender", "")) or b"<>"
    m = re.fullmatch(rb"(.*)@([^@]*)", sender, flags=re.DOTALL)
    if m and m.group(2):
        names.append(m.group(2))
    helo = wire(request.get("helo_name", ""))
    if helo:
        names.append(helo)
    return names


def postfwd_survives(request: Mapping[str, str]) -> bool:
    """False for requests that make postfwd 1.35 die in a DNSBL rule (see dns_name_ok)."""
    return all(dns_name_ok(name) for name in dnsbl_query_names(request))


def substituted_attributes() -> frozenset[str]:
    """Attributes the corpora use as ``$$(name)``: postfwd loops forever if one is missing."""
    names: set[str] = set()
    for path in RULES_DIR.glob("*.cf"):
        names.update(re.findall(r"\$\$\((\w+)\)", path.read_text()))
    return frozenset(names)


def policy_contexts() -> tuple[str, ...]:
    """Every policy_context value the corpora select rules by."""
    found: set[str] = set()
    for path in sorted(RULES_DIR.glob("*.cf")):
        found.update(re.findall(r"policy_context\s*==\s*([\w-]+)", path.read_text()))
    return tuple(sorted(found))


# --- hypothesis strategies -------------------------------------------------------------------

# Never CR or LF: the protocol cannot carry them. Surrogates cannot be encoded.
_NOISE_ALPHABET = st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",))
NOISE = st.text(_NOISE_ALPHABET, max_size=40)
LONG = st.text(_NOISE_ALPHABET, min_size=500, max_size=700)

ADDRESSES = (CLIENT_ON_THREE, CLIENT_ON_ONE, CLIENT_CLEAN, CLIENT_IN_RANGE, CLIENT_ALLOWED,
             CLIENT6_LISTED, CLIENT6_CLEAN, "192.0.2.25", "192.0.2.200", "10.9.8.7",
             "172.16.128.40", "192.168.1.10", "::1", "192.000.002.066", "300.1.2.3", "unknown")
NAMES = ("unknown", "mail.example.test", "example.test", "dsl-66.dynamic.example.test",
         "mail.clean.example.test", "spammer.example", "SPAMMER.example", "news.bulkmail.example",
         "www.phish.example", "phish.example", "mout.gmx.net", "host-1-2-3-4.dialup.example.test",
         "localhost", "nodots", "x12345.example.test", "mail.static.example.test")
MAILBOXES = ("alice@example.test", "Alice@Example.TEST", "bob@example.test", "x@spammer.example",
             "someone@bulkmail.example", "a@b@example.test", "no-at-sign", "@example.test",
             "user@", "spam-king@example.test", "go@example.test", "macro@example.test",
             "later@example.test", "postmaster@example.test", "quoted@example.test",
             "x@mail.example.test", "Rcpt@example.test", "x@other.test")
NUMBERS = ("0", "1", "2", "5", "999", "1000", "1001", "10000", "256", "1e3", "1e5", "12abc",
           " 20000", "-1", "0x10", "1_000", ".5", "+7", "inf", "nan", "99999999999999999999")
POOLS: dict[str, tuple[str, ...]] = {
    "protocol_state": (*STATES, "rcpt", "END-OF-DATA"),
    "protocol_name": ("ESMTP", "SMTP", "LMTP", "esmtp"),
    "helo_name": (*NAMES, "[192.0.2.66]", "192.0.2.66", "mx.example.test", "mail7.example.test"),
    "sender": MAILBOXES,
    "recipient": MAILBOXES,
    "client_address": ADDRESSES,
    "client_name": NAMES,
    "reverse_client_name": NAMES,
    "sasl_method": ("PLAIN", "plain", "LOGIN"),
    "sasl_username": ("bob", "BOB", "alice", "carol", "pre", "prefix", "eve", "note(x)"),
    "size": NUMBERS,
    "recipient_count": NUMBERS,
    "encryption_keysize": NUMBERS,
    "client_port": NUMBERS,
    "request_score": NUMBERS,
    "x_level": NUMBERS,
    "HIT_dnsbls": NUMBERS,
    "stress": ("yes", "no", "YES"),
    "policy_context": (),  # filled from the rule files
}
EXTRA_KEYS = ("x_level", "x_custom_flag", "x_never_sent", "x_wait", "request_score",
              "sender_domain", "helo_domain", "HIT_dnsbls", "matches", "request_hits", "orig",
              "rblcount", "ACTION")


def _pool(name: str, contexts: tuple[str, ...]) -> tuple[str, ...]:
    if name == "policy_context":
        return (*contexts, "unselected")
    return POOLS.get(name, ("", "yes", "1"))


@st.composite
def attribute_value(draw: st.DrawFn, name: str, contexts: tuple[str, ...] = ()) -> str:
    """A value for ``name``: mostly from its pool, sometimes odd-cased, empty or noise."""
    kind = draw(st.sampled_from(("pool", "pool", "pool", "pool", "case", "empty", "noise",
                                 "long")))
    if kind in ("pool", "case"):
        value = draw(st.sampled_from(_pool(name, contexts)))
        return value.swapcase() if kind == "case" else value
    if kind == "empty":
        return ""
    return draw(LONG if kind == "long" else NOISE)


# Never left out: $$(name) of a missing attribute hangs postfwd, and a missing client_address,
# client_name or reverse_client_name becomes an empty DNSBL query name, which kills it.
ALWAYS_SENT = frozenset({"request", "policy_context", "client_address", "client_name",
                         "reverse_client_name"})
DNS_NAME_ATTRIBUTES = ("client_address", "client_name", "reverse_client_name", "helo_name",
                       "sender")


@st.composite
def _policy_request(draw: st.DrawFn, contexts: tuple[str, ...], keep: frozenset[str]) -> Request:
    base = postfix_request(draw(st.sampled_from(STATES)),
                           client=draw(st.sampled_from(ADDRESSES)))
    base["policy_context"] = draw(st.sampled_from(_pool("policy_context", contexts)))
    for name in draw(st.lists(st.sampled_from(list(POOLS)), max_size=6, unique=True)):
        base[name] = draw(attribute_value(name, contexts))
    for name in draw(st.lists(st.sampled_from(EXTRA_KEYS), max_size=2, unique=True)):
        base[name] = draw(attribute_value(name, contexts))
    dropped = draw(st.lists(st.sampled_from([a for a in ATTRIBUTES if a not in keep]),
                            max_size=4, unique=True))
    request = without(base, *dropped)
    for name in DNS_NAME_ATTRIBUTES:
        # keep postfwd alive: it dies on DNSBL names Net::DNS refuses (see dns_name_ok)
        if not postfwd_survives(request) and name in request:
            request[name] = draw(st.sampled_from(POOLS[name]))
    assert postfwd_survives(request), request
    return request


def policy_requests() -> st.SearchStrategy[Request]:
    """One request: a realistic base, attributes from pools or noise, some left out."""
    return _policy_request(policy_contexts(), substituted_attributes() | ALWAYS_SENT)


def cache_key(request: Mapping[str, str]) -> str:
    """Close to postfwd's request-cache id: the values (not the names!) of the non-empty,
    non-"0" attributes in name order, instance and queue_id left out (postfwd1 L2188-L2198;
    it also mixes in its derived items, which only tell more requests apart)."""
    return "".join(f"{value};" for name, value in sorted(request.items())
                   if value not in ("", "0") and name not in ("instance", "queue_id", "orig"))


def request_lists(max_size: int = 12) -> st.SearchStrategy[list[Request]]:
    """Runs of requests for one postfwd process, no two alike for postfwd's request cache."""
    return st.lists(policy_requests(), min_size=1, max_size=max_size, unique_by=cache_key)


# --- date/time rules relative to now -------------------------------------------------------

WEEKDAYS = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True)
class NowRule:
    context: str
    items: str
    hits: bool


def _hms(t: datetime) -> str:
    return t.strftime("%H:%M:%S")


def _dmy(t: datetime) -> str:
    return t.strftime("%d.%m.%Y")


def now_rules(now: datetime, margin: timedelta = timedelta(minutes=10)) -> list[NowRule]:
    """Date/time rules whose outcome at ``now`` holds for ``margin`` before and after it.

    ``now`` is the local time the programs will see (the harness runs them with TZ=UTC). A rule
    whose outcome could flip within the margin is left out.
    """
    rules: list[NowRule] = []
    early, late = now - margin, now + margin
    same_day = early.date() == late.date()
    weekday = (now.isoweekday() % 7)  # postfwd: Sunday is 0
    yesterday, tomorrow = now - timedelta(days=1), now + timedelta(days=1)
    rules.append(NowRule("n_date_around", f"date={_dmy(yesterday)}-{_dmy(tomorrow)}", True))
    rules.append(NowRule("n_date_far", f"date={_dmy(now + timedelta(days=3))}-", False))
    if same_day:
        rules += [
            NowRule("n_date_today", f"date={_dmy(now)}", True),
            NowRule("n_date_until_yesterday", f"date=-{_dmy(yesterday)}", False),
            NowRule("n_days_today", f"days={WEEKDAYS[weekday]}", True),
            NowRule("n_days_today_num", f"days={weekday}", True),
            NowRule("n_days_tomorrow", f"days={WEEKDAYS[(weekday + 1) % 7]}", False),
            NowRule("n_days_not_today", f"days=!!{WEEKDAYS[weekday]}", False),
        ]
        if weekday > 0:
            rules.append(NowRule("n_days_upto", f"days=-{WEEKDAYS[weekday]}", True))
    if early.month == late.month:
        month = now.month - 1
        rules += [
            NowRule("n_months_this", f"months={MONTHS[month]}", True),
            NowRule("n_months_from", f"months={MONTHS[month]}-", True),
            NowRule("n_months_upto", f"months=-{MONTHS[month]}", True),
            NowRule("n_months_other", f"months={MONTHS[(month + 1) % 12]}", False),
        ]
        if month <= 9:
            rules.append(NowRule("n_months_num", f"months={month}", True))
    start, end = now - timedelta(minutes=30), now + timedelta(minutes=30)
    if start.date() == now.date() == end.date():
        rules.append(NowRule("n_time_window", f"time={_hms(start)}-{_hms(end)}", True))
        rules.append(NowRule("n_time_window_neg", f"time=!!{_hms(start)}-{_hms(end)}", False))
    later = now + timedelta(hours=1)
    if later.date() == now.date() and (later + timedelta(hours=1)).date() == now.date():
        window = f"time={_hms(later)}-{_hms(later + timedelta(hours=1))}"
        rules.append(NowRule("n_time_later", window, False))
    if same_day:
        rules.append(NowRule("n_time_from", f"time={_hms(early - timedelta(minutes=1))}-", True))
    return rules


def now_rule_file(rules: Iterable[NowRule]) -> str:
    lines = ["# written by tests/policyd/requests.py:now_rules() for the current moment"]
    lines += [f"id={r.context}; policy_context=={r.context}; {r.items}; action=REJECT [{r.context}]"
              for r in rules]
    lines.append("id=N_NONE; action=DUNNO [N_NONE]")
    return "\n".join(lines) + "\n"


def expected_now_answer(rule: NowRule) -> str:
    return f"action=REJECT [{rule.context}]" if rule.hits else "action=DUNNO [N_NONE]"
