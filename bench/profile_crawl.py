"""Where a crawl's time goes: `webpairs curate` on bench/crawl.py's loopback images under py-spy.

    .venv/bin/python bench/profile_crawl.py --images 3000 --image-set web --py-spy /tmp/tools/bin/py-spy
    .venv/bin/python bench/profile_crawl.py --images 3000 --stages   # time per fused stage

Serves the same images as bench/crawl.py (made there, cached in --workdir), runs
`python -m pipeline.curate` with the benchmark's flags (plus --webpairs-args) under
`py-spy record --format raw` (all threads, or only those holding the GIL with --gil), and
prints the share of samples in each component (the innermost frame of a known component
decides), then the top leaf functions. py-spy is not a
dependency of webpairs: install it anywhere (`pip install py-spy`) and pass its path.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import crawl

# (label, substrings of a frame "function (file:line)"). Each sample goes to the first label, in
# this order, that matches a frame, from the innermost frame out: the innermost known component.
BUCKETS = (
    ("Pillow encode", ("_encode_tile", "images.py:_encode", "_encode (pipeline")),
    ("image hashes", ("imagehash.py",)),
    ("decode + resize (Pillow)", ("pipeline/crawl/images.py", "PIL/")),
    (
        "download (urllib3, http.client, sockets)",
        ("pipeline/crawl/", "urllib3/", "http/client", "socket.py", "ssl.py"),
    ),
    ("staging (StageRows)", ("pipeline/io/staging.py",)),
    ("shard writing", ("pipeline/io/shards.py", "tarfile.py")),
    ("curation stages", ("pipeline/curation/",)),
    ("progress side channel", ("pipeline/accounting/",)),
    ("thread pools and queues", ("concurrent/futures", "queue.py", "threading.py")),
    ("imports", ("importlib", "<frozen")),
    ("pyarrow / parquet", ("pyarrow",)),
    ("Beam (runner, data plane, coders, graph)", ("apache_beam", "grpc/")),
)


def parse_raw(path: Path) -> list[tuple[list[str], int]]:
    """py-spy raw (collapsed) output -> [(frames root first, count)]."""
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def bucket_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        for label, needles in BUCKETS:
            if any(n in frame for n in needles):
                return label
    return "other"


def summarise(stacks: list[tuple[list[str], int]], top: int = 25) -> str:
    total = sum(c for _, c in stacks) or 1
    shares = Counter()
    leaves = Counter()
    for frames, c in stacks:
        shares[bucket_of(frames)] += c
        leaves[frames[-1]] += c
    lines = [f"{total} samples; innermost known component:"]
    lines += [f"{100 * n / total:6.1f} %  {label}" for label, n in shares.most_common()]
    lines.append("top leaves:")
    lines += [f"{100 * c / total:6.1f} %  {f}" for f, c in leaves.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(prog="profile_crawl.py", description=__doc__)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-set", choices=tuple(crawl.IMAGE_SETS), default="web")
    parser.add_argument("--workdir", type=Path, default=crawl.REPO / "bench" / "out" / "crawl")
    parser.add_argument(
        "--py-spy", help="path of a py-spy executable; without it, CPU per process is shown"
    )
    parser.add_argument("--gil", action="store_true", help="only samples holding the GIL")
    parser.add_argument("--rate", type=int, default=100, help="samples per second")
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--webpairs-args", default="", help="extra curate flags")
    parser.add_argument("--webpairs-root", type=Path, default=crawl.REPO)
    parser.add_argument("--out", type=Path, help="raw profile file (default: in --workdir)")
    parser.add_argument(
        "--stages",
        action="store_true",
        help="wall and CPU of each fused stage instead (bench/stage_times.py, no py-spy)",
    )
    args = parser.parse_args(argv)

    work = args.workdir.resolve()
    suffix = "" if args.image_set == "web" else f"-{args.image_set}"
    images = work / f"images-{args.images}-seed{args.seed}{suffix}"
    files = crawl.make_images(images, args.images, args.seed, args.image_set)
    raw = args.out or work / f"profile-{args.image_set}{'-gil' if args.gil else ''}.txt"
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(crawl.serve(images, work / "server", "auto"))
        urls = work / f"profile-urls-{args.image_set}.parquet"
        crawl.write_url_list(urls, [f"{server.base_url}/{n}" for n, _, _ in files], files)
        job = crawl.webpairs_job(
            urls,
            work / "profile-out",
            mode="in_memory",
            threads=args.threads,
            workers=1,
            samples_per_shard=500,
            root=args.webpairs_root.resolve(),
            extra_args=tuple(shlex.split(args.webpairs_args)),
        )
        if args.stages:
            here = Path(__file__).resolve().parent
            cmd = [sys.executable, str(here / "stage_times.py"), *job.cmd[3:]]  # after -m NAME
            start = time.perf_counter()
            subprocess.run(cmd, env=job.env, cwd=job.cwd, check=True)
            print(f"wall {time.perf_counter() - start:.1f} s")
            return 0
        if not args.py_spy:
            wall, per_process = cpu_per_process(job.cmd, job.env, job.cwd)
            print(f"wall {wall:.1f} s; CPU-s per process (sampled every 0.2 s):")
            for cpu, pid, cmd in per_process:
                print(f"{cpu:8.2f}  {pid:>7}  {cmd}")
            print(f"{sum(c for c, _, _ in per_process):8.2f}  in all")
            return 0
        spy = [args.py_spy, "record", "--format", "raw", "--rate", str(args.rate)]
        spy += ["--subprocesses", "-o", str(raw)] + (["--gil"] if args.gil else ["--threads"])
        start = time.perf_counter()
        subprocess.run([*spy, "--", *job.cmd], env=job.env, cwd=job.cwd, check=True)
        wall = time.perf_counter() - start
    print(f"wall {wall:.1f} s (under py-spy); raw profile: {raw}")
    stacks = parse_raw(raw)
    print(summarise(stacks))
    for name, part in by_process(stacks).items():
        print(f"\n{name}: " + summarise(part, top=12))
    return 0


def by_process(stacks: list[tuple[list[str], int]]) -> dict[str, list]:
    """The samples of the job's own process, and of the processes it started (the decode
    workers and their forkserver): py-spy --subprocesses roots each stack at its process chain,
    one "process PID:..." frame for each level."""
    parts: dict[str, list] = {"main process": [], "its child processes": []}
    for frames, c in stacks:
        depth = sum(f.startswith("process ") for f in frames)
        parts["main process" if depth <= 1 else "its child processes"].append((frames, c))
    return {name: part for name, part in parts.items() if part}


def cpu_per_process(cmd, env, cwd, every: float = 0.2) -> tuple[float, list]:
    """Runs cmd in its own session -> (wall s, [(CPU-s, pid, command line)]), the CPU of each
    process of the session as last seen (a process's last `every` s before it exits is lost).
    Prints a timeline on the way: each second, the CPU-s the main process and the others used."""
    tick = os.sysconf("SC_CLK_TCK")
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, cwd=cwd, start_new_session=True, stdout=subprocess.DEVNULL
    )
    seen: dict[int, tuple[float, str]] = {}
    last_print, last_main, last_others = start, 0.0, 0.0
    print("seconds  main  others (CPU-s in each second)")
    while proc.poll() is None:
        now = time.perf_counter()
        if now - last_print >= 1.0:
            main_cpu = seen.get(proc.pid, (0.0, ""))[0]
            others = sum(c for pid, (c, _) in seen.items() if pid != proc.pid)
            print(f"{now - start:7.1f}  {main_cpu - last_main:4.2f}  {others - last_others:6.2f}")
            last_print, last_main, last_others = now, main_cpu, others
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[3]) != proc.pid:
                    continue
                line = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ")
                cpu = (int(fields[11]) + int(fields[12])) / tick
                seen[int(stat.parent.name)] = cpu, line.decode(errors="replace")[:100]
        time.sleep(every)
    wall = time.perf_counter() - start
    return wall, sorted(((c, pid, line) for pid, (c, line) in seen.items()), reverse=True)


if __name__ == "__main__":
    sys.exit(main())
