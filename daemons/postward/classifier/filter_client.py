"""postward-filter: the Postfix pipe filter in place of dspam, as a thin client of the daemon.

    postward-filter --deliver=innocent,spam --user $recipient -i -f $sender -- $recipient
    postward-filter --user bob@example.com --class=spam --source=error [--signature=ID] < msg

Postfix starts it once per message, so it imports nothing beyond the standard library's
``os``, ``socket`` and ``sys`` and runs as ``python -I -S`` (~10 ms). It streams the message to
postward-classifierd over a unix socket, gets back the X-DSPAM-* headers and how to deliver,
and hands the message on.

Exit codes are sysexits, and only a delivered message earns 0: every fault of ours (daemon
unreachable, Redis down, a timeout, a bad argument in master.cf) exits 75 (EX_TEMPFAIL) so
Postfix keeps the message and retries. The delivery agent's own exit code is passed through
(Dovecot's 67 for an unknown user is a bounce Postfix should send).

The wire protocol (shared with the daemon, ``postward.classifier.daemon``)::

    POSTWARD/1 <OP>\\n  (OP: PROCESS, CLASSIFY, RETRAIN)
    name: value\\n ...   (user, sender, recipient, mode, class, source, signature, length)
    \\n
    <length bytes: the message>

    POSTWARD/1 <code> <text>\\n   (200: done; 4xx: try later; 5xx: refused)
    name: value\\n ...   (result, agent, header-length, ...)
    \\n
    <header-length bytes: header fields to put on top of the message>
"""

import os
import socket
import sys

EX_OK, EX_TEMPFAIL = 0, 75
PROTOCOL = "POSTWARD/1"
DEFAULT_SOCKET = "/run/postward/classifierd.sock"
MAX_REPLY_HEAD = 65536
_FLAGS_WITH_VALUE = {"--user", "--class", "--source", "--mode", "--signature", "--deliver",
                     "--socket", "--fallback", "-f", "--config"}


class Usage(Exception):
    """A bad command line: an admin's master.cf mistake. Deferred, never bounced."""


class Unavailable(Exception):
    """The daemon could not be reached or failed; the message is deferred."""


def parse_args(argv):
    """dspam's options (those the guide and dovecot-antispam use) into a dict."""
    opts = {"users": [], "recipients": [], "deliver": None, "class": None, "source": None,
            "classify": False, "stdout": False, "mode": None, "signature": None,
            "sender": "", "socket": DEFAULT_SOCKET, "fallback": "tempfail", "config": None}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            opts["recipients"].extend(argv[i + 1:])
            break
        name, eq, value = arg.partition("=")
        if name in _FLAGS_WITH_VALUE and not eq and name not in ("--deliver",):
            i += 1
            if i >= len(argv):
                raise Usage(f"{name} needs a value")
            value = argv[i]
        elif name == "--deliver" and not eq:
            i += 1
            value = argv[i] if i < len(argv) else ""
        if name == "--user":
            opts["users"].append(value)
        elif name in ("--class", "--source", "--mode", "--signature", "--socket",
                      "--fallback", "--config"):
            opts[name[2:]] = value
        elif name == "--deliver":
            opts["deliver"] = [c for c in value.split(",") if c]
        elif name == "-f":
            opts["sender"] = value
        elif name == "--classify":
            opts["classify"] = True
        elif name == "--stdout":
            opts["stdout"] = True
        elif name in ("-i", "--client", "--daemon", "--process", "--debug", "-d"):
            pass  # dspam's own switches that change nothing here
        elif name.startswith("-"):
            raise Usage(f"unknown option {arg!r}")
        else:
            opts["recipients"].append(arg)
        i += 1
    if opts["class"] not in (None, "spam", "innocent"):
        raise Usage(f"--class must be spam or innocent, not {opts['class']!r}")
    if opts["source"] not in (None, "error", "corpus", "inoculation"):
        raise Usage(f"--source must be error, corpus or inoculation, not {opts['source']!r}")
    if opts["fallback"] not in ("tempfail", "inprocess"):
        raise Usage("--fallback must be tempfail or inprocess")
    return opts


def _clean(value):
    value = str(value)
    if "\n" in value or "\r" in value:
        raise Usage(f"line break in argument {value!r}")
    return value


def encode_request(op, fields, message):
    lines = [f"{PROTOCOL} {op}"]
    for name, value in fields:
        lines.append(f"{name}: {_clean(value)}")
    lines.append(f"length: {len(message)}")
    return ("\n".join(lines) + "\n\n").encode("utf-8", "surrogateescape")


def read_head(sock_file, limit=MAX_REPLY_HEAD):
    """The first line and name: value lines up to the empty line."""
    first = sock_file.readline(limit)
    if not first.endswith(b"\n"):
        raise Unavailable("connection closed before a complete reply")
    fields = []
    total = len(first)
    while True:
        line = sock_file.readline(limit)
        total += len(line)
        if not line.endswith(b"\n") or total > limit:
            raise Unavailable("reply header too long or cut short")
        if line in (b"\n", b"\r\n"):
            break
        name, _, value = line.decode("utf-8", "surrogateescape").partition(":")
        fields.append((name.strip().lower(), value.strip()))
    return first.decode("utf-8", "surrogateescape").rstrip("\r\n"), fields


def ask(socket_path, op, fields, message, timeout=120.0):
    """One request to the daemon: (code, text, reply fields, header bytes)."""
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(socket_path)
    except OSError as e:
        raise Unavailable(f"cannot reach postward-classifierd at {socket_path}: "
                          f"{e.strerror or e}") from None
    try:
        sock.sendall(encode_request(op, fields, message))
        sock.sendall(message)
        sock.shutdown(socket.SHUT_WR)
        reply = sock.makefile("rb")
        status, head = read_head(reply)
        parts = status.split(" ", 2)
        if len(parts) < 2 or parts[0] != PROTOCOL or not parts[1].isdigit():
            raise Unavailable(f"unexpected reply {status[:80]!r}")
        values = dict(head)
        extra = reply.read(int(values.get("header-length", "0") or 0))
        return int(parts[1]), parts[2] if len(parts) > 2 else "", head, extra
    except (OSError, ValueError) as e:
        raise Unavailable(f"postward-classifierd failed: {e}") from None
    finally:
        sock.close()


def strip_our_headers(message):
    """The message without X-DSPAM-* fields in its header: a sender must not be able to
    supply a verdict (the guide's Sieve rule trusts X-DSPAM-Reclassified) or a signature."""
    end = message.find(b"\n\n")
    head, rest = (message, b"") if end < 0 else (message[:end + 1], message[end + 1:])
    if b"x-dspam-" not in head.lower():
        return message
    kept, dropping = [], False
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        dropping = line[:8].lower() == b"x-dspam-"
        if not dropping:
            kept.append(line)
    return b"".join(kept) + rest


def deliver(agent, message):
    """Run the delivery agent with the message on stdin; its exit status (75 if it could not
    run or died on a signal)."""
    argv = agent.split("\t")
    try:
        read_end, write_end = os.pipe()
        pid = os.fork()
    except OSError as e:
        sys.stderr.write(f"postward-filter: cannot start {argv[0]}: {e}\n")
        return EX_TEMPFAIL
    if pid == 0:  # the child becomes the agent, or exits 75: it never returns into our code
        try:
            os.close(write_end)
            os.dup2(read_end, 0)
            os.execv(argv[0], argv)
        except BaseException as e:  # OSError, or ValueError for an empty agent name
            sys.stderr.write(f"postward-filter: cannot run {argv[0]!r}: {e}\n")
        finally:
            os._exit(EX_TEMPFAIL)
    os.close(read_end)
    try:
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(message)
    except BrokenPipeError:
        pass  # the agent exited early; its status says why
    _pid, status = os.waitpid(pid, 0)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    sys.stderr.write(f"postward-filter: {argv[0]} died on signal {os.WTERMSIG(status)}\n")
    return EX_TEMPFAIL


def deliver_lmtp(target, sender, recipient, message):
    import smtplib  # only when LMTP is configured: it costs a few ms to import

    try:
        if target.startswith("unix:"):
            client = smtplib.LMTP(target[5:])
        else:
            host, _, port = target.rpartition(":")
            client = smtplib.LMTP(host, int(port))
        try:
            client.sendmail(sender, [recipient], message)
        finally:
            client.quit()
        return EX_OK
    except smtplib.SMTPResponseException as e:
        return EX_TEMPFAIL if 400 <= e.smtp_code < 500 else 67 if e.smtp_code == 550 else 76
    except smtplib.SMTPRecipientsRefused as e:
        code = next(iter(e.recipients.values()))[0]
        return EX_TEMPFAIL if 400 <= code < 500 else 67
    except (OSError, smtplib.SMTPException) as e:
        sys.stderr.write(f"postward-filter: LMTP {target}: {e}\n")
        return EX_TEMPFAIL


def _fields(opts, user):
    fields = [("user", user), ("sender", opts["sender"])]
    fields += [("recipient", r) for r in opts["recipients"]]
    for name in ("mode", "class", "source", "signature"):
        if opts[name]:
            fields.append((name, opts[name]))
    return fields


def run(opts, message, transport=None):
    """Do what the options say; ``transport(op, fields, message)`` reaches the classifier
    (by default the daemon's socket; in-process when the daemon is down)."""
    if transport is None:
        def transport(op, fields, body):
            return ask(opts["socket"], op, fields, body)
    users = opts["users"] or opts["recipients"][:1]
    if not users:
        raise Usage("no --user and no recipient")
    if opts["class"]:
        status = EX_OK
        for user in users:
            code, text, _head, _extra = transport("RETRAIN", _fields(opts, user), message)
            if code >= 400:
                sys.stderr.write(f"postward-filter: retrain for {user}: {code} {text}\n")
                status = EX_TEMPFAIL if code < 500 else 65
        return status
    op = "CLASSIFY" if opts["classify"] else "PROCESS"
    clean = strip_our_headers(message)
    status = EX_OK
    for user in users:
        code, text, head, extra = transport(op, _fields(opts, user), clean)
        if code == 552:  # too big to classify: handed on untouched, as dspam did
            sys.stderr.write(f"postward-filter: {text}; delivering unclassified\n")
            extra = b""
        elif code >= 400:
            raise Unavailable(f"{code} {text}")
        values = dict(head)
        if opts["classify"]:
            sys.stdout.write(f'X-DSPAM-Result: {user}; result="{values.get("result", "")}"; '
                             f'class="{values.get("class", "")}"; '
                             f'probability={values.get("probability", "")}; '
                             f'confidence={values.get("confidence", "")}; '
                             f'signature={values.get("signature", "")}\n')
            continue
        tagged = extra + clean
        if opts["stdout"] or opts["deliver"] == []:
            sys.stdout.buffer.write(tagged)
            continue
        agent = values.get("agent", "")
        if agent.startswith("lmtp:"):
            recipient = opts["recipients"][0] if opts["recipients"] else user
            result = deliver_lmtp(agent[5:], opts["sender"], recipient, tagged)
        else:
            result = deliver(agent, tagged)
        if result != EX_OK:
            return result
    sys.stdout.flush()
    return status


def _inprocess(opts, message):
    """The daemon is down and the admin chose to classify here: load the whole package (the
    interpreter runs with -S, so site-packages are added now) and do the daemon's work."""
    import site

    site.main()
    from postward.classifier.inprocess import serve_inprocess

    return serve_inprocess(opts, message)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        opts = parse_args(argv)
    except Usage as e:
        sys.stderr.write(f"postward-filter: {e}; deferring (fix master.cf)\n")
        return EX_TEMPFAIL
    try:
        message = sys.stdin.buffer.read()
    except OSError as e:
        sys.stderr.write(f"postward-filter: cannot read the message: {e}\n")
        return EX_TEMPFAIL
    try:
        return run(opts, message)
    except Usage as e:
        sys.stderr.write(f"postward-filter: {e}; deferring\n")
        return EX_TEMPFAIL
    except Unavailable as e:
        if opts["fallback"] == "inprocess":
            sys.stderr.write(f"postward-filter: {e}; classifying in-process\n")
            try:
                return _inprocess(opts, message)
            except Exception as inner:  # any failure here is still ours: defer
                sys.stderr.write(f"postward-filter: in-process classification failed: "
                                 f"{inner}; deferring\n")
                return EX_TEMPFAIL
        sys.stderr.write(f"postward-filter: {e}; deferring\n")
        return EX_TEMPFAIL
    except Exception as e:  # a fault of ours: 75 (Postfix retries), never 1 (pipe(8) bounces)
        sys.stderr.write(f"postward-filter: internal error: {type(e).__name__}: {e}; "
                         f"deferring\n")
        return EX_TEMPFAIL


if __name__ == "__main__":
    sys.exit(main())
