"""The dataset manifest (`manifest.json`) and the run's accounting (`stats.json`).

`manifest.json` is also a wids shard index: it carries `__kind__`/`wids_version` and a
`shardlist` of `{"url", "nsamples"}` entries, so `wids.ShardListDataset("OUT/manifest.json")`
(the `wids` distribution; webdataset 1.x ships no `wids` module) reads it as an indexed dataset
(tests/pipeline/test_wids.py) and the trainer counts samples exactly without opening a tar.

    manifest = Manifest.from_json(Path("out/manifest.json").read_text())
    manifest.total_samples, [entry.url for entry in manifest.shardlist]
    stats = Stats.from_json(Path("out/stats.json").read_text())
    stats.check()   # input == written + failed + filtered + duplicate + invalid, or raise
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

MANIFEST_VERSION = 2
READABLE_MANIFEST_VERSIONS = (1, 2)  # 2 added `scorer`
STATS_VERSION = 3
READABLE_STATS_VERSIONS = (1, 2, 3)  # 2 added `distributions`, 3 `warnings`
MANIFEST_KIND = "webpairs-manifest"
WIDS_KIND = "wids-shard-index-v1"


class ManifestError(ValueError):
    """A manifest or stats file this version cannot read."""


class StatsMismatchError(RuntimeError):
    """Input rows do not add up to the outcomes: a row was lost or counted twice."""


@dataclass(frozen=True)
class ShardEntry:
    url: str  # relative to the manifest's folder, e.g. "shards/00000.tar"
    nsamples: int
    filesize: int
    sha256: str
    parquet: str | None = None  # result rows of this shard

    @classmethod
    def from_dict(cls, d: Mapping) -> ShardEntry:
        return cls(
            url=d["url"],
            nsamples=int(d["nsamples"]),
            filesize=int(d.get("filesize", 0)),
            sha256=d.get("sha256", ""),
            parquet=d.get("parquet"),
        )


@dataclass
class Manifest:
    shardlist: list[ShardEntry]
    name: str = "webpairs"
    source: str | None = None  # lineage: what this dataset was made from
    options: dict = field(default_factory=dict)  # the options of the run that wrote it
    # the model whose clip_score / embeddings the per-shard parquet holds: {"checkpoint",
    # "sha256", "model", "embed_dim", "step"} (pipeline/scoring/pairs.py); None when not scored
    scorer: dict | None = None
    version: int = MANIFEST_VERSION

    @property
    def total_samples(self) -> int:
        return sum(s.nsamples for s in self.shardlist)

    @property
    def total_bytes(self) -> int:
        return sum(s.filesize for s in self.shardlist)

    def to_dict(self) -> dict:
        return {
            "__kind__": WIDS_KIND,
            "wids_version": 1,
            "format": MANIFEST_KIND,
            "version": self.version,
            "name": self.name,
            "source": self.source,
            "total_samples": self.total_samples,
            "total_bytes": self.total_bytes,
            "options": self.options,
            "scorer": self.scorer,
            "shardlist": [asdict(s) for s in self.shardlist],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping) -> Manifest:
        if d.get("format") != MANIFEST_KIND:
            raise ManifestError(f"not a webpairs manifest (format={d.get('format')!r})")
        version = d.get("version")
        if version not in READABLE_MANIFEST_VERSIONS:
            readable = ", ".join(map(str, READABLE_MANIFEST_VERSIONS))
            raise ManifestError(
                f"manifest version {version} is not supported (this webpairs reads {readable})"
            )
        return cls(
            shardlist=[ShardEntry.from_dict(s) for s in d["shardlist"]],
            name=d.get("name", "webpairs"),
            source=d.get("source"),
            options=d.get("options") or {},
            scorer=d.get("scorer"),
            version=MANIFEST_VERSION,  # older versions lack only optional fields
        )

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ManifestError(f"manifest is not valid JSON: {e}") from None
        return cls.from_dict(d)


@dataclass
class Stats:
    """The funnel. Invariant: input == written + Σfailed + Σfiltered + Σduplicate + Σinvalid."""

    input: int = 0
    written: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    filtered: dict[str, int] = field(default_factory=dict)
    duplicate: dict[str, int] = field(default_factory=dict)
    invalid: dict[str, int] = field(default_factory=dict)
    failed_by_domain: dict[str, dict[str, int]] = field(default_factory=dict)
    shards: int = 0
    distributions: dict[str, dict[str, int]] = field(
        default_factory=dict
    )  # histogram name -> bucket -> count
    # problems noted on input rows that did not decide their outcome, by reason (Reason.BAD_JSON:
    # a sample's KEY.json was unreadable; its image and caption went on). Outside the invariant.
    warnings: dict[str, int] = field(default_factory=dict)
    version: int = STATS_VERSION

    def outcomes(self) -> int:
        return (
            self.written
            + sum(self.failed.values())
            + sum(self.filtered.values())
            + sum(self.duplicate.values())
            + sum(self.invalid.values())
        )

    def check(self) -> None:
        if self.input != self.outcomes():
            raise StatsMismatchError(
                f"accounting does not add up: input {self.input} != outcomes {self.outcomes()} "
                f"(written {self.written}, failed {sum(self.failed.values())}, "
                f"filtered {sum(self.filtered.values())}, duplicate {sum(self.duplicate.values())}, "
                f"invalid {sum(self.invalid.values())})"
            )

    def to_json(self) -> str:
        d = asdict(self)
        d["format"] = "webpairs-stats"
        return json.dumps(d, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Stats:
        d = json.loads(text)
        if d.pop("format", None) != "webpairs-stats":
            raise ManifestError("not a webpairs stats file")
        if d.get("version") not in READABLE_STATS_VERSIONS:
            raise ManifestError(f"stats version {d.get('version')} is not supported")
        d["version"] = STATS_VERSION
        return cls(**d)
