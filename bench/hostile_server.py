"""Hostile endpoints for bench/crawl.py: the ways a web server wastes a crawler's threads,
memory or retries, each kind on its own loopback address (so that per-host politeness and
the circuit breaker treat each kind as the separate host it would be on the web).

    with hostile_server() as hostile:
        hostile.url("trickle", 7)  # 'http://127.0.0.2:PORT/trickle/7.jpg'

All of them run in one forked process: a ThreadingHTTPServer per address whose daemon
threads serve one connection each (a trickle parks its own thread, nobody else's), and, for
`no_answer`, a listening socket that is never accepted from: the kernel completes the TCP
handshake and queues the request, and no reply ever comes.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# kind -> the failure reasons (stats.json) webpairs may count its URLs under. Transient
# failures (timeouts, 429, 5xx) may also end as circuit_open: after enough of them in a row,
# the breaker fails the host's remaining URLs fast, which is what it is for.
KINDS: dict[str, frozenset[str]] = {
    "trickle": frozenset({"deadline", "circuit_open"}),  # 1 byte/s, forever
    "endless": frozenset({"too_large"}),  # a chunked body that never ends
    "ten_gb": frozenset({"too_large"}),  # Content-Length 10 GB, sends 64 KiB, stalls
    "gzip_bomb": frozenset({"too_large"}),  # 64 MiB of zeros in 64 KiB, gzip-encoded
    "pixel_bomb": frozenset({"too_many_pixels"}),  # a PNG declaring 100000 x 100000
    "redirect_loop": frozenset({"too_many_redirects"}),  # 302 to itself
    "html": frozenset({"not_image"}),  # an HTML page as image/jpeg
    "rate_limited": frozenset({"http_429", "circuit_open"}),  # 429, Retry-After: 1
    "unavailable": frozenset({"http_503", "circuit_open"}),  # 503, always
    "no_answer": frozenset({"timeout", "circuit_open"}),  # accepted, never answered
    "slow_headers": frozenset({"deadline", "circuit_open"}),  # a header line at 1 byte/s
    "private_redirect": frozenset({"blocked_address"}),  # 302 to 169.254.169.254 / 10.x
}
FIRST_ADDRESS = 2  # kinds live on 127.0.0.2, 127.0.0.3, ... (nginx has 127.0.0.1)
LINGER = 600.0  # seconds a stalled response waits for the client to give up, at most
JPEG_HEAD = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (and whose pixel data is absent)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


def gzip_of_zeros(size: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip stream
    block = bytes(1 << 20)
    parts = [packer.compress(block) for _ in range(size >> 20)]
    return b"".join(parts) + packer.flush()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    gzip_bomb = b""  # built once in the server process
    pixel_bomb = png_declaring(100_000, 100_000)

    def log_message(self, *args):
        pass

    def _head(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _send(self, status: int, body: bytes, ctype: str = "image/jpeg", **headers: str) -> None:
        self._head(status, {"Content-Type": ctype, "Content-Length": str(len(body)), **headers})
        self.wfile.write(body)

    def _wait_for_hang_up(self) -> None:
        """Stall: nothing more is sent; returns when the client closes (or after LINGER)."""
        self.wfile.flush()
        self.close_connection = True
        self.connection.settimeout(LINGER)
        with contextlib.suppress(OSError):
            while self.connection.recv(65536):
                pass

    def do_GET(self):
        kind = self.path.split("/")[1]
        try:
            getattr(self, f"_{kind}", self._not_found)()
        except (BrokenPipeError, ConnectionResetError):  # the crawler gave up: the point
            self.close_connection = True

    def _not_found(self):
        self._send(404, b"not found", "text/plain")

    def _trickle(self):
        self._head(200, {"Content-Type": "image/jpeg", "Content-Length": "200000"})
        deadline = time.monotonic() + LINGER
        for byte in (JPEG_HEAD * 10_000)[:200_000]:
            if time.monotonic() > deadline:
                break
            self.wfile.write(bytes([byte]))
            self.wfile.flush()
            time.sleep(1.0)
        self.close_connection = True

    def _endless(self):
        self._head(200, {"Content-Type": "image/jpeg", "Transfer-Encoding": "chunked"})
        chunk = b"%x\r\n%s\r\n" % (1 << 20, JPEG_HEAD.ljust(1 << 20, b"\xff"))
        deadline = time.monotonic() + LINGER
        while time.monotonic() < deadline:
            self.wfile.write(chunk)
        self.close_connection = True

    def _ten_gb(self):
        self._head(200, {"Content-Type": "image/jpeg", "Content-Length": str(10 * 1024**3)})
        self.wfile.write(JPEG_HEAD.ljust(65536, b"\0"))
        self._wait_for_hang_up()

    def _gzip_bomb(self):
        self._send(200, self.gzip_bomb, "image/jpeg", **{"Content-Encoding": "gzip"})

    def _pixel_bomb(self):
        self._send(200, self.pixel_bomb, "image/png")

    def _redirect_loop(self):
        self._send(302, b"", "text/plain", Location=self.path)

    def _html(self):
        self._send(200, b"<!doctype html><html><body>not an image</body></html>")

    def _rate_limited(self):
        self._send(429, b"slow down", "text/plain", **{"Retry-After": "1"})

    def _unavailable(self):
        self._send(503, b"down", "text/plain")

    def _slow_headers(self):
        """The status line, then a header line that never ends, one byte a second: each
        read gets a byte well within any read timeout, so only a total deadline stops it."""
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nX-Slow: ")
        deadline = time.monotonic() + LINGER
        while time.monotonic() < deadline:
            self.wfile.write(b"a")
            self.wfile.flush()
            time.sleep(1.0)
        self.close_connection = True

    def _private_redirect(self):
        """A 302 to the cloud metadata address or a private one (alternating by index)."""
        index = int(self.path.rsplit("/", 1)[1].split(".")[0] or 0)
        target = ("http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/a.jpg")[index % 2]
        self._send(302, b"", "text/plain", Location=target)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a parked trickle never holds up shutdown
    request_queue_size = 1024  # the default backlog of 5 drops SYNs in a burst of connects

    def handle_error(self, request, client_address):  # clients hanging up is the point
        pass


def _listen(address: str) -> socket.socket:
    sock = socket.socket()
    sock.bind((address, 0))
    sock.listen(4096)
    return sock


def _serve_forever(sockets: dict[str, socket.socket], init: Callable[[], None] | None) -> None:
    if init is not None:
        init()
    _Handler.gzip_bomb = gzip_of_zeros(64 << 20)
    for kind, sock in sockets.items():
        if kind == "no_answer":
            continue  # listening, never accepting: connections wait in the backlog
        server = _Server(sock.getsockname(), _Handler, bind_and_activate=False)
        server.socket.close()
        server.socket = sock
        threading.Thread(target=server.serve_forever, daemon=True).start()
    threading.Event().wait()


@dataclass(frozen=True)
class HostileServer:
    pid: int
    bases: dict[str, str]  # kind -> "http://127.0.0.N:PORT"

    def url(self, kind: str, index: int) -> str:
        return f"{self.bases[kind]}/{kind}/{index}.jpg"

    def kind_of_host(self) -> dict[str, str]:
        """'127.0.0.N' (the domain stats.json counts failures under) -> kind."""
        return {base.split("//")[1].rsplit(":", 1)[0]: kind for kind, base in self.bases.items()}


@contextlib.contextmanager
def hostile_server(init: Callable[[], None] | None = None) -> Iterator[HostileServer]:
    """Serves every kind in KINDS from a forked process; `init` runs in it first (to raise
    its priority, say)."""
    sockets = {kind: _listen(f"127.0.0.{FIRST_ADDRESS + i}") for i, kind in enumerate(KINDS)}
    proc = multiprocessing.get_context("fork").Process(
        target=_serve_forever, args=(sockets, init), daemon=True
    )
    bases = {kind: "http://{}:{}".format(*sock.getsockname()) for kind, sock in sockets.items()}
    proc.start()
    for sock in sockets.values():
        sock.close()  # the child holds them now
    try:
        _wait_until_served(bases["html"], proc.is_alive)
        yield HostileServer(proc.pid, bases)
    finally:
        proc.terminate()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()


def _wait_until_served(base: str, alive: Callable[[], bool], timeout: float = 30.0) -> None:
    host, port = base.split("//")[1].rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("hostile server exited during start-up")
        with contextlib.suppress(OSError), socket.create_connection((host, int(port)), 1) as s:
            s.sendall(b"GET /html/0.jpg HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            if s.recv(12).startswith(b"HTTP/1."):
                return
        time.sleep(0.05)
    raise RuntimeError(f"hostile server not answering at {base} after {timeout:.0f} s")
