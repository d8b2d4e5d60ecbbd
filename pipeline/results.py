"""Result rows: one per input row, whatever happened to it (see schemas.records).

Inside the pipeline a pair travels as a dict:
    {"url", "caption", "nurl" (normalized), "key", "extra": {column: value}}
and leaves as a flat result row with the extra columns appended.
"""

from __future__ import annotations

import pyarrow as pa

from schemas.records import RESULT_FIELD_NAMES, result_schema


def result_row(pair: dict, status: str, **values) -> dict:
    """The flat result row for `pair`; values override fixed fields."""
    row = dict.fromkeys(RESULT_FIELD_NAMES)
    row["key"] = pair.get("key")
    row["url"] = pair.get("url")
    row["caption"] = pair.get("caption")
    row["status"] = status
    unknown = set(values) - set(RESULT_FIELD_NAMES)
    if unknown:
        raise KeyError(f"not result fields: {', '.join(sorted(unknown))}")
    row.update(values)
    row.update(pair.get("extra") or {})
    return row


def rows_to_table(rows: list[dict], extra: list[pa.Field] | tuple[pa.Field, ...] = ()) -> pa.Table:
    """Result rows as an Arrow table with the shared schema (extras coerced to their field type)."""
    schema = result_schema(extra)
    columns = {name: [r.get(name) for r in rows] for name in schema.names}
    return pa.Table.from_pydict(columns, schema=schema)


def parquet_schema(extra: list[pa.Field] | tuple[pa.Field, ...] = ()) -> pa.Schema:
    return result_schema(extra)


def decision(
    key: str, status: str, reason: str, duplicate_of: str | None = None, error: str | None = None
) -> dict:
    """What a curation stage decided about one sample: applied to its row when shards are written."""
    return {
        "key": key,
        "status": status,
        "reason": reason,
        "duplicate_of": duplicate_of,
        "error": error,
    }
