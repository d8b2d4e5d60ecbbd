"""Crawl benchmark: webpairs against img2dataset on the same URL list, served from loopback.

    .venv/bin/python bench/crawl.py --images 2000 --img2dataset-python /tmp/img2dataset-venv/bin/python

Makes K real-looking JPEGs (collages of random crops of the photos shipped in scikit-image
and scikit-learn at random sizes and qualities, deterministic from --seed), serves them with
nginx on 127.0.0.1 (a Python asyncio server when nginx is not on PATH), runs each tool as a
subprocess on a parquet URL list of the first K/2 and then all K images, and prints
samples/s (end to end, and marginal between K/2 and K, where start-up costs cancel out), CPU
seconds of the tool's processes per 1000 samples, and the samples each run wrote.
img2dataset pins old dependencies, so it runs from its own virtualenv:

    python3 -m venv /tmp/img2dataset-venv && /tmp/img2dataset-venv/bin/pip install img2dataset

On a machine that other sessions share, add `--nice -10` (as root) and `--repeat 3`.
`--modes in_memory,multi_processing,dask` adds webpairs on the Dask runner: a local
dask.distributed cluster of --workers processes, started by (and counted in) the job.

With `--hostile-fraction 0.1`, every webpairs configuration also runs on a list in which 10 %
of the URLs point at bench/hostile_server.py (trickles, endless bodies, bombs, redirect loops,
429s, 503s, silent sockets; one loopback address per kind), interleaved with the clean runs,
and the report compares good samples written per second and counts each kind's failure
reasons. webpairs flags for both runs go in --webpairs-args, e.g.
`--webpairs-args "--timeout 5 --read-timeout 2 --retries 1"`; --hostile-kinds picks the kinds
(slow_headers hung webpairs up to 3e2bcac; a15a25d ends it at the deadline). nginx then
logs each request's time, and the report shows when the last clean image was downloaded and
the longest pause between two downloads: a stall of the good URLs shows there, a slow tail of
hostile ones only in the wall time. A run past --run-timeout gets SIGABRT first, so that
PYTHONFAULTHANDLER writes every thread's stack into its log, and the report counts where the
threads were stuck."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import io
import itertools
import json
import logging
import math
import multiprocessing
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hostile_server import KINDS, HostileServer, hostile_server
from PIL import Image

logger = logging.getLogger("bench.crawl")

REPO = Path(__file__).resolve().parent.parent
GENERATOR_VERSION = 2  # bump when make_jpeg changes, so cached image folders are remade
# Photo file (in skimage/data or sklearn/datasets/images) -> caption.
PHOTOS = {
    "astronaut.png": "an astronaut in a white spacesuit in front of a flag",
    "chelsea.png": "a tabby cat looking to the side",
    "coffee.png": "a cup of coffee on a saucer",
    "rocket.jpg": "a rocket on the launch pad",
    "hubble_deep_field.jpg": "galaxies in the hubble deep field",
    "retina.jpg": "a photograph of the human retina",
    "motorcycle_left.png": "a motorcycle in a garage",
    "ihc.png": "a stained tissue sample under a microscope",
    "camera.png": "a black and white photo of a man with a camera",
    "china.jpg": "a chinese temple among trees",
    "flower.jpg": "a pink flower close up",
}
ASPECT = (0.6, 1.8)  # width / height, log-uniform


@dataclass(frozen=True)
class ImageSet:
    long_side: tuple[int, int]  # pixels, log-uniform
    target_bytes: tuple[int, int]  # log-uniform; quality is searched to land under it


# --image-set: "web" is the set of every figure before issue 15 (median 86 KB); "photos" are
# larger camera-like JPEGs (150-300 KB), where the image work weighs more than the hand-offs.
IMAGE_SETS = {
    "web": ImageSet((320, 1600), (50_000, 300_000)),
    "photos": ImageSet((900, 1600), (150_000, 300_000)),
}
QUALITIES = tuple(range(55, 100, 5))
# Two images whose perceptual hashes are this close are remade, so that near-duplicate
# removal (threshold 12 of 64 bits by default) keeps all K.
MIN_PHASH_DISTANCE = 15


# ---- images ------------------------------------------------------------------------------


def _photo_path(name: str) -> Path:
    import skimage.data
    import sklearn.datasets

    skimage_path = Path(skimage.data.__file__).parent / name
    if skimage_path.exists():
        return skimage_path
    return Path(sklearn.datasets.__file__).parent / "images" / name


def load_photos() -> list[tuple[str, Image.Image]]:
    photos = []
    for name in PHOTOS:
        with Image.open(_photo_path(name)) as im:
            photos.append((name, im.convert("RGB")))
    return photos


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def _random_crop(rng: np.random.Generator, photo: Image.Image, w: int, h: int) -> Image.Image:
    """A crop of `photo` with the aspect of w x h (30-100% of the largest one), resized to it."""
    scale = min(photo.width / w, photo.height / h) * rng.uniform(0.3, 1.0)
    cw, ch = max(8, int(w * scale)), max(8, int(h * scale))
    x, y = rng.integers(0, photo.width - cw + 1), rng.integers(0, photo.height - ch + 1)
    im = photo.crop((x, y, x + cw, y + ch)).resize((w, h), Image.Resampling.BICUBIC)
    return im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else im


def _encode_jpeg(im: Image.Image, quality: int, progressive: bool) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality, progressive=progressive)
    return buf.getvalue()


def make_jpeg(
    photos, seed: int, index: int, attempt: int = 0, image_set: str = "web"
) -> tuple[str, bytes]:
    """One web-like JPEG -> (name of the main photo, bytes).

    A random crop of a random photo at a random size and aspect, with 2-4 crops of other
    photos pasted on it (11 photos alone would make thousands of near-duplicates), sensor-like
    grain (an upscaled photo is too smooth to weigh what a real one does), and the highest
    quality that keeps the file under a random target size.
    """
    rng = np.random.default_rng([seed, index, attempt])
    name, photo = photos[rng.integers(len(photos))]
    kind = IMAGE_SETS[image_set]
    long_side, aspect = _log_uniform(rng, *kind.long_side), _log_uniform(rng, *ASPECT)
    w, h = (long_side, long_side / aspect) if aspect >= 1 else (long_side * aspect, long_side)
    w, h = round(w), round(h)
    canvas = _random_crop(rng, photo, w, h)
    for _ in range(rng.integers(2, 5)):
        other = photos[rng.integers(len(photos))][1]
        pw, ph = int(w * rng.uniform(0.2, 0.5)), int(h * rng.uniform(0.2, 0.5))
        xy = (int(rng.integers(0, w - pw + 1)), int(rng.integers(0, h - ph + 1)))
        canvas.paste(_random_crop(rng, other, pw, ph), xy)
    pixels = np.asarray(canvas, dtype=np.int16)  # (H, W, 3)
    grain = rng.normal(0.0, rng.uniform(2.0, 6.0), pixels.shape).astype(np.int16)
    canvas = Image.fromarray(np.clip(pixels + grain, 0, 255).astype(np.uint8))
    target = _log_uniform(rng, *kind.target_bytes)
    progressive = bool(rng.random() < 0.25)
    lo, hi = 0, len(QUALITIES) - 1
    data = _encode_jpeg(canvas, QUALITIES[0], progressive)
    while lo <= hi:  # binary search: the best quality whose file is under the target
        mid = (lo + hi) // 2
        candidate = _encode_jpeg(canvas, QUALITIES[mid], progressive)
        if len(candidate) <= target:
            data, lo = candidate, mid + 1
        else:
            hi = mid - 1
    return name, data


def _phash(data: bytes) -> int | None:
    try:  # the pipeline's own near-duplicate hash, where this checkout has one
        from schemas.imagehash import phash
    except ImportError:
        return None
    with Image.open(io.BytesIO(data)) as im:
        return int(phash(im), 16)


_worker_photos: list = []


def _init_worker() -> None:
    _worker_photos[:] = load_photos()


def _make_one(
    index: int, seed: int, attempt: int = 0, image_set: str = "web"
) -> tuple[str, bytes, int | None]:
    name, data = make_jpeg(_worker_photos, seed, index, attempt, image_set)
    return name, data, _phash(data)


def make_images(
    folder: Path, count: int, seed: int, image_set: str = "web"
) -> list[tuple[str, str, int]]:
    """Writes FOLDER/000000.jpg ...; -> [(file name, photo name, bytes)]. Reuses a folder
    made earlier with the same count, seed and generator version."""
    made = folder / "made.json"
    wanted = {"count": count, "seed": seed, "version": GENERATOR_VERSION}
    if image_set != "web":  # (the web set's record predates the choice)
        wanted["image_set"] = image_set
    if made.exists():
        record = json.loads(made.read_text())
        if {k: record.get(k) for k in wanted} == wanted:
            logger.info("reusing %d images in %s", count, folder)
            return [tuple(f) for f in record["files"]]
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    start = time.perf_counter()
    files, hashes, remade = [], [], 0
    with ProcessPoolExecutor(os.cpu_count() or 1, initializer=_init_worker) as pool:
        make = partial(_make_one, seed=seed, image_set=image_set)
        made_all = pool.map(make, range(count), chunksize=16)
        for index, (name, data, phash) in enumerate(made_all):
            attempt = 0
            while phash is not None and any(
                (phash ^ h).bit_count() < MIN_PHASH_DISTANCE for h in hashes
            ):
                attempt, remade = attempt + 1, remade + 1
                name, data, phash = pool.submit(make, index, attempt=attempt).result()
            hashes += [phash] if phash is not None else []
            (folder / f"{index:06d}.jpg").write_bytes(data)
            files.append((f"{index:06d}.jpg", name, len(data)))
    made.write_text(json.dumps({**wanted, "files": files}))
    sizes = sorted(f[2] for f in files)
    logger.info(
        "made %d JPEGs (%d remade as near-duplicates) in %.0f s: "
        "%.0f / %.0f / %.0f KB min / median / max, %.0f MB in all",
        count,
        remade,
        time.perf_counter() - start,
        sizes[0] / 1e3,
        statistics.median(sizes) / 1e3,
        sizes[-1] / 1e3,
        sum(sizes) / 1e6,
    )
    return files


def write_url_list(path: Path, urls: list[str], files: list[tuple[str, str, int]]) -> None:
    captions = [f"{PHOTOS[photo]} ({i})" for i, (_, photo, _) in enumerate(files)]
    pq.write_table(pa.table({"url": urls, "caption": captions}), path)


def mix_hostile(
    urls: list[str],
    hostile: HostileServer,
    fraction: float,
    seed: int,
    kinds: tuple[str, ...] = tuple(KINDS),
) -> tuple[list[str], dict[str, int]]:
    """Replaces round(fraction x K) URLs with hostile ones -> (URLs, kind -> count).

    One replaced URL at a random place in each of n equal blocks of the list, so that both
    halves (and any stretch of it) hold the same share; kinds in equal numbers, in a random
    order. Deterministic from the seed."""
    n = round(fraction * len(urls))
    rng = np.random.default_rng([seed, 0x4057])
    picked = [kinds[i % len(kinds)] for i in range(n)]
    rng.shuffle(picked)
    mixed = list(urls)
    for i, kind in enumerate(picked):
        lo, hi = i * len(urls) // n, (i + 1) * len(urls) // n
        mixed[int(rng.integers(lo, hi))] = hostile.url(kind, i)
    return mixed, dict(Counter(picked))


# ---- servers -----------------------------------------------------------------------------


def _proc_stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name: [state, ppid, pgrp, session, ...]."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


@dataclass
class Server:
    name: str
    base_url: str
    pid: int
    other_pids: tuple[int, ...] = ()  # more servers whose CPU counts as the server's
    access_log: Path | None = None  # nginx's, one "EPOCH-SECONDS STATUS PATH" line a request

    def cpu_seconds(self) -> float:
        """User + system CPU the server(s) have used so far (they are still running)."""
        ticks = 0
        for pid in (self.pid, *self.other_pids):
            fields = _proc_stat(pid)
            ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc_alive, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc_alive():
            raise RuntimeError("server exited during start-up")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server not listening on 127.0.0.1:{port} after {timeout:.0f} s")


def raise_priority(nice: int) -> None:
    """In a child before exec: its own session, hence its own scheduler autogroup, at `nice`.
    With autogroups (most distributions), a process's nice value only ranks it among its own
    session's processes; the autogroup's nice is what ranks it against other sessions."""
    os.setsid()
    with contextlib.suppress(OSError):  # no autogroups: the process nice below still applies
        Path("/proc/self/autogroup").write_text(str(nice))
    os.setpriority(os.PRIO_PROCESS, 0, nice)


NGINX_CONF = """\
daemon off;
master_process off;  # one process, no user switch: runs the same as root or not
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    log_format timed '$msec $status $request_uri';
    access_log {access_log};
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    open_file_cache max=100000;
    types {{ image/jpeg jpg; }}
    default_type application/octet-stream;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {root};
    }}
}}
"""


@contextlib.contextmanager
def nginx_server(nginx: str, root: Path, tmp: Path, nice: int = 0, log_requests: bool = False):
    """nginx serving `root`; with `log_requests`, each request's time goes to an access log
    (measure() reads from it when the image downloads started and ended, and their gaps)."""
    tmp.mkdir(parents=True, exist_ok=True)
    access_log = tmp / "access.log" if log_requests else None
    if access_log is not None:
        access_log.unlink(missing_ok=True)
    for attempt in range(3):  # the free port may be taken between finding and binding it
        port = _free_port()
        conf = tmp / "nginx.conf"
        log = f"{access_log} timed" if access_log else "off"
        conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, root=root, access_log=log))
        proc = subprocess.Popen(
            [nginx, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log")],
            stdin=subprocess.DEVNULL,
            preexec_fn=partial(raise_priority, nice) if nice else None,
        )
        try:
            _wait_listening(port, lambda p=proc: p.poll() is None)
            break
        except RuntimeError:
            proc.kill()
            proc.wait()
            if attempt == 2:
                raise
    try:
        yield Server("nginx", f"http://127.0.0.1:{port}", proc.pid, access_log=access_log)
    finally:
        proc.send_signal(signal.SIGQUIT)  # graceful: finish open responses, then exit
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _serve_files_forever(sock: socket.socket, root: Path) -> None:
    """HTTP/1.1 with keep-alive, every file held in memory, one asyncio loop."""
    files = {f"/{p.name}": p.read_bytes() for p in root.glob("*.jpg")}

    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode("latin-1").split("?")[0]
                body = files.get(path)
                if body is None:
                    writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                else:
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n"
                        b"Content-Length: %d\r\n\r\n" % len(body)
                    )
                    writer.write(body)
                await writer.drain()
                if b"connection: close" in head.lower():
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    async def serve():
        server = await asyncio.start_server(handle, sock=sock, backlog=4096)
        await server.serve_forever()

    asyncio.run(serve())


@contextlib.contextmanager
def python_server(root: Path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    port = sock.getsockname()[1]
    proc = multiprocessing.get_context("fork").Process(
        target=_serve_files_forever, args=(sock, root), daemon=True
    )
    proc.start()
    sock.close()
    try:
        _wait_listening(port, proc.is_alive)
        yield Server("python-asyncio", f"http://127.0.0.1:{port}", proc.pid)
    finally:
        proc.terminate()
        proc.join(10)


def serve(root: Path, tmp: Path, kind: str, nice: int = 0, log_requests: bool = False):
    """nginx when it is on PATH (or asked for), else the Python server (which logs nothing)."""
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if kind == "nginx" and not nginx:
        raise SystemExit("crawl.py: error: --server nginx, but nginx is not installed")
    if kind != "python" and nginx:
        return nginx_server(nginx, root, tmp, nice, log_requests)
    return python_server(root)


# ---- runs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    tool: str
    mode: str
    cmd: list[str]
    output: Path
    env: dict[str, str]
    cwd: Path = REPO  # `python -m` imports from here first


@dataclass(frozen=True)
class Measured:
    wall: float
    cpu: float  # user + system of the tool's processes, every descendant (see reap_session)
    server_cpu: float
    other_cpu: float  # the rest of the machine's busy time: other load skews the figures
    written: int
    rc: int
    peak_rss: int = 0  # bytes: sum of the peak RSS (VmHWM) of each of the tool's processes
    hung: bool = False  # killed after --run-timeout
    stats: dict | None = None  # webpairs' OUTPUT/stats.json
    served: Served | None = None  # when the image server answered, from its access log


@dataclass(frozen=True)
class Served:
    """The image server's requests during a run, in seconds from the run's start."""

    count: int
    first: float
    last: float  # the last image downloaded: the rest of the run is tail and shutdown
    longest_gap: float  # the longest time between two requests, from first to last

    @classmethod
    def from_log(cls, path: Path | None, offset: int, start_epoch: float) -> Served | None:
        if path is None or not path.exists():
            return None
        with open(path, "rb") as f:
            f.seek(offset)
            lines = f.read().decode("latin-1").splitlines()
        times = sorted(float(line.split(" ", 1)[0]) - start_epoch for line in lines if line)
        if not times:
            return None
        gaps = [b - a for a, b in itertools.pairwise(times)] or [0.0]
        return cls(len(times), times[0], times[-1], max(gaps))


def _flags(pairs: dict[str, object]) -> list[str]:
    return [s for flag, value in pairs.items() for s in (flag, str(value))]


@lru_cache
def curate_flags(root: Path) -> frozenset[str]:
    """The flags `python -m pipeline.curate` knows in this checkout (they change over time)."""
    help_text = subprocess.run(
        [sys.executable, "-m", "pipeline.curate", "--help"],
        cwd=root,
        env=dict(os.environ, PYTHONPATH=str(root)),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return frozenset(re.findall(r"--[a-z][a-z-]*", help_text))


def webpairs_job(
    urls: Path,
    out: Path,
    *,
    mode: str,
    threads: int,
    workers: int,
    samples_per_shard: int,
    root: Path = REPO,
    extra_args: tuple[str, ...] = (),
) -> Job:
    cmd = [sys.executable, "-m", "pipeline.curate", "--overwrite"]
    cmd += _flags(
        {
            "--input": urls,
            "--output": out,
            "--resize-mode": "keep_ratio",
            "--image-size": 256,
            "--threads": threads,
            "--samples-per-shard": samples_per_shard,
        }
    )
    known = curate_flags(root)
    if "--allow-networks" in known:  # the SSRF guard refuses loopback unless told
        cmd += ["--allow-networks", "127.0.0.0/8"]  # nginx on .1, hostile kinds on .2 and up
    if "--per-host" in known:  # one host serves everything: let all threads at it
        cmd += ["--per-host", str(threads)]
    label = f"{mode} t={threads}"
    if mode == "multi_processing":
        cmd += ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]
        label = f"{mode} x{workers} t={threads}"
    elif mode == "dask":  # a LocalCluster of `workers` processes, started for (and in) the job
        cmd += ["--runner", "dask", "--dask-workers", str(workers)]
        label = f"{mode} x{workers} t={threads}"
    cmd += extra_args
    label += f" {shlex.join(extra_args)}" if extra_args else ""
    # PYTHONFAULTHANDLER: SIGABRT dumps every thread's stack into the log (see measure)
    env = dict(os.environ, PYTHONPATH=str(root), PYTHONFAULTHANDLER="1")
    return Job("webpairs", label, cmd, out, env, root)


def img2dataset_job(
    urls: Path, out: Path, *, python: str, workers: int, threads: int, samples_per_shard: int
) -> Job:
    cmd = [python, "-m", "img2dataset.main"]
    cmd += _flags(
        {
            "--url_list": urls,
            "--output_folder": out,
            "--resize_mode": "keep_ratio",
            "--image_size": 256,
            "--output_format": "webdataset",
            "--input_format": "parquet",
            "--url_col": "url",
            "--caption_col": "caption",
            "--processes_count": workers,
            "--thread_count": threads,
            "--number_sample_per_shard": samples_per_shard,
        }
    )
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")  # no update check over the network
    return Job("img2dataset", f"{workers} procs t={threads}", cmd, out, env)


def written_samples(job: Job) -> tuple[int, dict | None]:
    """(samples written, webpairs' stats.json or None)."""
    if job.tool == "webpairs":
        path = job.output / "stats.json"
        stats = json.loads(path.read_text()) if path.exists() else None
        return (stats["written"] if stats else 0), stats
    written = sum(json.loads(p.read_text())["successes"] for p in job.output.glob("*_stats.json"))
    return written, None


def _machine_busy_seconds() -> float:
    # /proc/stat "cpu" line: user nice system idle iowait irq softirq steal ...
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(server: Server, max_wait: float, busy_cores: float = 0.25) -> None:
    """Waits (up to max_wait s) for a second in which other processes use < busy_cores:
    on a shared machine, one busy neighbour halves what a 2-core benchmark measures."""
    deadline, used = time.monotonic() + max_wait, 0.0
    while time.monotonic() < deadline:
        busy, server_cpu = _machine_busy_seconds(), server.cpu_seconds()
        time.sleep(1.0)
        used = _machine_busy_seconds() - busy - (server.cpu_seconds() - server_cpu)
        if used < busy_cores:
            return
    if max_wait > 0:
        logger.warning("other processes use %.1f cores; measuring anyway", used)


class PeakRss(threading.Thread):
    """Follows the peak RSS (VmHWM) of every process in a session, the tool's process tree:
    their sum bounds the tree's peak from above, and is exact for a single process."""

    def __init__(self, session: int, every: float = 0.5):
        super().__init__(daemon=True)
        self.session, self.every = session, every
        self.peaks: dict[int, int] = {}
        self.stop = threading.Event()

    def _sample(self) -> None:
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                if int(stat.read_text().rsplit(")", 1)[1].split()[3]) != self.session:
                    continue
                status = (stat.parent / "status").read_text()
                kb = int(status.split("VmHWM:", 1)[1].split()[0])
                self.peaks[int(stat.parent.name)] = kb * 1024

    def run(self) -> None:
        while not self.stop.wait(self.every):
            self._sample()

    def total(self) -> int:
        return sum(self.peaks.values())


def stuck_threads(log_path: Path) -> Counter:
    """From a faulthandler dump in a log: (innermost frame above socket.py and ssl.py,
    innermost pipeline/ frame) -> number of threads there."""
    text = log_path.read_text(errors="replace")
    dump = text[text.rfind("Fatal Python error: Aborted") :] if "Aborted" in text else ""
    places: Counter = Counter()
    for block in re.split(r"\n(?=(?:Current thread|Thread) 0x)", dump)[1:]:
        frames = re.findall(r'File "([^"]+)", line (\d+) in (\S+)', block)
        if not frames:
            continue
        # the innermost frame above the socket layer, e.g. http/client.py's header reading
        inner = next(
            (f for f in frames if Path(f[0]).name not in ("socket.py", "ssl.py")), frames[0]
        )
        inner = "{}:{} {}".format(Path(inner[0]).name, *inner[1:])
        ours = next((f for f in frames if "/pipeline/" in f[0]), None)
        where = inner + (
            " <- pipeline/{}:{} {}".format(Path(ours[0]).name, *ours[1:]) if ours else ""
        )
        places[where] += 1
    return places


def become_subreaper() -> bool:
    """Linux: descendants orphaned during a run (a forkserver and its workers, whose parent
    exits first) are re-parented to this process instead of init, so reap_session can wait
    for them and their CPU is counted in our RUSAGE_CHILDREN."""
    with contextlib.suppress(OSError, AttributeError):
        return ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # SET_CHILD_SUBREAPER
    return False


def reap_session(session: int, timeout: float = 15.0) -> int:
    """Waits for the processes of `session` that were re-parented to us; kills what is left
    after `timeout` s. -> how many were reaped."""
    deadline, reaped = time.monotonic() + timeout, 0
    while True:
        ours = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[3]) == session and int(fields[1]) == os.getpid():
                    ours.append(int(stat.parent.name))
        if not ours:
            return reaped
        for pid in ours:
            with contextlib.suppress(ChildProcessError):
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                if os.waitpid(pid, os.WNOHANG)[0]:
                    reaped += 1
        time.sleep(0.05)


def measure(
    job: Job, server: Server, log_path: Path, nice: int = 0, run_timeout: float = 600.0
) -> Measured:
    """Runs `job` in its own session; kills that session after `run_timeout` s (a hang)."""
    shutil.rmtree(job.output, ignore_errors=True)
    server_before, busy_before = server.cpu_seconds(), _machine_busy_seconds()
    access_log = server.access_log
    log_offset = access_log.stat().st_size if access_log and access_log.exists() else 0
    start_epoch = time.time()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            job.cmd,
            cwd=job.cwd,
            env=job.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=partial(raise_priority, nice) if nice else None,
            start_new_session=not nice,  # raise_priority starts one itself
        )
    rss = PeakRss(proc.pid)
    rss.start()
    hung = threading.Event()

    def kill_session() -> None:
        hung.set()
        with contextlib.suppress(ProcessLookupError):
            if job.env.get("PYTHONFAULTHANDLER"):  # where each thread is stuck, into the log
                os.kill(proc.pid, signal.SIGABRT)
                time.sleep(3.0)
            os.killpg(proc.pid, signal.SIGKILL)

    timer = threading.Timer(run_timeout, kill_session)
    timer.start()
    _, status, usage = os.wait4(proc.pid, 0)  # rusage of the tool and the children it reaped
    wall = time.perf_counter() - start
    reap_session(proc.pid)  # what outlived the tool's main process, re-parented to us
    timer.cancel()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    rss.stop.set()
    rss.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if hung.is_set():
        logger.warning("%s %s: killed after %.0f s", job.tool, job.mode, run_timeout)
        for where, n in stuck_threads(log_path).most_common(8):
            logger.warning("  %3d thread(s) stuck at %s", n, where)
    busy = _machine_busy_seconds() - busy_before
    # every process of the run that we or its own parent reaped (wait4's rusage alone misses
    # orphans, e.g. a forkserver and its workers)
    cpu = (children.ru_utime + children.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime
    )
    cpu = max(cpu, usage.ru_utime + usage.ru_stime)
    server_cpu = server.cpu_seconds() - server_before
    other = max(0.0, busy - cpu - server_cpu)
    written, stats = written_samples(job)
    peak = max(rss.total(), usage.ru_maxrss * 1024)
    served = Served.from_log(access_log, log_offset, start_epoch)
    return Measured(
        wall, cpu, server_cpu, other, written, proc.returncode, peak, hung.is_set(), stats, served
    )


# ---- report ------------------------------------------------------------------------------


def machine_description() -> str:
    cpu = platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, {platform.platform()}, "
        f"Python {platform.python_version()}"
    )


@dataclass(frozen=True)
class Row:
    job: Job
    url_set: str  # "clean" or "hostile"
    expected: int  # samples the URL list can give: its URLs on the image server
    best: Measured  # the run with the shortest wall time
    median_wall: float
    half: Measured | None  # the best run on the first K/2 URLs
    runs: tuple[Measured, ...]  # every run, on K/2 and on K

    @property
    def rate(self) -> float:
        """Good samples written per second, end to end."""
        return self.best.written / self.best.wall

    @property
    def marginal_rate(self) -> float | None:
        """Samples/s between K/2 and K: start-up and shutdown costs cancel out."""
        if self.half is None or self.best.wall <= self.half.wall:
            return None
        return (self.best.written - self.half.written) / (self.best.wall - self.half.wall)

    @property
    def peak_rss(self) -> int:
        return max(m.peak_rss for m in self.runs)

    @property
    def hung(self) -> int:
        return sum(m.hung for m in self.runs)


def results_table(rows: list[Row]) -> str:
    lines = [
        "| tool | mode | URLs | samples/s | marginal samples/s (K/2 to K) | CPU-s/1000 | written "
        "| wall s (median) | wall s at K/2 | peak RSS MiB | server CPU-s | other CPU-s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        m = r.best
        flag = "" if m.written == r.expected and m.rc == 0 else f" (!, rc {m.rc})"
        marginal = f"{r.marginal_rate:.1f}" if r.marginal_rate else "-"
        half = f"{r.half.wall:.1f}" if r.half else "-"
        lines.append(
            f"| {r.job.tool} | {r.job.mode} | {r.url_set} | {r.rate:.1f} | {marginal} "
            f"| {1000 * m.cpu / max(1, m.written):.2f} | {m.written}/{r.expected}{flag} "
            f"| {m.wall:.1f} ({r.median_wall:.1f}) | {half} | {r.peak_rss / 2**20:.0f} "
            f"| {m.server_cpu:.1f} | {m.other_cpu:.1f} |"
        )
    return "\n".join(lines)


def reasons_by_kind(stats: dict, kind_of_host: dict[str, str]) -> dict[str, dict[str, int]]:
    """stats.json's failures per domain -> failures per hostile kind ('clean' for nginx's)."""
    by_kind: dict[str, dict[str, int]] = {}
    for domain, reasons in stats.get("failed_by_domain", {}).items():
        by_kind[kind_of_host.get(domain, "clean")] = reasons
    return by_kind


def hostile_report(
    rows: list[Row], counts: dict[str, int], kind_of_host: dict[str, str], floor: float
) -> tuple[str, bool]:
    """Clean vs hostile good samples/s per configuration, and how each kind failed ->
    (report, whether every configuration kept `floor` x its clean rate)."""
    lines = [
        "| mode | clean samples/s | hostile good samples/s | ratio | marginal clean "
        "| marginal hostile | marginal ratio | peak RSS MiB clean / hostile | runs hung "
        "| last image download s clean / hostile | longest gap s clean / hostile |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    clean = {r.job.mode: r for r in rows if r.job.tool == "webpairs" and r.url_set == "clean"}
    held, details = True, []
    for r in rows:
        c = clean.get(r.job.mode)
        if r.url_set != "hostile" or c is None:
            continue
        ratio = r.rate / c.rate
        held &= ratio >= floor and not r.hung
        marginal = "-"
        if r.marginal_rate and c.marginal_rate:
            marginal = f"{r.marginal_rate / c.marginal_rate:.2f}"
        last = gap = "-"
        if c.best.served and r.best.served:
            last = f"{c.best.served.last:.1f} / {r.best.served.last:.1f}"
            gap = f"{c.best.served.longest_gap:.1f} / {r.best.served.longest_gap:.1f}"
        lines.append(
            f"| {r.job.mode} | {c.rate:.1f} | {r.rate:.1f} | {ratio:.2f} "
            f"| {c.marginal_rate or 0:.1f} | {r.marginal_rate or 0:.1f} | {marginal} "
            f"| {c.peak_rss / 2**20:.0f} / {r.peak_rss / 2**20:.0f} | {c.hung + r.hung} "
            f"| {last} | {gap} |"
        )
        by_kind = reasons_by_kind(r.best.stats or {}, kind_of_host)
        details.append(f"\n{r.job.mode}, hostile run (best): failure reasons by kind")
        for kind, expected in KINDS.items():
            if kind not in counts:
                continue
            got = by_kind.get(kind, {})
            unexpected = sorted(set(got) - expected)
            missing = counts.get(kind, 0) - sum(got.values())
            verdict = "ok" if not unexpected and not missing else "UNEXPECTED"
            if missing:
                verdict += f", {missing} not counted as failed"
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(got.items())) or "-"
            details.append(f"  {kind:14s} {counts.get(kind, 0):4d} URLs: {reasons} [{verdict}]")
        if by_kind.get("clean"):
            details.append(f"  clean URLs that failed: {by_kind['clean']}")
    return "\n".join(lines + details), held


def _int_list(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def _str_list(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="crawl.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=2000, help="K, the number of images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--image-set",
        choices=tuple(IMAGE_SETS),
        default="web",
        help="web: 320-1600 px, 50-300 KB (median 86 KB); photos: 900-1600 px, 150-300 KB",
    )
    parser.add_argument("--workdir", type=Path, default=REPO / "bench" / "out" / "crawl")
    parser.add_argument("--server", choices=("auto", "nginx", "python"), default="auto")
    parser.add_argument(
        "--modes",
        type=_str_list,
        default=["in_memory", "multi_processing"],
        help="webpairs modes, comma-separated: DirectRunner's in_memory and multi_processing, "
        "dask (a local dask.distributed cluster of --workers processes)",
    )
    parser.add_argument(
        "--threads", type=_int_list, default=[64], help="webpairs --threads values, e.g. 16,64"
    )
    parser.add_argument("--workers", type=int, default=2, help="processes, for both tools")
    parser.add_argument("--samples-per-shard", type=int, default=500, help="for both tools")
    parser.add_argument(
        "--webpairs-args",
        action="append",
        help="extra flags for webpairs, e.g. '--decode-threads 4'; given several times, "
        "each is a configuration of its own",
    )
    parser.add_argument(
        "--webpairs-root",
        type=Path,
        default=REPO,
        help="import the pipeline package from here (a patched copy, say)",
    )
    parser.add_argument("--img2dataset-python", help="python of a venv with img2dataset")
    parser.add_argument("--img2dataset-threads", type=int, default=64)
    parser.add_argument(
        "--hostile-fraction",
        type=float,
        default=0.0,
        help="also run every webpairs configuration on a list with this fraction of hostile "
        "URLs (e.g. 0.1), and compare good samples/s with the clean run's",
    )
    parser.add_argument(
        "--hostile-kinds",
        type=_str_list,
        default=list(KINDS),
        help=f"kinds of hostile URL to mix in, comma-separated (default: all of {', '.join(KINDS)})",
    )
    parser.add_argument(
        "--hostile-floor",
        type=float,
        default=0.9,
        help="the hostile run must keep this fraction of the clean run's samples/s",
    )
    parser.add_argument(
        "--run-timeout",
        type=float,
        default=600.0,
        help="a run still going after this many seconds has hung: it is killed and flagged",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per configuration, interleaved; best shown"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="before each run, wait up to this many seconds for other load to stop "
        "(0: don't; not done with a negative --nice)",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="scheduling priority of the servers and the tools (below 0 needs root): on a "
        "shared machine, -10 keeps other sessions' load from skewing the figures",
    )
    parser.add_argument(
        "--no-half-run",
        dest="half_run",
        action="store_false",
        help="skip the run on K/2 URLs that gives the marginal samples/s",
    )
    args = parser.parse_args(argv)
    args.webpairs_args = args.webpairs_args or [""]
    if args.images < 1 or args.repeat < 1 or args.workers < 1:
        parser.error("--images, --repeat and --workers must be at least 1")
    if not 0.0 <= args.hostile_fraction < 1.0:
        parser.error("--hostile-fraction must be in [0, 1)")
    if args.nice < 0 and os.geteuid() != 0:
        parser.error("--nice below 0 needs root")
    unknown_kinds = set(args.hostile_kinds) - set(KINDS)
    if unknown_kinds or not args.hostile_kinds:
        parser.error(f"--hostile-kinds: unknown kind {', '.join(sorted(unknown_kinds))}")
    unknown = set(args.modes) - {"in_memory", "multi_processing", "dask"}
    if unknown:
        parser.error(f"--modes: unknown mode {', '.join(sorted(unknown))}")
    return args


def run_all(
    makers: dict[str, tuple[str, Callable[[Path, Path], Job]]],
    url_sets: dict[str, list[str]],
    files: list[tuple[str, str, int]],
    server: Server,
    work: Path,
    *,
    repeat: int = 1,
    quiet_wait: float = 0.0,
    half_run: bool = True,
    nice: int = 0,
    run_timeout: float = 600.0,
) -> list[Row]:
    """makers: name -> (URL set, (urls, out) -> Job). `repeat` interleaved rounds; in each,
    every configuration waits for a quiet machine, then runs on the first K/2 URLs of its
    set and on all K."""
    lists = {}
    for name, urls in url_sets.items():
        lists[name] = work / f"urls-{name}-half.parquet", work / f"urls-{name}.parquet"
        write_url_list(lists[name][0], urls[: len(urls) // 2], files[: len(files) // 2])
        write_url_list(lists[name][1], urls, files)
    runs: dict[str, list[Measured]] = {name: [] for name in makers}
    halves: dict[str, list[Measured]] = {name: [] for name in makers}
    for round_ in range(repeat):
        for name, (url_set, make) in makers.items():
            wait_for_quiet(server, quiet_wait)
            sizes = [(0, halves, "half"), (1, runs, "all")]
            for which, into, label in sizes if half_run else sizes[1:]:
                job = make(lists[url_set][which], work / name)
                logger.info("run %d/%d: %s", round_ + 1, repeat, shlex.join(job.cmd))
                m = measure(job, server, work / f"{name}-{label}.log", nice, run_timeout)
                logger.info(
                    "%s %s (%s, %s): %.1f s wall, %.1f CPU-s, %.1f other CPU-s, %d written, "
                    "peak RSS %.0f MiB, rc %d%s, load average %.1f",
                    job.tool,
                    job.mode,
                    url_set,
                    label,
                    m.wall,
                    m.cpu,
                    m.other_cpu,
                    m.written,
                    m.peak_rss / 2**20,
                    m.rc,
                    ", HUNG" if m.hung else "",
                    os.getloadavg()[0],  # the machine is shared: how busy it was (1 min)
                )
                if m.served:
                    logger.info(
                        "  image server: %d requests from %.1f to %.1f s, longest gap %.1f s",
                        m.served.count,
                        m.served.first,
                        m.served.last,
                        m.served.longest_gap,
                    )
                into[name].append(m)
    prefix = server.base_url + "/"
    return [
        Row(
            make(lists[url_set][1], work / name),
            url_set,
            sum(u.startswith(prefix) for u in url_sets[url_set]),
            min(runs[name], key=lambda m: m.wall),
            statistics.median(m.wall for m in runs[name]),
            min(halves[name], key=lambda m: m.wall) if halves[name] else None,
            tuple(runs[name] + halves[name]),
        )
        for name, (url_set, make) in makers.items()
    ]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(argv)
    if not become_subreaper():
        logger.warning("not a subreaper: CPU of orphaned worker processes is not counted")
    work = args.workdir.resolve()
    suffix = "" if args.image_set == "web" else f"-{args.image_set}"
    images = work / f"images-{args.images}-seed{args.seed}{suffix}"
    files = make_images(images, args.images, args.seed, args.image_set)

    shared = {"workers": args.workers, "samples_per_shard": args.samples_per_shard}
    root = args.webpairs_root.resolve()
    makers = {}
    for mode, t, (i, extra) in itertools.product(
        args.modes, args.threads, enumerate(args.webpairs_args)
    ):
        name = f"webpairs-{mode}-t{t}" + (f"-a{i}" if len(args.webpairs_args) > 1 else "")
        make = partial(
            webpairs_job,
            mode=mode,
            threads=t,
            root=root,
            extra_args=tuple(shlex.split(extra)),
            **shared,
        )
        makers[name] = ("clean", make)
        if args.hostile_fraction:
            makers[f"{name}-hostile"] = ("hostile", make)
    if args.img2dataset_python:
        makers["img2dataset"] = (
            "clean",
            partial(
                img2dataset_job,
                python=args.img2dataset_python,
                threads=args.img2dataset_threads,
                **shared,
            ),
        )
    else:
        logger.info("no --img2dataset-python: img2dataset is not run")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    with contextlib.ExitStack() as servers:
        server = servers.enter_context(
            serve(images, work / "server", args.server, args.nice, bool(args.hostile_fraction))
        )
        logger.info("serving %s at %s with %s", images, server.base_url, server.name)
        url_sets = {"clean": [f"{server.base_url}/{name}" for name, _, _ in files]}
        if args.hostile_fraction:
            init = partial(raise_priority, args.nice) if args.nice else None
            hostile = servers.enter_context(hostile_server(init))
            server = replace(server, other_pids=(hostile.pid,))
            url_sets["hostile"], counts = mix_hostile(
                url_sets["clean"], hostile, args.hostile_fraction, args.seed, args.hostile_kinds
            )
            logger.info("hostile URLs: %s", counts)
        rows = run_all(
            makers,
            url_sets,
            files,
            server,
            work,
            repeat=args.repeat,
            quiet_wait=0.0 if args.nice < 0 else args.quiet_wait,
            half_run=args.half_run,
            nice=args.nice,
            run_timeout=args.run_timeout,
        )

    print(f"\nmachine: {machine_description()}")
    print(f"server: {server.name}; {args.images} JPEGs, {sum(f[2] for f in files) / 1e6:.0f} MB")
    print(f"best of {args.repeat} run(s) per configuration; logs in {work}")
    print(results_table(rows))
    ours = [r for r in rows if r.job.tool == "webpairs" and r.url_set == "clean" and r.best.written]
    theirs = [r for r in rows if r.job.tool == "img2dataset" and r.best.written]
    if ours and theirs:
        best = max(ours, key=lambda r: r.rate)
        line = (
            f"webpairs ({best.job.mode}) / img2dataset samples/s: {best.rate / theirs[0].rate:.2f}x"
        )
        if best.marginal_rate and theirs[0].marginal_rate:
            line += f", marginal {best.marginal_rate / theirs[0].marginal_rate:.2f}x"
        print(line)
    held = True
    if args.hostile_fraction:
        n = sum(counts.values())
        print(
            f"\nhostile mix: {n} of {args.images} URLs ({n / args.images:.0%}), "
            f"{', '.join(f'{k} {v}' for k, v in counts.items())}; "
            f"criterion: hostile good samples/s >= {args.hostile_floor:.2f} x clean"
        )
        report, held = hostile_report(rows, counts, hostile.kind_of_host(), args.hostile_floor)
        print(report)
        print(f"criterion {'holds' if held else 'MISSED'}")
    incomplete = [r for r in rows if r.job.tool == "webpairs" and r.best.written != r.expected]
    return 1 if incomplete or not held else 0


if __name__ == "__main__":
    sys.exit(main())
