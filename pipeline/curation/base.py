"""The one base of every filtering stage, datatrove-style: a stage writes only
`keep(row) -> (bool, reason, detail)`; `KeepRows` counts each removal (a Beam counter per
reason) and turns it into a decision on the "removed" output.

    class LongCaptions(RowFilter):
        namespace = "filters"
        def keep(self, row):
            n = len(row["caption"] or "")
            return (True, None, None) if n >= 10 else (False, "caption_too_short", f"{n} chars")

    out = light | "Captions" >> KeepRows(LongCaptions())   # {"kept": ..., "removed": ...}

A filter that needs a value computed by the pipeline (a global score threshold) takes it as
a keyword side input: `KeepRows(f, threshold=beam.pvalue.AsSingleton(t))` calls
`f.keep(row, threshold=...)`.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipeline.results import decision
from schemas import Status


class RowFilter:
    """What a filtering stage writes. Instances are pickled to the workers: hold settings,
    build what is expensive (compiled patterns, models) in `setup()`, once per worker."""

    namespace = "filters"  # the Beam counters' namespace; one counter per removal reason
    status = Status.FILTERED  # the status of a removed row

    def setup(self) -> None:
        pass

    def keep(self, row: dict, **side) -> tuple[bool, str | None, str | None]:
        raise NotImplementedError


class _KeepFn(beam.DoFn):
    def __init__(self, rule: RowFilter):
        self.rule = rule

    def setup(self):
        self.rule.setup()
        self._counters = {}

    def process(self, row, **side):
        ok, reason, detail = self.rule.keep(row, **side)
        if ok:
            yield row
            return
        counter = self._counters.get(reason)
        if counter is None:
            counter = self._counters[reason] = Metrics.counter(self.rule.namespace, reason)
        counter.inc()
        yield beam.pvalue.TaggedOutput(
            "removed", decision(row["key"], self.rule.status, reason, error=detail)
        )


class KeepRows(beam.PTransform):
    """Rows -> {"kept", "removed"}: `rule.keep` on every row; removals counted and recorded."""

    def __init__(self, rule: RowFilter, **side_inputs):
        super().__init__()
        self.rule, self.side = rule, side_inputs  # not `side_inputs`: a PTransform attribute

    def expand(self, rows):
        out = rows | "Keep" >> beam.ParDo(_KeepFn(self.rule), **self.side).with_outputs(
            "removed", main="kept"
        )
        return {"kept": out.kept, "removed": out.removed}
