"""Shared fixtures: real photos from scikit-image/scikit-learn and a loopback HTTP server
that serves them, plus the misbehaving endpoints a crawler meets on the web."""

from __future__ import annotations

import contextlib
import gzip
import io
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest
from PIL import Image

SKIMAGE_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "hubble_deep_field.jpg",
    "camera.png",
)
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")


def _photo_paths() -> list[Path]:
    import skimage.data
    import sklearn.datasets

    sk = Path(skimage.data.__file__).parent
    sl = Path(sklearn.datasets.__file__).parent / "images"
    return [sk / n for n in SKIMAGE_PHOTOS] + [sl / n for n in SKLEARN_PHOTOS]


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG" and im.mode not in ("RGB", "L", "CMYK"):
        im = im.convert("RGB")
    im.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="session")
def photos() -> dict[str, Image.Image]:
    """Real photographs (name -> RGB or L image), shipped inside scikit-image / scikit-learn."""
    out = {}
    for path in _photo_paths():
        with Image.open(path) as im:
            im.load()
            out[path.stem] = im.copy()
    return out


@pytest.fixture(scope="session")
def web_images(photos) -> dict[str, tuple[bytes, str]]:
    """Path -> (body, content-type): the photos re-encoded at web-like sizes and formats."""
    files: dict[str, tuple[bytes, str]] = {}
    sizes = {"small": 160, "medium": 640, "large": 1400}
    for i, (name, im) in enumerate(sorted(photos.items())):
        rgb = im.convert("RGB")
        label = list(sizes)[i % 3]
        side = sizes[label]
        scale = side / max(rgb.size)
        resized = rgb.resize(
            (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))), Image.LANCZOS
        )
        files[f"/img/{name}.jpg"] = (encode(resized, "JPEG", quality=90), "image/jpeg")
        files[f"/img/{name}.png"] = (encode(resized, "PNG"), "image/png")
        files[f"/img/{name}.webp"] = (encode(resized, "WEBP", quality=80), "image/webp")
    return files


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (and whose pixel data is absent)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


GZIP_BOMB = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)  # 64 MiB of zeros in ~64 KiB
PIXEL_BOMB = _png_declaring(100_000, 100_000)


class Site:
    """State of the loopback server: files, per-path hit counts and a request log."""

    def __init__(self, files: dict[str, tuple[bytes, str]]):
        self.robots: str | None = None  # robots.txt body, when set
        self.delay = 0.0  # seconds before answering a file (a slow but honest server)
        self.files = dict(files)
        self.hits: dict[str, int] = {}
        self.log: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        self.base = ""

    def url(self, path: str) -> str:
        return self.base + path


def _make_handler(site: Site):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep pytest output clean
            pass

        def _send(
            self, status: int, body: bytes, ctype: str = "text/plain", headers: dict | None = None
        ):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: C901 - one branch per endpoint reads best here
            path = self.path.split("?")[0]
            with site.lock:
                site.hits[path] = site.hits.get(path, 0) + 1
                hits = site.hits[path]
                site.log.append((time.monotonic(), self.path))
            jpeg = site.files.get("/img/chelsea.jpg", next(iter(site.files.values())))[0]
            if path in site.files:
                time.sleep(site.delay)
                body, ctype = site.files[path]
                return self._send(200, body, ctype)
            if path.startswith("/flaky/"):  # 500 on the first hit, then the image
                return (
                    self._send(500, b"try again")
                    if hits == 1
                    else self._send(200, jpeg, "image/jpeg")
                )
            if path.startswith("/down-then-up/"):  # 503 twice, then the image
                return (
                    self._send(503, b"down") if hits <= 2 else self._send(200, jpeg, "image/jpeg")
                )
            if path.startswith("/always500/"):
                return self._send(503, b"down")
            if path == "/ratelimited.jpg":
                if hits == 1:
                    return self._send(429, b"slow down", headers={"Retry-After": "1"})
                return self._send(200, jpeg, "image/jpeg")
            if path == "/slow.jpg":  # trickles one byte per 0.5 s forever (well, 60 s)
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(jpeg)))
                self.end_headers()
                try:
                    for b in jpeg[:120]:
                        self.wfile.write(bytes([b]))
                        self.wfile.flush()
                        time.sleep(0.5)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                return None
            if path == "/slow-headers.jpg":  # the status line and headers, a byte per 0.3 s
                try:
                    for b in b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nX-Pad: " + b"a" * 200:
                        self.wfile.write(bytes([b]))
                        self.wfile.flush()
                        time.sleep(0.3)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                self.close_connection = True
                return None
            if path == "/big.jpg":  # honest Content-Length, too big
                return self._send(200, jpeg + b"\0" * (3 * 1024 * 1024), "image/jpeg")
            if path == "/big-chunked.jpg":  # no Content-Length: the cap must bite while streaming
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    chunk = jpeg[:65536].ljust(65536, b"\0")
                    for _ in range(100):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass
                return None
            if path == "/truncated.jpg":
                return self._send(200, jpeg[: len(jpeg) // 3], "image/jpeg")
            if path == "/html.jpg":
                return self._send(
                    200, b"<!doctype html><html><body>not an image</body></html>", "image/jpeg"
                )
            if path == "/endless.jpg":  # a body that never ends
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                chunk = b"\xff" * 65536
                try:
                    deadline = time.monotonic() + 30
                    while time.monotonic() < deadline:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                except (BrokenPipeError, ConnectionResetError):
                    pass
                return None
            if path == "/ten-gb.jpg":  # claims 10 GB, sends a little, slowly
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(10 * 1024**3))
                self.end_headers()
                try:
                    self.wfile.write(jpeg[:1000])
                    time.sleep(5)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                return None
            if path == "/gzip-bomb.jpg":
                return self._send(200, GZIP_BOMB, "image/jpeg", {"Content-Encoding": "gzip"})
            if path == "/pixel-bomb.png":
                return self._send(200, PIXEL_BOMB, "image/png")
            if path == "/redirect-to":
                target = unquote(self.path.split("to=", 1)[1]) if "to=" in self.path else "/"
                return self._send(302, b"", headers={"Location": target})
            if path == "/robots.txt" and site.robots is not None:
                return self._send(200, site.robots.encode(), "text/plain")
            if path == "/loop":
                return self._send(302, b"", headers={"Location": "/loop"})
            if path == "/redirect.jpg":
                return self._send(301, b"", headers={"Location": "/img/coffee.jpg"})
            if path == "/noai.jpg":
                return self._send(200, jpeg, "image/jpeg", {"X-Robots-Tag": "noai"})
            if path == "/otherbot-noai.jpg":
                return self._send(200, jpeg, "image/jpeg", {"X-Robots-Tag": "otherbot: noai"})
            return self._send(404, b"not found")

    return Handler


class _QuietServer(ThreadingHTTPServer):
    def handle_error(
        self, request, client_address
    ):  # clients hanging up is the point of some endpoints
        pass


@contextlib.contextmanager
def serve(files: dict[str, tuple[bytes, str]]):
    """A real HTTP server on 127.0.0.1 serving `files` and the bad endpoints above."""
    s = Site(files)
    server = _QuietServer(("127.0.0.1", 0), _make_handler(s))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    s.base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield s
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def site(web_images):
    with serve(web_images) as s:
        yield s
