"""Per-host politeness inside one worker: a concurrency cap and a minimum interval between
requests to a host, back-off when a host says 429/503, a circuit breaker for hosts that keep
failing, and a robots.txt cache. One `HostPolicy` is shared by a worker's download threads;
across workers, the download stage groups URLs by host so one host lands on few workers.

    policy = HostPolicy(per_host=4, interval=0.5)
    with policy.slot("example.com", deadline_at):   # waits its turn, or raises HostBusy
        ...
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from dataclasses import dataclass, field

from protego import Protego


class HostBusy(TimeoutError):
    """The host could not be given a slot before the request's deadline."""


class CircuitOpen(RuntimeError):
    """The host failed too often in a row; its remaining URLs fail fast for a while."""


@dataclass
class _HostState:
    lock: threading.Condition = field(default_factory=threading.Condition)
    active: int = 0
    next_start: float = 0.0  # monotonic time before which no new request may start
    failures: int = 0  # consecutive transient failures
    open_until: float = 0.0


class HostPolicy:
    def __init__(
        self,
        per_host: int = 0,
        interval: float = 0.0,
        breaker_failures: int = 0,
        breaker_cooldown: float = 60.0,
    ):
        self.per_host = per_host  # 0: no cap
        self.interval = interval
        self.breaker_failures = breaker_failures  # 0: no breaker
        self.breaker_cooldown = breaker_cooldown
        self._states: dict[str, _HostState] = {}
        self._lock = threading.Lock()

    def _state(self, host: str) -> _HostState:
        with self._lock:
            st = self._states.get(host)
            if st is None:
                st = self._states[host] = _HostState()
            return st

    @contextlib.contextmanager
    def slot(self, host: str, deadline_at: float):
        st = self._state(host)
        with st.lock:
            while True:
                now = time.monotonic()
                if self.breaker_failures and st.open_until > now:
                    raise CircuitOpen(
                        f"{host} failed {st.failures} times in a row; paused for {st.open_until - now:.0f}s"
                    )
                free = not self.per_host or st.active < self.per_host
                if free and st.next_start <= now:
                    break
                wait_until = st.next_start if free else now + 0.05
                if wait_until >= deadline_at:
                    raise HostBusy(f"no turn for {host} before the deadline")
                st.lock.wait(timeout=max(0.001, min(wait_until, deadline_at) - now))
            st.active += 1
            st.next_start = max(st.next_start, time.monotonic()) + self.interval
        try:
            yield
        finally:
            with st.lock:
                st.active -= 1
                st.lock.notify_all()

    def penalize(self, host: str, seconds: float) -> None:
        """A 429/503 with Retry-After: no request to this host from this worker for a while."""
        st = self._state(host)
        with st.lock:
            st.next_start = max(st.next_start, time.monotonic() + seconds)

    def record(self, host: str, transient_failure: bool) -> None:
        if not self.breaker_failures:
            return
        st = self._state(host)
        with st.lock:
            if not transient_failure:
                st.failures = 0
                return
            st.failures += 1
            if st.failures >= self.breaker_failures:
                st.open_until = time.monotonic() + self.breaker_cooldown


_USER_AGENT_LINE = re.compile(r"^[ \t]*user[- ]?agent[ \t]*:?[ \t]*([^\s#]+)", re.I | re.M)


@dataclass(frozen=True)
class RobotsRules:
    """A robots.txt read per RFC 9309 (Protego): `*` and `$` in paths, the longest matching
    rule wins, Allow on a tie.

        RobotsRules.parse("User-agent: *\nDisallow: /*.jpg$\n").allowed(url, "webpairs")
    """

    parser: Protego
    agents: frozenset[str]  # the user-agent names its groups give, lowercased

    @classmethod
    def parse(cls, text: str) -> RobotsRules:
        agents = frozenset(name.lower() for name in _USER_AGENT_LINE.findall(text))
        return cls(Protego.parse(text), agents)

    def allowed(self, url: str, token: str) -> bool:
        # 2.2.1: the group whose user-agent equals the token, case-insensitively, else `*`.
        # Protego alone would also apply a group whose name starts the token ("web" for
        # "webpairs"), so it is asked for the token only when a group names it exactly.
        return self.parser.can_fetch(url, token if token.lower() in self.agents else "*")


@dataclass
class _Robots:
    rules: RobotsRules | None  # None with allow_all: all allowed / all disallowed
    allow_all: bool
    expires: float


def robots_from_response(status: int | None, body: bytes | None) -> tuple[RobotsRules | None, bool]:
    """RFC 9309: 2xx -> the rules; 4xx -> no rules (all allowed); 5xx or unreachable -> all disallowed."""
    if status is not None and 200 <= status < 300 and body is not None:
        return RobotsRules.parse(body.decode("utf-8-sig", errors="replace")), False
    if status is not None and 400 <= status < 500:
        return None, True
    return None, False


class RobotsCache:
    """robots.txt per (scheme, host), fetched once per worker with `fetch(url) -> (status, body)`."""

    def __init__(self, user_agent_token: str, ttl: float = 3600.0):
        self.ua, self.ttl = user_agent_token, ttl
        self._entries: dict[str, _Robots] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def allowed(self, origin: str, url: str, fetch) -> bool:
        with self._lock:
            lock = self._locks.setdefault(origin, threading.Lock())
        with lock:  # single flight per origin
            entry = self._entries.get(origin)
            if entry is None or entry.expires < time.monotonic():
                status, body = fetch(origin + "/robots.txt")
                rules, allow_all = robots_from_response(status, body)
                entry = self._entries[origin] = _Robots(
                    rules, allow_all, time.monotonic() + self.ttl
                )
        if entry.rules is None:
            return entry.allow_all
        return entry.rules.allowed(url, self.ua)
