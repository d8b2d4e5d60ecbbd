"""Connections whose connect, TLS handshake and header reads end at the attempt's total
deadline: urllib3's timeouts are per socket operation, so a server trickling its headers a byte
at a time would never trip them.

    http = urllib3.PoolManager(...)
    http.pool_classes_by_scheme = DEADLINE_POOL_CLASSES
    ATTEMPT_DEADLINE.at = time.monotonic() + 30     # set by fetch_once for each attempt
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool


@dataclass
class _Deadline(threading.local):
    """The monotonic time the current thread's attempt must end by (None: no attempt)."""

    at: float | None = None


ATTEMPT_DEADLINE = _Deadline()  # per-thread, per-attempt: set and cleared by fetch_once


class _DeadlineConnection:
    """Connect, TLS handshake and the status line + headers, under the attempt's total deadline.

    urllib3's timeouts are per socket operation, so a server that sends its headers a byte at
    a time never trips them. A timer shuts the socket down when the deadline passes; the
    blocked read then fails at once and fetch_once reports `deadline`. (The body is read in
    fetch_once's own loop, which checks the deadline between reads.)"""

    def _under_deadline(self, call):
        at = ATTEMPT_DEADLINE.at
        if at is None:
            return call()
        timer = threading.Timer(max(0.0, at - time.monotonic()), self._expire)
        timer.daemon = True
        timer.start()
        try:
            return call()
        finally:
            timer.cancel()

    def _expire(self) -> None:
        sock = getattr(self, "sock", None)
        if sock is not None:
            try:  # the plain socket call: no TLS state is touched from this thread
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass

    def connect(self):
        return self._under_deadline(super().connect)

    def getresponse(self, *args, **kwargs):
        return self._under_deadline(
            lambda: super(_DeadlineConnection, self).getresponse(*args, **kwargs)
        )


class _HTTPConnection(_DeadlineConnection, HTTPConnection):
    pass


class _HTTPSConnection(_DeadlineConnection, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


DEADLINE_POOL_CLASSES = {"http": _HTTPPool, "https": _HTTPSPool}  # for urllib3.PoolManager
