"""postward-filter: the Postfix pipe filter in place of dspam, as a thin client of the daemon.

    postward-filter --deliver=innocent,spam --user $recipient -i -f $sender -- $recipient
    postward-filter --user bob@example.com --class=spam --source=error [--signature=ID] < msg

Postfix starts it once per message, so its start is most of its cost. It runs as
``python -I -S`` through a small launcher (``filter_launcher.py``, installed as
/opt/postward/lib/postward-filter.py) that imports this module from its cached .pyc: a script
given to ``python`` is compiled at every start, an imported module is not. On the path every
message takes it imports nothing the interpreter has not loaded already except the C module
``_socket``: not ``socket`` (selectors, enum, collections: ~9 ms, as long again as the
interpreter's own start) and not ``os`` (``posix`` is built in and always loaded). The rare
paths import what they need when they run: smtplib for LMTP delivery, the whole package for
the in-process fallback. tests/classifier/test_filter_startup.py holds it to that. It streams
the message to postward-classifierd over a unix socket, gets back the X-DSPAM-* headers and how
to deliver, and hands the message on.

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

# Only modules the interpreter has loaded before running any code of ours (posix, sys,
# _signal), and _socket, a C extension that loads in ~0.2 ms.
import _signal
import _socket
import posix
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


def _head_end(data):
    """Where the reply's head ends (its empty line) and its body starts, or (-1, -1)."""
    lf, crlf = data.find(b"\n\n"), data.find(b"\n\r\n")
    if lf >= 0 and (crlf < 0 or lf < crlf):
        return lf + 1, lf + 2
    if crlf >= 0:
        return crlf + 1, crlf + 3
    return -1, -1


def read_head(sock, limit=MAX_REPLY_HEAD):
    """The first line, the name: value lines up to the empty line, and what was received
    after it. Read with recv() on the raw socket: ``makefile`` needs socket.py."""
    data = b""
    while True:
        end, body = _head_end(data)
        if end >= 0:
            break
        if len(data) > limit:
            raise Unavailable("reply header too long")
        chunk = sock.recv(65536)
        if not chunk:
            raise Unavailable("connection closed before a complete reply"
                              if b"\n" not in data else "reply header cut short")
        data += chunk
    if end > limit:
        raise Unavailable("reply header too long")
    first, *lines = data[:end].decode("utf-8", "surrogateescape").split("\n")[:-1]
    fields = []
    for line in lines:
        name, _, value = line.partition(":")
        fields.append((name.strip().lower(), value.strip()))
    return first.rstrip("\r"), fields, data[body:]


def read_exactly(sock, have, length):
    """``length`` bytes: those already received (``have``), then more from the socket."""
    parts, size = [have[:length]], min(len(have), length)
    while size < length:
        chunk = sock.recv(min(length - size, 1 << 20))
        if not chunk:
            raise Unavailable(f"reply cut short: {size} of {length} header bytes")
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


def ask(socket_path, op, fields, message, timeout=120.0):
    """One request to the daemon: (code, text, reply fields, header bytes)."""
    sock = None
    try:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(socket_path)
    except OSError as e:
        if sock is not None:
            sock.close()
        raise Unavailable(f"cannot reach postward-classifierd at {socket_path}: "
                          f"{e.strerror or e}") from None
    try:
        sock.sendall(encode_request(op, fields, message))
        sock.sendall(message)
        sock.shutdown(_socket.SHUT_WR)
        status, head, rest = read_head(sock)
        parts = status.split(" ", 2)
        if len(parts) < 2 or parts[0] != PROTOCOL or not parts[1].isdigit():
            raise Unavailable(f"unexpected reply {status[:80]!r}")
        values = dict(head)
        extra = read_exactly(sock, rest, int(values.get("header-length", "0") or 0))
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
    run or died on a signal). ``posix`` rather than ``os``: the same calls, without loading
    os.py (~1.5 ms) at every start."""
    argv = agent.split("\t")
    try:
        read_end, write_end = posix.pipe()
        pid = posix.fork()
    except OSError as e:
        sys.stderr.write(f"postward-filter: cannot start {argv[0]}: {e}\n")
        return EX_TEMPFAIL
    if pid == 0:  # the child becomes the agent, or exits 75: it never returns into our code
        try:
            posix.close(write_end)
            posix.dup2(read_end, 0)
            # Python ignores SIGPIPE and an ignored signal stays ignored across exec: give the
            # agent the default a shell would (subprocess's restore_signals does the same).
            _signal.signal(_signal.SIGPIPE, _signal.SIG_DFL)
            posix.execv(argv[0], argv)
        except BaseException as e:  # OSError, or ValueError for an empty agent name
            sys.stderr.write(f"postward-filter: cannot run {argv[0]!r}: {e}\n")
        finally:
            posix._exit(EX_TEMPFAIL)
    posix.close(read_end)
    try:
        with open(write_end, "wb") as pipe:
            pipe.write(message)
    except BrokenPipeError:
        pass  # the agent exited early; its status says why
    _pid, status = posix.waitpid(pid, 0)
    if posix.WIFEXITED(status):
        return posix.WEXITSTATUS(status)
    sys.stderr.write(f"postward-filter: {argv[0]} died on signal {posix.WTERMSIG(status)}\n")
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
