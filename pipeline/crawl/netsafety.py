"""Network safety for the crawler: a per-worker DNS cache with a timeout, and the SSRF rule
that a crawl of the public web never talks to loopback, private, link-local, multicast or
reserved addresses — checked on the address actually connected to, at every redirect hop,
so DNS rebinding cannot sneak past it.

    resolver = Resolver(timeout=5, ttl=300)
    ips = resolver.resolve("example.com")          # cached; raises DnsError
    Resolver(lookup=lambda host: ["127.0.0.1"])    # another source of answers (tests, a DNS client)
    blocked_reason(ipaddress.ip_address("10.0.0.1"))  # -> 'private'
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout


class DnsError(OSError):
    pass


class BlockedAddress(ValueError):
    pass


def blocked_reason(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an address is not on the public internet, or None if it is."""
    mapped = getattr(ip, "ipv4_mapped", None)
    if mapped is not None:
        ip = mapped
    for name in ("loopback", "private", "link_local", "multicast", "reserved", "unspecified"):
        if getattr(ip, f"is_{name}"):
            return name.replace("_", "-")
    if not ip.is_global:  # shared address space (100.64/10), benchmarking ranges, ...
        return "not global"
    return None


def check_address(ip_text: str, allow_private: bool, allow_networks: tuple[str, ...] = ()) -> None:
    """Raise BlockedAddress unless the address is public, explicitly allowed, or all are allowed."""
    if allow_private:
        return
    ip = ipaddress.ip_address(ip_text.split("%", 1)[0])
    why = blocked_reason(ip)
    if why and not any(ip in ipaddress.ip_network(net, strict=False) for net in allow_networks):
        raise BlockedAddress(
            f"{ip_text} is a {why} address (--allow-networks or --allow-private-networks to crawl it)"
        )


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


def system_lookup(host: str) -> list[str]:
    """The host's addresses from getaddrinfo (the system's resolver), in its preference order."""
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    seen = []
    for family, *_, sockaddr in infos:
        ip = sockaddr[0]
        if ip not in seen and family in (socket.AF_INET, socket.AF_INET6):
            seen.append(ip)
    return seen


class Resolver:
    """`lookup` (getaddrinfo by default) with a timeout and a TTL cache (positive and negative),
    shared by a worker's threads; needs no root and no local resolver daemon. Lookups of one
    host are single-flight. `lookup(host) -> [ip, ...]` raises socket.gaierror for a name that
    does not resolve."""

    def __init__(
        self,
        timeout: float = 5.0,
        ttl: float = 300.0,
        negative_ttl: float = 60.0,
        threads: int = 16,
        lookup: Callable[[str], list[str]] = system_lookup,
    ):
        self.timeout, self.ttl, self.negative_ttl = timeout, ttl, negative_ttl
        self.lookup = lookup
        self._cache: dict[str, tuple[float, list[str] | DnsError]] = {}
        self._lock = threading.Lock()
        self._inflight: dict[str, threading.Event] = {}
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="dns")

    def resolve(self, host: str) -> list[str]:
        if is_ip_literal(host):
            return [host.strip("[]")]
        while True:
            with self._lock:
                hit = self._cache.get(host)
                if hit and hit[0] > time.monotonic():
                    if isinstance(hit[1], DnsError):
                        raise hit[1]
                    return hit[1]
                event = self._inflight.get(host)
                if event is None:
                    event = self._inflight[host] = threading.Event()
                    break
            event.wait(self.timeout + 1)
        try:
            try:
                ips = self._pool.submit(self.lookup, host).result(timeout=self.timeout)
                if not ips:
                    raise DnsError(f"{host}: no address")
                entry: tuple[float, list[str] | DnsError] = (time.monotonic() + self.ttl, ips)
            except FutureTimeout:
                entry = (
                    time.monotonic() + self.negative_ttl,
                    DnsError(f"{host}: resolver timed out after {self.timeout}s"),
                )
            except socket.gaierror as e:
                entry = (
                    time.monotonic() + self.negative_ttl,
                    DnsError(f"{host}: {e.strerror or e}"),
                )
            except UnicodeError as e:  # getaddrinfo's IDNA step: an empty or 64+ byte label
                entry = (time.monotonic() + self.negative_ttl, DnsError(f"{host}: {e}"))
            with self._lock:
                self._cache[host] = entry
            if isinstance(entry[1], DnsError):
                raise entry[1]
            return entry[1]
        finally:
            with self._lock:
                self._inflight.pop(host, None)
            event.set()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
