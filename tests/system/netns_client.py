"""Clients the whole-system test runs inside its network namespaces (stdlib only).

``ip netns exec WORLD python3 netns_client.py smtp ...`` is one SMTP transaction from one of the
world's addresses to the container's MX; ``ip netns exec HOST python3 netns_client.py imap ...``
talks to the container's Dovecot on its loopback (where Dovecot allows plaintext logins). Each
prints one JSON object on stdout for the test to read.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import imaplib
import json
import smtplib
import sys
from email.message import EmailMessage


def _smtp(args: argparse.Namespace) -> dict[str, object]:
    msg = EmailMessage()
    msg["From"] = args.sender
    msg["To"] = args.to
    msg["Subject"] = args.subject
    msg["Message-ID"] = args.message_id
    msg.set_content(args.body)
    out: dict[str, object] = {}
    try:
        with smtplib.SMTP(args.server, 25, timeout=60,
                          source_address=(args.source, 0)) as s:
            s.ehlo(args.helo)
            code, text = s.mail(args.sender)
            out["mail"] = [code, text.decode(errors="replace")]
            if code != 250:
                return out
            code, text = s.rcpt(args.to)
            out["rcpt"] = [code, text.decode(errors="replace")]
            if code != 250:
                return out
            code, text = s.data(msg.as_bytes())
            out["data"] = [code, text.decode(errors="replace")]
    except smtplib.SMTPResponseException as e:
        out["error"] = [e.smtp_code, e.smtp_error.decode(errors="replace")]
    except (OSError, smtplib.SMTPException) as e:
        out["error"] = [0, f"{type(e).__name__}: {e}"]
    return out


def _imap_messages(imap: imaplib.IMAP4, mailbox: str) -> list[dict[str, str]]:
    typ, _data = imap.select(f'"{mailbox}"')
    if typ != "OK":  # not made yet (Sieve makes Spam with its first message)
        return []
    _typ, data = imap.uid("SEARCH", "ALL")
    found = []
    for uid in (data[0] or b"").split():
        _typ, parts = imap.uid("FETCH", uid, "(BODY.PEEK[HEADER])")
        header = next(p[1] for p in parts if isinstance(p, tuple))
        parsed = email.message_from_bytes(header, policy=email.policy.default)
        found.append({"uid": uid.decode(), "subject": str(parsed["Subject"] or ""),
                      "message_id": str(parsed["Message-ID"] or ""),
                      "dspam_result": str(parsed["X-DSPAM-Result"] or ""),
                      "greylist": str(parsed["X-Greylist"] or ""),
                      "auth_results": str(parsed["Authentication-Results"] or "")})
    return found


def _imap(args: argparse.Namespace) -> dict[str, object]:
    with imaplib.IMAP4(args.server, 143, timeout=60) as imap:
        imap.login(args.user, args.password)
        if args.action == "list":
            return {"messages": _imap_messages(imap, args.mailbox)}
        # move: the message with this Subject from --mailbox to --target (IMAP MOVE, RFC 6851)
        for message in _imap_messages(imap, args.mailbox):
            if message["subject"] == args.subject:
                typ, data = imap.uid("MOVE", message["uid"], f'"{args.target}"')
                return {"moved": typ == "OK", "answer": [d.decode() for d in data if d]}
        return {"moved": False, "answer": ["no such message"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("smtp")
    s.add_argument("--server", required=True)
    s.add_argument("--source", required=True)
    s.add_argument("--helo", default="client.sender.test")
    s.add_argument("--sender", default="someone@sender.test")
    s.add_argument("--to", required=True)
    s.add_argument("--subject", required=True)
    s.add_argument("--message-id", required=True)
    s.add_argument("--body", required=True)
    i = sub.add_parser("imap")
    i.add_argument("action", choices=("list", "move"))
    i.add_argument("--server", default="127.0.0.1")
    i.add_argument("--user", required=True)
    i.add_argument("--password", required=True)
    i.add_argument("--mailbox", default="INBOX")
    i.add_argument("--subject", default="")
    i.add_argument("--target", default="INBOX")
    args = p.parse_args(argv)
    result = _smtp(args) if args.command == "smtp" else _imap(args)
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
