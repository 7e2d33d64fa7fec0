"""Greylisting with postgrey 1.37's semantics, its state shared by every MX host in Redis.

The decision is ``smtpd_access_policy`` of /usr/sbin/postgrey, step for step (docs/greylisting.md
has the line references): whitelists, then the client auto-whitelist, then the triplet
(client subnet, normalised sender, recipient) with its first-seen and last-seen times.

Where postgrey keeps a BerkeleyDB and prunes it each night, this keeps one Redis string per
triplet and per client, read and written by one Lua script so that two MX hosts racing on a
triplet see each other's writes in some order, never half of one. Every time is the injected
clock's, stored in the value; an entry postgrey's nightly maintenance would have deleted is
treated as absent on read, so the answer never depends on when a cleanup ran. Redis TTLs, set a
day longer than the logical lifetime, only reclaim memory: correctness never rests on them.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import socket
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from postward.core.clock import Clock
from postward.core.logs import get_log
from postward.core.metrics import Labelled, Metrics
from postward.core.redis_store import RedisStore
from postward.core.resp import Script
from postward.policyd.greylist_lists import GreylistLists, ascii_lower
from postward.policyd.greylist_settings import GreylistSettings

log = get_log("policyd.greylist")

POSTGREY_VERSION = "1.37"  # %v: the postgrey whose behaviour this reproduces
TTL_MARGIN = 86400  # Redis expiry beyond an entry's logical lifetime, for clock skew across MXs
AWL_INTERVAL = 3600  # postgrey counts at most one auto-whitelist pass per client and hour
# postgrey remembers the last 10 instances (messages) it added a header to. One daemon here
# serves many SMTP sessions at once, so it remembers more: a message's second recipient must not
# find its instance pushed out by other sessions' passes, or the mail gets a second header.
INSTANCE_MEMORY = 1000
ADDRESS_MEMORY = 10_000  # parsed client addresses kept
_REQUIRED = ("client_address", "client_name", "recipient", "sender")
_BATV_TAG = re.compile(r"[0-9a-z]{10}")  # case-sensitive, as in postgrey
_NUMBER = re.compile(r"\b\d+\b", re.ASCII)  # Perl's \b and \d on the byte strings postgrey sees
_DIGIT = re.compile(r"\d", re.ASCII)
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# KEYS: triplet, client (auto-whitelist). ARGV: now, delay, retry_window, max_age, awl_clients,
# margin, AWL_INTERVAL. Returns {status, first, newly_auto_whitelisted}; status 0: client
# auto-whitelisted, 1: too early (greylist), 2: passed now for the first time, 3: passed before.
# Values are "first,last" (triplet) and "count,last" (client), as in postgrey's databases.
_SCRIPT = """
local now, delay, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local max_age, awl, margin = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local interval = tonumber(ARGV[7])
local function pair(key)
  local v = redis.call('GET', key)
  if not v then return nil end
  local a, b = string.match(v, '^(%-?%d+),(%-?%d+)$')
  if not a then return nil end
  return tonumber(a), tonumber(b)
end
local awl_count, awl_last
if awl > 0 then
  awl_count, awl_last = pair(KEYS[2])
  if awl_last and now - awl_last > max_age then awl_count, awl_last = nil, nil end
  if awl_count and awl_count >= awl then
    if now >= awl_last + interval or awl_last > now then
      redis.call('SET', KEYS[2], (awl_count + 1) .. ',' .. now, 'EX', max_age + margin)
    end
    return {0, 0, 0}
  end
end
local first, passed_before = now, false
local f, l = pair(KEYS[1])
-- postgrey's maintenance deletes what is unseen for max_age, or unconfirmed and unseen for
-- retry_window: such an entry counts as absent.
if f and not (now - l > max_age or (l - f < delay and now - l > window)) then
  if l - f >= delay then
    first, passed_before = f, true
  elseif now - f <= window then
    first = f
  end
  if first > now then first = now end
end
local ttl = math.min(window, max_age)
if now - first >= delay then ttl = max_age end
redis.call('SET', KEYS[1], first .. ',' .. now, 'EX', ttl + margin)
local diff = delay - (now - first)
local listed = 0
if awl > 0 and diff <= 0 and not passed_before then
  if not awl_last or now >= awl_last + interval then
    awl_count = (awl_count or 0) + 1
    redis.call('SET', KEYS[2], awl_count .. ',' .. now, 'EX', max_age + margin)
    if awl_count == awl then listed = 1 end
  end
end
if diff > 0 then return {1, first, listed} end
if passed_before then return {3, first, listed} end
return {2, first, listed}
"""


class Outcome(StrEnum):
    NEW = "new"  # first sight (or first since the retry window ran out): deferred
    EARLY_RETRY = "early_retry"  # seen, but less than delay ago: deferred again
    PASSED = "passed"  # retried after delay: passes, with the X-Greylist header once per mail
    KNOWN = "known"  # passed before: DUNNO
    WHITELISTED = "whitelisted"  # client or recipient in a whitelist file: DUNNO
    AUTO_WHITELISTED = "auto_whitelisted"  # client passed auto_whitelist_clients times: DUNNO
    INCOMPLETE = "incomplete"  # a required attribute missing or unreadable: DUNNO


@dataclass(frozen=True)
class GreylistResult:
    action: str  # the policy answer, as postgrey would write it after "action="
    outcome: Outcome
    reason: str  # postgrey's log reason: "new", "early-retry (120s missing)", "client AWL", ...


def normalise_sender(sender: str) -> str:
    """postgrey's do_sender_substitutions: BATV tag removed, +extension stripped, each number in
    the local part replaced by '#', so that VERP and BATV senders keep one triplet."""
    user, at, domain = sender.partition("@")
    if not at:  # no domain (the null sender ""): as it is
        return sender
    if user.startswith("prvs="):
        # prvs=tag-val=loc-core, or (seen in the wild) prvs=loc-core=tag-val: keep the part
        # that is not a 10-character tag, else the standard one.
        parts = user.split("=")
        while parts and not parts[-1]:  # Perl's split drops trailing empty fields
            parts.pop()
        if len(parts) == 3:
            tagged1, tagged2 = _BATV_TAG.match(parts[1]), _BATV_TAG.match(parts[2])
            user = parts[1] if tagged2 and not tagged1 else parts[2]
    user = _NUMBER.sub("#", user.split("+", 1)[0])
    return f"{user}@{domain}"


def client_net(address: ipaddress.IPv4Address | ipaddress.IPv6Address,
               settings: GreylistSettings) -> str:
    """The client part of the triplet (postgrey's do_client_substitutions): the network of
    ipv4cidr/ipv6cidr bits, or the whole address without lookup_by_subnet."""
    if not settings.lookup_by_subnet:
        return str(address)
    # The network address by masking the integer: the same as ip_network(f"{address}/{prefix}",
    # strict=False).network_address, without parsing a string per request.
    bits = 32 if address.version == 4 else 128
    prefix = settings.ipv4cidr if address.version == 4 else settings.ipv6cidr
    mask = ((1 << prefix) - 1) << (bits - prefix)
    if bits == 32:  # dotted quad written directly: no second address object per request
        n = int(address) & mask
        return f"{n >> 24}.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"
    return str(type(address)(int(address) & mask))


def triplet(address: ipaddress.IPv4Address | ipaddress.IPv6Address, sender: str,
            recipient: str, settings: GreylistSettings) -> str:
    """postgrey's key: ``lc "$client_net/$sender/$recipient"``."""
    return ascii_lower(f"{client_net(address, settings)}/{normalise_sender(sender)}/{recipient}")


def postgrey_date(when: float) -> str:
    """strftime("%a, %d %b %Y %T %Z", localtime) in the C locale, as postgrey's %d."""
    t = time.localtime(when)
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} {t.tm_zone}")


def _substitute(text: str, values: list[tuple[str, str]]) -> str:
    # Perl's s/\%x/value/ without /g: only the first occurrence, in postgrey's order.
    for placeholder, value in values:
        text = text.replace(placeholder, value, 1)
    return text


class Greylister:
    def __init__(self, store: RedisStore, settings: GreylistSettings, lists: GreylistLists,
                 clock: Clock, metrics: Metrics) -> None:
        self.store = store
        self.clock = clock
        self._script = Script(_SCRIPT)
        self.reconfigure(settings, lists)
        self._instances: OrderedDict[str, None] = OrderedDict()
        # Parsed client addresses: a client asks once per recipient, and parsing one in
        # ipaddress costs more than the rest of the triplet. Bounded, cleared when full.
        self._addresses: dict[str, ipaddress.IPv4Address | ipaddress.IPv6Address] = {}
        self._outcomes = Labelled(metrics.counter(
            "greylist_outcomes_total", "greylisting decisions, by outcome", ["outcome"]))
        for outcome in Outcome:  # export every outcome from the start, at 0
            self._outcomes(outcome.value)

    def reconfigure(self, settings: GreylistSettings, lists: GreylistLists) -> None:
        """New settings and whitelists (on SIGHUP), keeping the metrics and instance memory."""
        self.settings = settings
        self.lists = lists
        self._hostname = settings.hostname or socket.gethostname()
        # The script's arguments after ``now``, made once. Plain ints: Seconds prints as
        # "5m", and the fast client packs only exact types.
        s = settings
        self._args = (int(s.delay), int(s.retry_window), int(s.max_age),
                      int(s.auto_whitelist_clients), TTL_MARGIN, AWL_INTERVAL)

    async def check(self, request: Mapping[str, str]) -> GreylistResult:
        """postgrey's answer to this policy request. Raises StoreUnavailable if Redis fails."""
        result = await self._decide(request)
        self._outcomes(result.outcome.value).inc()
        log.info("greylist", outcome=result.outcome.value, reason=result.reason,
                 queue_id=request.get("queue_id") or None,
                 client_name=request.get("client_name"),
                 client_address=request.get("client_address"),
                 sender=request.get("sender"), recipient=request.get("recipient"))
        return result

    async def _decide(self, request: Mapping[str, str]) -> GreylistResult:
        missing = [a for a in _REQUIRED if a not in request]
        if missing:
            return GreylistResult("DUNNO", Outcome.INCOMPLETE,
                                  f"attribute missing: {', '.join(missing)}")
        try:
            address = self._address(request["client_address"])
        except ValueError:
            return GreylistResult("DUNNO", Outcome.INCOMPLETE,
                                  f"can't parse client_address {request['client_address']!r}")
        recipient = request["recipient"]
        if entry := self.lists.client_match(request["client_name"], address):
            return GreylistResult("DUNNO", Outcome.WHITELISTED,
                                  f"client whitelist ({entry.where})")
        if entry := self.lists.recipient_match(recipient):
            return GreylistResult("DUNNO", Outcome.WHITELISTED,
                                  f"recipient whitelist ({entry.where})")

        s = self.settings
        now = int(self.clock.time())  # postgrey's time(): whole seconds
        digest = hashlib.sha256(triplet(address, request["sender"], recipient, s).encode(
            "utf-8", "surrogateescape")).hexdigest()[:32]
        keys = [self.store.key("grey", "triplet", digest),
                self.store.key("grey", "client", str(address))]
        status, first, listed = await self.store.evalsha("greylist", self._script, keys,
                                                         (now, *self._args))
        if listed:
            log.info("greylist_client_auto_whitelisted", client_name=request["client_name"],
                     client_address=str(address), passes=s.auto_whitelist_clients)

        if status == 0:
            return GreylistResult("DUNNO", Outcome.AUTO_WHITELISTED, "client AWL")
        if status == 1:
            return self._greylisted(request, now, int(first))
        if status == 3:
            return GreylistResult("DUNNO", Outcome.KNOWN, "triplet found")
        if not self._new_instance(request.get("instance")):
            # Another recipient of this message already got the header.
            return GreylistResult("DUNNO", Outcome.PASSED, "triplet found")
        delay = now - int(first)
        header = _substitute(s.x_greylist_header, [
            ("%t", str(delay)), ("%v", POSTGREY_VERSION), ("%d", postgrey_date(now)),
            ("%h", self._hostname)])
        return GreylistResult(f"PREPEND {header}", Outcome.PASSED,
                              f"triplet found, delay={delay}")

    def _address(self, text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        """ipaddress.ip_address(text), remembered; raises ValueError as it does."""
        address = self._addresses.get(text)
        if address is None:
            address = ipaddress.ip_address(text)  # not remembered when it raises
            if len(self._addresses) >= ADDRESS_MEMORY:
                self._addresses.clear()
            self._addresses[text] = address
        return address

    def _greylisted(self, request: Mapping[str, str], now: int, first: int) -> GreylistResult:
        s = self.settings
        missing = s.delay - (now - first)
        text = s.greylist_text
        # postgrey: Postfix >= 2.3 sends etrn_domain, and then understands an enhanced status
        # code; 4.2.0 rather than Postfix's default 4.7.1 works around an Exchange bug.
        if "etrn_domain" in request and not _DIGIT.match(text):
            text = "4.2.0 " + text
        domain = request["recipient"].rsplit("@", 1)[-1]
        text = _substitute(text, [("%s", str(missing)), ("%r", domain)])
        if now == first:
            return GreylistResult(f"{s.greylist_action} {text}", Outcome.NEW, "new")
        return GreylistResult(f"{s.greylist_action} {text}", Outcome.EARLY_RETRY,
                              f"early-retry ({missing}s missing)")

    def _new_instance(self, instance: str | None) -> bool:
        """postgrey's is_new_instance: has this message (Postfix's ``instance``) had its header?
        Without an instance attribute every request is a new message."""
        if instance is None:
            return True
        if instance in self._instances:
            return False
        self._instances[instance] = None
        if len(self._instances) > INSTANCE_MEMORY:
            self._instances.popitem(last=False)
        return True
