"""Input pairs and per-sample result rows: field names, statuses and reasons, defined once.

Every input row ends as exactly one result row whose `status` is one of `Status`; every row
that is not `ok` carries a `reason` (one of `Reason`, or `http_<code>`).

    schema = result_schema(extra=[pa.field("similarity", pa.float64())])
"""

from __future__ import annotations

import pyarrow as pa

RESULT_SCHEMA_VERSION = 4  # 3 added clip_score, 4 dhash


class Status:
    OK = "ok"
    FAILED = "failed"
    FILTERED = "filtered"
    DUPLICATE = "duplicate"
    INVALID = "invalid"


class Reason:
    """Why a row was not written. HTTP errors use `Reason.http(status)` -> "http_404"."""

    # invalid input rows
    MISSING_URL = "missing_url"
    BAD_SCHEME = "bad_scheme"
    UNPARSABLE_URL = "unparsable_url"
    URL_TOO_LONG = "url_too_long"
    CAPTION_NOT_STRING = "caption_not_string"
    MALFORMED_ROW = "malformed_row"
    CORRUPT_SHARD = "corrupt_shard"  # an input tar that cannot be read (past this point)
    MISSING_IMAGE = "missing_image"  # an input sample without an image member
    # problems an input row went on despite (Stats.warnings), not outcomes
    BAD_JSON = "bad_json"  # an input sample's KEY.json is not a JSON object: url, extras unknown
    # download failures
    DNS = "dns"
    CONNECT = "connect"
    TLS = "tls"
    TIMEOUT = "timeout"  # no connection, or a silent read, within its timeout: retried
    DEADLINE = "deadline"  # the attempt's total deadline passed (a trickling server): not retried
    TOO_LARGE = "too_large"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    OPTED_OUT = "opted_out"
    NETWORK = "network"
    BLOCKED_ADDRESS = "blocked_address"  # SSRF guard: loopback, private, link-local, ... address
    ROBOTS = "robots_disallowed"
    CIRCUIT_OPEN = "circuit_open"  # the host kept failing; its URL was not attempted
    # image failures
    NOT_IMAGE = "not_image"
    DECODE = "decode"
    TOO_MANY_PIXELS = "too_many_pixels"
    # filters
    TOO_SMALL = "too_small"
    ASPECT_RATIO = "aspect_ratio"
    # filters (curation)
    TOO_FEW_PIXELS = "too_few_pixels"
    MISSING_CAPTION = "missing_caption"
    CAPTION_TOO_SHORT = "caption_too_short"
    CAPTION_TOO_LONG = "caption_too_long"
    TOO_FEW_WORDS = "too_few_words"
    TOO_MANY_WORDS = "too_many_words"
    LANGUAGE = "language"
    BLOCKLIST = "blocklist"
    BOILERPLATE_CAPTION = "boilerplate_caption"
    CONTAMINATED = "contaminated"
    # duplicates
    DUPLICATE_URL = "duplicate_url"
    DUPLICATE_IMAGE = "duplicate_image"  # same decoded pixels (or bytes)
    NEAR_DUPLICATE = "near_duplicate"  # perceptual hash within the threshold
    DUPLICATE_CAPTION = "duplicate_caption"  # near-identical caption (MinHash)
    IN_PREVIOUS = "in_previous_output"  # --incremental: the previous output holds this sample
    # model-based curation (pipeline/scoring/pairs.py, pipeline/curation/dedupe/semantic.py, pipeline/jobs/select.py)
    LOW_CLIP_SCORE = "low_clip_score"  # under min_score, or outside the top fraction by score
    UNSCORED = "unscored"  # a score filter met a pair the model could not score
    SEMANTIC_DUPLICATE = "semantic_duplicate"  # image embeddings within the cosine threshold

    TRANSIENT = frozenset({DNS, CONNECT, TIMEOUT, NETWORK, CIRCUIT_OPEN})

    @staticmethod
    def http(status: int) -> str:
        return f"http_{status}"

    @staticmethod
    def rule(column: str) -> str:
        """A `webpairs select --where` rule over `column` did not hold -> "rule_width"."""
        return f"rule_{column}"

    @classmethod
    def is_transient(cls, reason: str | None) -> bool:
        """Worth retrying in a later run: network trouble, 429 and 5xx."""
        if reason is None:
            return False
        if reason in cls.TRANSIENT:
            return True
        if reason.startswith("http_"):
            code = reason[5:]
            return code == "429" or code.startswith("5")
        return False


# The input pair. Extra columns pass through untouched (see `result_schema(extra=...)`).
INPUT_FIELDS = (
    pa.field("url", pa.string(), nullable=False),
    pa.field("caption", pa.string()),
)

# One row per input row, whatever happened to it. Order here is the column order on disk.
RESULT_FIELDS = (
    pa.field("key", pa.string()),  # stable sample key (schemas.sample.key_for_url)
    pa.field("url", pa.string()),  # as given in the input
    pa.field("caption", pa.string()),
    pa.field("status", pa.string(), nullable=False),  # Status.*
    pa.field("reason", pa.string()),  # Reason.* when status != ok
    pa.field("error", pa.string()),  # raw detail of a failure, for humans
    pa.field("duplicate_of", pa.string()),  # survivor's key when status == duplicate
    pa.field("http_status", pa.int32()),
    pa.field("original_width", pa.int32()),
    pa.field("original_height", pa.int32()),
    pa.field("width", pa.int32()),  # as written to the shard
    pa.field("height", pa.int32()),
    pa.field("bytes", pa.int64()),  # size of the downloaded original
    pa.field("mime", pa.string()),  # sniffed from the bytes, not the header
    pa.field("sha256", pa.string()),  # of the downloaded original bytes
    pa.field("shard", pa.string()),  # shard name, e.g. "00012", when written
    pa.field("pixel_hash", pa.string()),  # schemas.imagehash.pixel_hash of the written image
    pa.field("phash", pa.string()),  # schemas.imagehash.phash, 16 hex digits
    pa.field("dhash", pa.string()),  # schemas.imagehash.dhash, 16 hex digits
    pa.field("language", pa.string()),  # ISO 639-1 code of the caption, when detected
    pa.field("clip_score", pa.float32()),  # image-caption cosine similarity, when a model scored it
)

RESULT_FIELD_NAMES = tuple(f.name for f in RESULT_FIELDS)

# Written after the result fields of a scored output's per-shard parquet only (not in KEY.json,
# not in rejects): L2-normalized embeddings of the scoring model, float16. The manifest's
# `scorer` names the model.
EMBEDDING_FIELDS = (
    pa.field("image_embedding", pa.list_(pa.float16())),
    pa.field("text_embedding", pa.list_(pa.float16())),
)
EMBEDDING_FIELD_NAMES = tuple(f.name for f in EMBEDDING_FIELDS)


def input_schema(extra: list[pa.Field] | tuple[pa.Field, ...] = ()) -> pa.Schema:
    return pa.schema(list(INPUT_FIELDS) + list(extra))


def result_schema(extra: list[pa.Field] | tuple[pa.Field, ...] = ()) -> pa.Schema:
    """Result-row schema, with pass-through input columns appended after the fixed ones."""
    clash = {f.name for f in extra} & set(RESULT_FIELD_NAMES)
    if clash:
        raise ValueError(f"extra columns clash with result fields: {', '.join(sorted(clash))}")
    return pa.schema(
        list(RESULT_FIELDS) + list(extra),
        metadata={b"webpairs.result_schema_version": str(RESULT_SCHEMA_VERSION).encode()},
    )
