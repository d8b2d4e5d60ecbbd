"""The jobs on a real dask.distributed cluster: a scheduler and worker processes talking TCP
(LocalCluster(processes=True)), driven by the Dask runner (pipeline/runners).

Byte-identical outputs to DirectRunner (in_memory and multi_processing) for curate, select and
score; a worker SIGKILLed mid-crawl changes nothing; what the runner cannot run is refused before
anything runs; what Beam's own DaskRunner gets wrong (sinks it never computes, tagged outputs it
mixes, finish_bundle outputs it drops, Read, counters) is right here. One cluster serves the
module (a start costs seconds)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.userstate import BagStateSpec
from apache_beam.transforms.window import GlobalWindows

from pipeline.jobs.curate import main as curate
from pipeline.jobs.score import main as score
from pipeline.jobs.select import main as select
from schemas import Stats
from tests.conftest import serve
from tests.pipeline.test_score import digit_tars, tiny_checkpoint
from tests.pipeline.test_score import one_torch_thread as one_torch_thread  # noqa: F401

distributed = pytest.importorskip("distributed", reason="the dask extra: pip install -e .[dask]")

from apache_beam.runners.dask.dask_runner import DaskOptions  # noqa: E402

from pipeline.runners.cluster import DASK_RUNNER, WORKER_CONFIG, dask_cluster  # noqa: E402
from pipeline.runners.dask_graph import UnsupportedOnDask  # noqa: E402

pytestmark = pytest.mark.slow  # a cluster start and whole jobs: 10-60 s on the shared two cores

PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "camera", "china"]


@pytest.fixture(scope="module")
def cluster():
    import dask

    with (
        dask.config.set(WORKER_CONFIG),  # as the job's own clusters: see cluster.py
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0"
        ) as c,
    ):
        yield c


def test_a_job_started_cluster_runs_its_workers_without_the_frame_sampling_profiler(tmp_path):
    # on CPython 3.11 the profiler's sys._current_frames() can deadlock a worker that starts
    # threads (python/cpython#106883); a 3000-URL crawl hung that way
    import dask

    options = PipelineOptions(["--runner", "dask", "--dask-workers", "1"])
    with dask_cluster(options, str(tmp_path)) as address, distributed.Client(address) as client:
        seen = client.run(lambda: dask.config.get("distributed.worker.profile.enabled"))
    assert list(seen.values()) == [sys.version_info >= (3, 12)]


def runner_options(cluster) -> list[str]:
    return ["--runner", "dask", "--dask-address", cluster.scheduler_address]


def crawl_rows(site) -> list[dict]:
    """Photos (and PNG copies: near duplicates), failures, URL duplicates and invalid rows."""
    rows = [{"url": site.url(f"/img/{n}.jpg"), "caption": f"a photo: {n}"} for n in PHOTOS]
    rows += [{"url": site.url(f"/img/{n}.png"), "caption": f"{n} again"} for n in PHOTOS[:3]]
    for path in ("/missing.jpg", "/truncated.jpg", "/html.jpg", "/noai.jpg", "/redirect.jpg"):
        rows.append({"url": site.url(path), "caption": f"from {path}"})
    rows.append({"url": site.url("/img/coffee.jpg") + "#frag", "caption": "the same URL"})
    rows += [{"url": None, "caption": "no url"}, {"url": "ftp://x.org/a.jpg", "caption": "ftp"}]
    return rows


def crawl_args(inp: Path, out: Path) -> list[str]:
    return [
        "--input", str(inp), "--output", str(out), "--image-size", "96",
        "--samples-per-shard", "3", "--timeout", "5", "--retries", "1",
        "--allow-networks", "127.0.0.1/32",  # the SSRF guard stays on for everything else
    ]  # fmt: skip


def files(out: Path, *names: str) -> dict[str, bytes]:
    """Relative path -> bytes of the output's shards/ and the named top-level files."""
    found = {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "shards").iterdir())}
    return found | {n: (out / n).read_bytes() for n in names}


def rejects(out: Path) -> list[dict]:
    tables = [pq.read_table(p) for p in sorted((out / "rejects").glob("*.parquet"))]
    return sorted(pa.concat_tables(tables).to_pylist(), key=lambda r: (r["url"] or "", r["status"]))


def run_into(out: Path, keep: Path, job, args: list[str]) -> None:
    """Runs `job` into `out` (the same path for every runner: the manifest records it), then
    moves the output to `keep`."""
    assert job(args) == 0
    shutil.move(out, keep)


def test_curate_on_two_dask_workers_is_byte_identical_to_direct_runner(
    web_images, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="pipeline.accounting.progress")
    with serve(web_images) as site:
        inp = tmp_path / "urls.parquet"
        pq.write_table(pa.Table.from_pylist(crawl_rows(site)), inp)
        out = tmp_path / "out"
        args = crawl_args(inp, out)
        modes = {
            "in_memory": [],
            "multi_processing": [
                "--direct_running_mode=multi_processing",
                "--direct_num_workers=2",
            ],
            "dask": ["--runner", "dask", "--dask-workers", "2"],  # a local cluster for the job
        }
        finals = {}
        for mode, extra in modes.items():
            caplog.clear()
            run_into(out, tmp_path / mode, curate, args + extra)
            # the workers' progress files, wherever they ran, add up to the funnel
            (finals[mode],) = [m for m in caplog.messages if " rows finished in " in m]
    direct = files(tmp_path / "in_memory", "manifest.json", "stats.json")
    stats = Stats.from_json(direct["stats.json"].decode())
    assert stats.written >= 6 and stats.failed and stats.duplicate and stats.invalid  # a real mix
    outcomes = {s: sum(getattr(stats, s).values()) for s in ("failed", "duplicate", "invalid")}
    funnel = ", ".join(f"{k} {v}" for k, v in sorted({**outcomes, "ok": stats.written}.items()))
    for mode, line in finals.items():
        assert line.endswith(f"({funnel})"), (mode, line)
    for mode in ("multi_processing", "dask"):
        assert files(tmp_path / mode, "manifest.json", "stats.json") == direct, mode
        assert rejects(tmp_path / mode) == rejects(tmp_path / "in_memory"), mode


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """An unscored webpairs output of 30 digits (curated on DirectRunner) and a checkpoint."""
    tmp = tmp_path_factory.mktemp("digits")
    out = tmp / "out"
    args = ["--input", str(digit_tars(tmp / "tars", 30, per_shard=10)), "--output", str(out)]
    args += ["--input-format", "webdataset", "--recipe", "none", "--image-size", "32"]
    assert curate(args + ["--encode-format", "png", "--samples-per-shard", "10"]) == 0
    return out, tiny_checkpoint(tmp / "run")


def test_select_with_scoring_on_dask_matches_direct_runner(digits, cluster, tmp_path):
    source, checkpoint = digits
    out = tmp_path / "out"
    args = ["--input", str(source), "--output", str(out), "--recipe", "datacomp_clip_top30"]
    args += ["--score-checkpoint", str(checkpoint), "--samples-per-shard", "4"]
    run_into(out, tmp_path / "direct", select, args)
    run_into(out, tmp_path / "dask", select, args + runner_options(cluster))
    direct = files(tmp_path / "direct", "manifest.json", "stats.json")
    assert files(tmp_path / "dask", "manifest.json", "stats.json") == direct
    assert Stats.from_json(direct["stats.json"].decode()).written == 9  # 30 % of 30


def test_score_on_dask_matches_direct_runner_and_counts_come_back(
    digits, cluster, tmp_path, capsys
):
    source, checkpoint = digits
    lines = {}
    for mode, extra in {"direct": [], "dask": runner_options(cluster)}.items():
        copy = tmp_path / mode
        shutil.copytree(source, copy)
        assert score(["--input", str(copy), "--score-checkpoint", str(checkpoint), *extra]) == 0
        lines[mode] = capsys.readouterr().out.strip()
    assert files(tmp_path / "dask", "manifest.json") == files(tmp_path / "direct", "manifest.json")
    # the summary line counts with Beam counters: on dask they come back from the workers
    assert lines["dask"].replace(str(tmp_path / "dask"), "OUT") == lines["direct"].replace(
        str(tmp_path / "direct"), "OUT"
    )
    assert lines["dask"].startswith("scored 30 pairs in 3 shards (0 unreadable)")


def test_a_worker_killed_mid_crawl_changes_nothing(web_images, cluster, tmp_path):
    """SIGKILL of the worker that is downloading: the scheduler reruns its task on the other
    worker (the nanny starts a new process) and the job ends as if nothing happened."""
    client = distributed.Client(cluster)
    with serve(web_images) as site:
        rows = [{"url": site.url(f"/img/{n}.jpg"), "caption": n} for n in PHOTOS]
        inp = tmp_path / "urls.parquet"
        pq.write_table(pa.Table.from_pylist(rows), inp)
        out = tmp_path / "out"
        # one host bucket: one task downloads everything, one request at a time, slowly
        args = crawl_args(inp, out) + ["--host-buckets", "1", "--threads", "1"]
        run_into(out, tmp_path / "direct", curate, args)
        site.hits.clear()
        site.delay = 0.4
        pids = client.run(os.getpid)
        result = []
        job = threading.Thread(target=lambda: result.append(curate(args + runner_options(cluster))))
        job.start()
        busy, deadline = [], time.monotonic() + 60
        while time.monotonic() < deadline:  # the one task with URLs to fetch, fetching
            busy = [
                worker
                for worker, keys in client.processing().items()
                if any("DownloadImages" in str(k) for k in keys)
            ]
            if len(busy) == 1 and sum(site.hits.values()) >= 2:
                break
            time.sleep(0.02)
        assert len(busy) == 1 and job.is_alive(), "no download running: nothing to kill"
        os.kill(pids[busy[0]], signal.SIGKILL)
        job.join(timeout=180)
        served = dict(site.hits)
    assert result == [0]
    assert set(client.run(os.getpid).values()) != set(pids.values())  # a new worker process
    assert sum(served.values()) > len(rows)  # the killed task's downloads were done again
    assert files(out, "manifest.json", "stats.json") == files(
        tmp_path / "direct", "manifest.json", "stats.json"
    )
    client.close()


def dask_options(cluster) -> PipelineOptions:
    """A Beam pipeline's options for the Dask runner on `cluster` (what the jobs' shell sets)."""
    options = PipelineOptions(["--runner", DASK_RUNNER])
    options.view_as(DaskOptions).address = cluster.scheduler_address
    return options


class _RowsPerBundle(beam.DoFn):
    """Emits only in finish_bundle (as BatchElements and file writers do)."""

    def start_bundle(self):
        self.n = 0

    def process(self, x):
        self.n += 1

    def finish_bundle(self):
        yield GlobalWindows.windowed_value(self.n)


class _Split(beam.DoFn):
    def __init__(self):
        self.odd = beam.metrics.Metrics.counter("probe", "odd")

    def process(self, x):
        if x % 2:
            self.odd.inc()
            yield beam.pvalue.TaggedOutput("odd", x)
        else:
            yield x


def _write(path: Path):
    def write(values):
        path.write_text(repr(sorted(values)))

    return write


def test_the_runner_computes_every_sink_and_keeps_outputs_apart(cluster, tmp_path):
    """Each of these fails on Beam 2.77's own DaskRunner."""
    pq.write_table(pa.table({"word": ["b", "a", "b", "c", "b"]}), tmp_path / "w.parquet")
    p = beam.Pipeline(options=dask_options(cluster))
    numbers = p | "Numbers" >> beam.Create(range(10))
    split = numbers | "Split" >> beam.ParDo(_Split()).with_outputs("odd", main="even")
    for name, pcoll in (("even", split.even), ("odd", split.odd)):
        _ = (
            pcoll
            | f"All{name}" >> beam.combiners.ToList()
            | f"W{name}" >> beam.Map(_write(tmp_path / name))
        )
    words = p | "Read" >> beam.io.ReadFromParquet(str(tmp_path / "w.parquet"))
    counts = words | "Count" >> beam.Map(lambda r: (r["word"], 1)) | beam.CombinePerKey(sum)
    total = beam.pvalue.AsSingleton(numbers | beam.combiners.Count.Globally())
    _ = (
        counts
        | "WithTotal"
        >> beam.Map(lambda kv, t, d: (*kv, t, d[kv[0]]), total, beam.pvalue.AsDict(counts))
        | "AllCounts" >> beam.combiners.ToList()
        | "WCounts" >> beam.Map(_write(tmp_path / "counts"))
    )
    _ = (
        numbers
        | "PerBundle" >> beam.ParDo(_RowsPerBundle())
        | "Sum" >> beam.CombineGlobally(sum)
        | "WBundles" >> beam.Map(lambda n: _write(tmp_path / "bundles")([n]))
    )
    result = p.run()
    result.wait_until_finish()
    assert (tmp_path / "even").read_text() == "[0, 2, 4, 6, 8]"
    assert (tmp_path / "odd").read_text() == "[1, 3, 5, 7, 9]"
    assert (
        tmp_path / "counts"
    ).read_text() == "[('a', 1, 10, 1), ('b', 3, 10, 3), ('c', 1, 10, 1)]"
    assert (tmp_path / "bundles").read_text() == "[10]"
    (odd,) = result.metrics().query()["counters"]
    assert (odd.key.metric.name, odd.committed) == ("odd", 5)


class _Stateful(beam.DoFn):
    SEEN = BagStateSpec("seen", beam.coders.VarIntCoder())

    def process(self, kv, seen=beam.DoFn.StateParam(SEEN)):  # noqa: B008 (Beam's idiom)
        seen.add(kv[1])
        yield kv


def test_a_stateful_dofn_is_refused_by_name_before_anything_runs(cluster, tmp_path):
    p = beam.Pipeline(options=dask_options(cluster))
    marker = tmp_path / "ran"
    _ = (
        p
        | beam.Create([1, 2])
        | "Touch" >> beam.Map(lambda x: (marker.touch(), (x, x))[1])
        | "Remember" >> beam.ParDo(_Stateful())
    )
    with pytest.raises(UnsupportedOnDask, match="stage 'Remember': a stateful DoFn"):
        p.run()
    assert not marker.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dask-workers", "2"], "--dask-address and --dask-workers need --runner dask"),
        (["--runner", "dask", "--dask-workers", "0"], "--dask-workers must be at least 1"),
        (
            ["--runner", "dask", "--dask-workers", "2", "--dask-address", "tcp://127.0.0.1:9"],
            "--dask-address joins a cluster, --dask-workers starts one: pass one",
        ),
        (
            ["--runner", "dask", "--dask-address", "tcp://127.0.0.1:9"],
            "cannot reach the dask scheduler at tcp://127.0.0.1:9",
        ),
        (
            ["--runner", "dask", "--dask_connection_timeout", "5"],
            "--dask_connection_timeout would change --timeout",
        ),
    ],
)
def test_dask_mistakes_are_one_error_line(tmp_path, capsys, extra, message):
    import dask

    pq.write_table(
        pa.table({"url": ["http://127.0.0.1:9/a.jpg"], "caption": ["a"]}), tmp_path / "u.parquet"
    )
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        code = curate(
            ["--input", str(tmp_path / "u.parquet"), "--output", str(tmp_path / "o"), *extra]
        )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err


BLOCK_PROJECT = """
import sys

class _Block:  # this worker's machine has no webpairs installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("pipeline", "schemas", "trainer"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, _Block())
"""


def test_a_worker_without_the_projects_code_is_refused_before_the_job(tmp_path, capsys):
    (tmp_path / "block_project.py").write_text(BLOCK_PROJECT)
    with distributed.LocalCluster(
        n_workers=0, processes=True, dashboard_address="127.0.0.1:0"
    ) as c:
        worker = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", c.scheduler_address]
            + ["--nthreads", "1", "--no-nanny", "--preload", str(tmp_path / "block_project.py")],
            stderr=subprocess.DEVNULL,
        )
        try:
            pq.write_table(
                pa.table({"url": ["http://127.0.0.1:9/a.jpg"], "caption": ["a"]}),
                tmp_path / "u.parquet",
            )
            args = ["--input", str(tmp_path / "u.parquet"), "--output", str(tmp_path / "o")]
            code = curate(args + ["--runner", "dask", "--dask-address", c.scheduler_address])
        finally:
            worker.kill()
            worker.wait()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "cannot import 'pipeline': run the workers from the project's image" in err[0]
