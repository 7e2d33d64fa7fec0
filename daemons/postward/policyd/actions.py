"""postfwd's commands — set(), score(), jump(), rate(), ask(), note(), wait(), quit() — plus
postward's greylist(). Each returns (stop?, action), as postfwd's %postfwd_actions do: a command
that does not stop hands DUNNO back and the rules go on.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from postward.core.logs import get_log
from postward.policyd import perl

if TYPE_CHECKING:
    from postward.policyd.engine import Engine, Evaluation

log = get_log("policyd.actions")

DUNNO = "DUNNO"
_SET_ITEM = re.compile(r"^\s*([^=]+?)\s*([.\-*/+=]=|=[.\-*/+=]|=)\s*(.*?)\s*$", re.DOTALL)
_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
_SCORE_ARG = re.compile(r"^([+\-*/=]?)(\d+)([.,](\d+))?$")


class QuitRequested(Exception):
    """A rule ran quit(): postfwd exits on it. The stdin mode does the same; the daemon logs
    it and answers its default action instead (one rule must not take mail flow down)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class RateStore(Protocol):
    async def add(self, key: str, amount: int, maximum: int, ttl: int, now: float) -> int:
        """postfwd's rate object: start a window, renew it when over, or add ``amount`` unless
        that passes ``maximum``; returns the count the request brings (over ``maximum``:
        exceeded)."""
        ...


class Greylisting(Protocol):
    async def answer(self, request: Mapping[str, str]) -> str: ...


Asker = Callable[[str, int, Mapping[str, str], float], Awaitable[str | None]]


class Actions:
    def __init__(self, rates: RateStore, asker: Asker, greylisting: Greylisting | None = None,
                 max_wait: float = 30.0, ask_timeout: float = 9.0) -> None:
        self.rates = rates
        self.asker = asker
        self.greylisting = greylisting
        self.max_wait = max_wait
        self.ask_timeout = ask_timeout

    async def run(self, command: str, argument: str, ev: Evaluation,
                  engine: Engine) -> tuple[bool, str]:
        # Command names are case-sensitive, as in postfwd: SET(...) is no command.
        handler = getattr(self, f"_cmd_{command}", None) if command.isidentifier() else None
        if handler is None:
            log.warning("unknown_command", command=command, rule=ev.rule.id if ev.rule else "")
            return False, DUNNO
        return await handler(argument, ev, engine)

    async def _cmd_jump(self, arg: str, ev: Evaluation, engine: Engine) -> tuple[bool, str]:
        target = engine.ruleset.by_id.get(arg)
        if target is None:
            log.warning("jump_target_missing", rule=ev.rule.id if ev.rule else "", target=arg)
        else:
            ev.index = target - 1
        return False, DUNNO

    async def _cmd_set(self, arg: str, ev: Evaluation, engine: Engine) -> tuple[bool, str]:
        parts = arg.split(",")
        while parts and parts[-1] == "":
            parts.pop()
        for part in parts:
            m = _SET_ITEM.match(part)
            if m is None:
                log.info("set_ignored", rule=ev.rule.id if ev.rule else "", item=part)
                continue
            name, op, value = m.groups()
            ev.request[name] = _set_value(ev.request.get(name, "0"), op, value)
        return False, DUNNO

    async def _cmd_score(self, arg: str, ev: Evaluation, engine: Engine) -> tuple[bool, str]:
        score = ev.request.get("request_score", "0")
        if m := _SCORE_ARG.match(arg):
            mod = m.group(1)
            val = float(m.group(2)) + (float("0." + m.group(4)) if m.group(4) else 0.0)
            current = perl.num(score)
            if mod == "-":
                current -= val
            elif mod == "*":
                current *= val
            elif mod == "/":
                current = current / val if val != 0 else current
            elif mod == "=":
                current = val
            else:
                current += val
            score = perl.num_str(current)
            if fm := re.match(r"^(-?\d+)([.,]\d\d?)?", score):
                score = fm.group(1) + (fm.group(2) if fm.group(2) is not None else ".0")
            ev.request["score"] = ev.request["request_score"] = score
        elif perl.truthy(arg):
            log.warning("score_invalid", rule=ev.rule.id if ev.rule else "", value=arg)
        for threshold in sorted(engine.scores, reverse=True):  # string order, as postfwd
            action = engine.scores[threshold]
            if perl.num(score) >= perl.num(threshold) and perl.truthy(action):
                return perl.truthy(score), action
        return False, DUNNO

    async def _limit(self, kind: str, arg: str, ev: Evaluation) -> tuple[bool, str]:
        ev.cacheable = False
        parts = arg.split("/", 3)
        item, maximum, window, action = ([*parts, "", "", "", ""])[:4]
        amount_text = {"size": ev.request.get("size", ""),
                       "rcpt": ev.request.get("recipient_count", "")}.get(kind[:4], "1")
        if not (perl.truthy(item) and perl.truthy(maximum) and perl.truthy(window)
                and perl.truthy(action) and perl.truthy(amount_text)):
            log.info("limit_ignored", rule=ev.rule.id if ev.rule else "", limit=f"{kind}({arg})")
            return False, DUNNO
        if item not in ev.request:
            return False, DUNNO
        value = ev.request[item]
        if kind.endswith("5321") and (m := re.match(r"^([^@]+)@(\S+)$", value)):
            value = f"{m.group(1)}@{m.group(2).lower()}"
        else:
            value = value.lower()
        rule_id = ev.rule.id if ev.rule else ""
        key = f"{item}={value}|{rule_id}+{maximum}_{window}"
        count = await self.rates.add(key, int(perl.num(amount_text)), int(perl.num(maximum)),
                                     int(perl.num(window)), ev.now)
        if count > perl.num(maximum):
            ev.request["ratecount"] = str(count)
            return True, action
        return False, DUNNO

    async def _cmd_rate(self, arg: str, ev: Evaluation, engine: Engine) -> tuple[bool, str]:
        return await self._limit("rate", arg, ev)

    async def _cmd_size(self, arg: str, ev: Evaluation, engine: Engine) -> tuple[bool, str]:
        return await self._limit("size", arg, ev)

    async def _cmd_rcpt(self, arg: str, ev: Evaluation, engine: Engine) -> tuple[bool, str]:
        return await self._limit("rcpt", arg, ev)

    async def _cmd_rate5321(self, arg: str, ev: Evaluation, engine: Engine) -> tuple[bool, str]:
        return await self._limit("rate5321", arg, ev)

    async def _cmd_size5321(self, arg: str, ev: Evaluation, engine: Engine) -> tuple[bool, str]:
        return await self._limit("size5321", arg, ev)

    async def _cmd_rcpt5321(self, arg: str, ev: Evaluation, engine: Engine) -> tuple[bool, str]:
        return await self._limit("rcpt5321", arg, ev)

    async def _cmd_ask(self, arg: str, ev: Evaluation, engine: Engine) -> tuple[bool, str]:
        ev.cacheable = False
        parts = arg.split(":")
        addr, port, ignore = ([*parts, "", "", ""])[:3]
        if not (perl.truthy(addr) and perl.truthy(port)):
            return False, DUNNO
        answer = await self.asker(addr, int(perl.num(port)), ev.orig, self.ask_timeout)
        # postfwd strips a leading "action=" and takes whatever else the line says (its test of
        # the prefix reads a stale capture group, so an unprefixed answer passes too)
        answer = None if answer is None else answer.removeprefix("action=")
        if not answer:
            log.info("ask_no_answer", target=arg)
            return False, DUNNO
        if perl.truthy(ignore) and perl.search(ignore, answer):
            return False, DUNNO
        return perl.truthy(answer), answer

    async def _cmd_greylist(self, arg: str, ev: Evaluation, engine: Engine) -> tuple[bool, str]:
        ev.cacheable = False
        if self.greylisting is None:
            log.warning("greylist_unavailable", rule=ev.rule.id if ev.rule else "")
            return False, DUNNO
        return True, await self.greylisting.answer(ev.orig)

    async def _cmd_wait(self, arg: str, ev: Evaluation, engine: Engine) -> tuple[bool, str]:
        ev.cacheable = False
        await asyncio.sleep(min(max(int(perl.num(arg)), 0), self.max_wait))
        return False, DUNNO

    async def _cmd_note(self, arg: str, ev: Evaluation, engine: Engine) -> tuple[bool, str]:
        if perl.truthy(arg):
            log.info("note", rule=ev.rule.id if ev.rule else "", note=arg)
        return False, DUNNO

    async def _cmd_debug(self, arg: str, ev: Evaluation, engine: Engine) -> tuple[bool, str]:
        return False, DUNNO

    async def _cmd_quit(self, arg: str, ev: Evaluation, engine: Engine) -> tuple[bool, str]:
        ev.cacheable = False
        raise QuitRequested(arg)

    async def _not_here(self, arg: str, ev: Evaluation, engine: Engine) -> tuple[bool, str]:
        # postfwd's mail()/sendmail() send a notice and go on; postward does not send mail
        # from the policy path (docs/policyd.md), and file()/exec() are unimplemented in
        # postfwd too. Either way the rules go on with DUNNO, as in postfwd.
        log.warning("command_not_supported", rule=ev.rule.id if ev.rule else "")
        return False, DUNNO

    _cmd_mail = _cmd_sendmail = _cmd_file = _cmd_exec = _not_here


def _set_value(current: str, op: str, value: str) -> str:
    if op in ("=", "=="):
        result = value
    elif op in (".=", "=."):
        result = current + value
    elif _NUMBER.match(current) and _NUMBER.match(value) and op in ("+=", "=+", "-=", "=-",
                                                                     "*=", "=*", "/=", "=/"):
        a, b = float(current), float(value)
        if "+" in op:
            n = a + b
        elif "-" in op:
            n = a - b
        elif "*" in op:
            n = a * b
        else:
            n = a / (1 if b == 0 else b)
        result = perl.num_str(n)
    else:
        result = value
    # postfwd re-joins a leading number's parts; a trailing "0" part is lost (Perl's || '')
    if m := re.match(r"^(-?\d+)([.,]\d+)?(.*)$", result, re.DOTALL):
        result = m.group(1) + (m.group(2) or "") + (m.group(3) if perl.truthy(m.group(3)) else "")
    return result
