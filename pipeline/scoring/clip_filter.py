"""The `clip_score` stage: keep pairs above `min_score` or in the top fraction (a global
quantile computed by Beam)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.transforms.stats import ApproximateQuantilesCombineFn

from pipeline.curation.base import KeepRows, RowFilter
from pipeline.scoring.pairs import SCORE_COLUMN
from schemas import Reason

_QUANTILES = 10_001  # resolution of the top_fraction threshold: 0.01 % of the scores


@dataclass(frozen=True)
class ClipScoreConfig:
    min_score: float | None = None  # keep pairs scoring at least this (the model's scale!)
    top_fraction: float | None = None  # keep this share of the best-scored pairs (0.3: top 30 %)
    quantile_error: float = 1e-3  # rank error of the approximate first pass, as a share of N;
    # the exact second pass ranks about 4x this share of the scores in one worker

    def __post_init__(self):
        if self.top_fraction is not None and not 0 < self.top_fraction <= 1:
            raise ValueError(f"clip_score top_fraction must be in (0, 1], got {self.top_fraction}")
        if not 0 < self.quantile_error < 1:
            raise ValueError("clip_score quantile_error must be in (0, 1)")


def _keep_count(count: int, fraction: float) -> int:
    return max(1, math.ceil(fraction * count))


def _ntile(quantiles: list[float], count: int, rank: int) -> float:
    """The N-tile of Beam's ApproximateQuantiles nearest to `rank` (from the bottom, 0-based):
    N-tile j stands for the score at rank ceil(j * count / (N - 1)) - 1."""
    m = len(quantiles) - 1
    return quantiles[min(m, max(0, (rank + 1) * m // count))]


def top_fraction_threshold(quantiles: list[float], count: int, fraction: float) -> float | None:
    """The lowest kept score of the top `fraction` of `count` scores, read from the N-tiles:
    exact while count < N, within the combiner's rank error above. None: no score."""
    if not quantiles or count == 0:
        return None
    return _ntile(quantiles, count, count - _keep_count(count, fraction))


def threshold_window(
    quantiles: list[float], count: int, fraction: float, error: float
) -> tuple[float, float] | None:
    """Scores between which the exact threshold must lie, given the N-tiles' rank error."""
    if not quantiles or count == 0:
        return None
    slack = math.ceil(2 * (error + 1 / (len(quantiles) - 1)) * count) + 1
    rank = count - _keep_count(count, fraction)
    return _ntile(quantiles, count, rank - slack), _ntile(quantiles, count, rank + slack)


def exact_threshold(
    quantiles: list[float],
    count: int,
    fraction: float,
    above: int,
    inside: list[float],
) -> float | None:
    """The exact lowest kept score: `above` scores lie over the window, `inside` are the
    scores in it. Falls back to the N-tile if the window missed (a broken error bound)."""
    need = _keep_count(count, fraction) - above if count else 0
    if 0 < need <= len(inside):
        return sorted(inside, reverse=True)[need - 1]
    return top_fraction_threshold(quantiles, count, fraction)


_SCORED = "clip_score "


def detail_score(detail: str | None) -> float | None:
    """The score a `low_clip_score` removal's detail records (as `keep_by_score` words it)."""
    if not detail or not detail.startswith(_SCORED):
        return None
    try:
        return float(detail[len(_SCORED) :].split(" ", 1)[0])
    except ValueError:
        return None


def keep_by_score(
    row: dict, cfg: ClipScoreConfig, threshold: float | None = None
) -> tuple[bool, str | None, str | None]:
    """-> (keep, reason, detail) for one light row; `threshold` is the top_fraction cut."""
    score = row.get(SCORE_COLUMN)
    if score is None:
        return False, Reason.UNSCORED, "no clip_score (the model could not read the image)"
    if cfg.min_score is not None and score < cfg.min_score:
        return False, Reason.LOW_CLIP_SCORE, f"{_SCORED}{score:.4f} < {cfg.min_score}"
    if threshold is not None and score < threshold:
        return (
            False,
            Reason.LOW_CLIP_SCORE,
            f"{_SCORED}{score:.4f} below the top {cfg.top_fraction:.2%} ({threshold:.4f})",
        )
    return True, None, None


class ClipScoreRule(RowFilter):
    namespace = "clip_score"

    def __init__(self, cfg: ClipScoreConfig):
        self.cfg = cfg

    def keep(self, row, threshold=None):
        return keep_by_score(row, self.cfg, threshold)


class ClipScoreFilter(beam.PTransform):
    """Light rows -> {"kept", "removed"} by `clip_score`: an absolute minimum and/or the top
    fraction -- exactly ceil(fraction * N) pairs, plus ties at the cut. The cut is a global
    quantile: Beam's ApproximateQuantiles (bounded memory, rank error under quantile_error *
    N) narrows it to a window of about 4 * quantile_error * N scores, which are then ranked."""

    def __init__(self, cfg: ClipScoreConfig = ClipScoreConfig()):
        super().__init__()
        self.cfg = cfg

    def expand(self, light):
        cfg = self.cfg
        side = {}
        if cfg.top_fraction is not None:
            scores = (
                light
                | "Scores" >> beam.Map(lambda r: r.get(SCORE_COLUMN))
                | "Scored" >> beam.Filter(lambda s: s is not None)
            )
            quantiles = scores | "Quantiles" >> beam.CombineGlobally(
                ApproximateQuantilesCombineFn.create(
                    num_quantiles=_QUANTILES, epsilon=cfg.quantile_error
                )
            )
            count = beam.pvalue.AsSingleton(
                scores | "CountScores" >> beam.combiners.Count.Globally()
            )
            window = beam.pvalue.AsSingleton(
                quantiles
                | "Window"
                >> beam.Map(
                    threshold_window,
                    count=count,
                    fraction=cfg.top_fraction,
                    error=cfg.quantile_error,
                )
            )
            # A second, cheap pass makes the cut exact (and the same on every runner): the
            # scores over the window are counted, the few inside it sorted.
            above = scores | "Above" >> beam.Filter(lambda s, w: w and s > w[1], w=window)
            inside = scores | "Inside" >> beam.Filter(
                lambda s, w: w and w[0] <= s <= w[1], w=window
            )
            threshold = quantiles | "Threshold" >> beam.Map(
                exact_threshold,
                count=count,
                fraction=cfg.top_fraction,
                above=beam.pvalue.AsSingleton(
                    above | "CountAbove" >> beam.combiners.Count.Globally()
                ),
                inside=beam.pvalue.AsSingleton(inside | "InWindow" >> beam.combiners.ToList()),
            )
            side["threshold"] = beam.pvalue.AsSingleton(threshold)
        return light | "Cut" >> KeepRows(ClipScoreRule(cfg), **side)
