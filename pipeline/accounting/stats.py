"""The funnel: every input row counted once, by outcome and reason (`OUTPUT/stats.json`).

    stats = {"results": rows, "input_count": n, "shards": entries} | "WriteStats" >> WriteStats("out/")

`warnings` (optional): one reason per problem noted on an input row that did not decide its
outcome (Stats.warnings).

The driver re-reads stats.json after the run and fails loudly unless
input == written + Σfailed + Σfiltered + Σduplicate + Σinvalid.
"""

from __future__ import annotations

import logging

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipeline.accounting.distributions import CounterCombineFn, Distributions
from pipeline.crawl.urls import domain_of
from pipeline.io.layout import STATS_NAME, join_path
from schemas import Stats, Status

logger = logging.getLogger(__name__)


TOP_DOMAINS = 100


class CountOutcomesFn(CounterCombineFn):
    """Result rows -> {(status, reason): count}; small whatever the input size."""

    def label(self, row):
        return (row["status"], row.get("reason") if row["status"] != Status.OK else None)


def build_stats(
    outcomes: dict,
    input_count: int,
    failed_by_domain: list,
    num_shards: int,
    distributions: dict | None = None,
    warnings: dict | None = None,
) -> Stats:
    stats = Stats(
        input=input_count,
        shards=num_shards,
        distributions=distributions or {},
        warnings=dict(sorted((warnings or {}).items())),
    )
    for (status, reason), n in sorted(outcomes.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        if status == Status.OK:
            stats.written += n
        else:
            bucket = getattr(stats, status)
            bucket[reason or "unknown"] = bucket.get(reason or "unknown", 0) + n
    stats.failed_by_domain = {
        domain: dict(sorted(reasons.items())) for domain, reasons in failed_by_domain
    }
    return stats


def _write_stats(
    outcomes, input_count, failed_by_domain, shard_count, distributions, warnings, output
):
    stats = build_stats(
        outcomes, input_count, failed_by_domain, shard_count, distributions, warnings
    )
    path = join_path(output, STATS_NAME)
    with FileSystems.create(path) as f:
        f.write(stats.to_json().encode("utf-8"))
    return path


def _domain_total(kv) -> tuple:
    return (sum(kv[1].values()), kv[0])


class WriteStats(beam.PTransform):
    """{"results", "written", "input_count", "shards"[, "warnings"]} -> OUTPUT/stats.json."""

    def __init__(self, output: str, top_domains: int = TOP_DOMAINS):
        super().__init__()
        self.output, self.top_domains = output, top_domains

    def expand(self, pcolls):
        results = pcolls["results"]
        outcomes = results | "CountOutcomes" >> beam.CombineGlobally(CountOutcomesFn())
        failed_by_domain = (
            results
            | "OnlyFailed" >> beam.Filter(lambda r: r["status"] == Status.FAILED)
            | "DomainReason" >> beam.Map(lambda r: (domain_of(r["url"] or ""), r["reason"]))
            | "CountReasons" >> beam.combiners.Count.PerElement()
            | "ByDomain" >> beam.Map(lambda kv: (kv[0][0], (kv[0][1], kv[1])))
            | "GroupDomain" >> beam.GroupByKey()
            | "ReasonDict" >> beam.Map(lambda kv: (kv[0], dict(kv[1])))
            | "TopDomains"
            >> beam.combiners.Top.Of(self.top_domains, key=_domain_total).without_defaults()
        )
        # Side inputs with a default value for no input, rather than combines that make one:
        # Beam builds a default element with a few steps (and a stage) per combine.
        shard_count = (
            pcolls["shards"] | "CountShards" >> beam.combiners.Count.Globally().without_defaults()
        )
        distributions = {
            "written": pcolls["written"],
            "results": results,
        } | "Distributions" >> Distributions()
        warnings = pcolls.get("warnings")
        if warnings is None:
            warnings = results.pipeline | "NoWarnings" >> beam.Create([])
        warning_counts = (
            warnings
            | "CountWarnings" >> beam.CombineGlobally(CounterCombineFn()).without_defaults()
        )
        return outcomes | "WriteStatsFile" >> beam.Map(
            _write_stats,
            input_count=beam.pvalue.AsSingleton(pcolls["input_count"], default_value=0),
            failed_by_domain=beam.pvalue.AsSingleton(failed_by_domain, default_value=[]),
            shard_count=beam.pvalue.AsSingleton(shard_count, default_value=0),
            distributions=beam.pvalue.AsSingleton(distributions, default_value=None),
            warnings=beam.pvalue.AsSingleton(warning_counts, default_value={}),
            output=self.output,
        )
