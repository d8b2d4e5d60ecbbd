"""`--where` rules over recorded columns (`clip_score >= 0.3`, `language in en,de`) and the
`Where` stage that keeps the rows every rule holds for."""

from __future__ import annotations

import logging
import operator
import re
from dataclasses import dataclass

import apache_beam as beam
import pyarrow as pa

from pipeline.curation.base import KeepRows, RowFilter
from pipeline.io.url_lists import InputError
from schemas import Reason
from schemas.records import EMBEDDING_FIELD_NAMES

logger = logging.getLogger(__name__)


_OPS = {
    "==": operator.eq,
    "!=": operator.ne,
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}


_RULE = re.compile(r"^\s*(\w+)\s*(==|!=|<=|>=|<|>|\s+not\s+in\s+|\s+in\s+)\s*(.*?)\s*$")


@dataclass(frozen=True)
class Rule:
    column: str
    op: str  # ==, !=, <, <=, >, >=, in, not in
    value: str  # as written; compared as a number when the column holds numbers

    def __str__(self) -> str:
        return f"{self.column} {self.op} {self.value}"


def parse_rule(text: str) -> Rule:
    """'original_width>=512', 'language in en,de', 'status == ok' -> Rule."""
    m = _RULE.match(text)
    if not m or not m.group(3):
        raise InputError(
            f"--where {text!r} is not COLUMN OP VALUE (OP: ==, !=, <, <=, >, >=, in, not in)"
        )
    return Rule(m.group(1), " ".join(m.group(2).split()), m.group(3))


def _as_like(value: str, like) -> object:
    if isinstance(like, bool):
        return value.lower() in ("true", "1")
    if isinstance(like, (int, float)):
        return float(value)
    return value


def rule_holds(row: dict, rule: Rule) -> bool:
    """A missing value never satisfies a rule."""
    value = row.get(rule.column)
    if value is None:
        return False
    if rule.op in ("in", "not in"):
        options = {_as_like(v.strip(), value) for v in rule.value.split(",")}
        return (value in options) == (rule.op == "in")
    return _OPS[rule.op](value, _as_like(rule.value, value))


def check_rules(rules: tuple[Rule, ...], schema: pa.Schema) -> None:
    """Driver side: every rule names a scalar column of the source and a value of its type."""
    for rule in rules:
        if rule.column not in schema.names:
            raise InputError(
                f"--where {rule}: {rule.column!r} is not a recorded column "
                f"(columns: {', '.join(n for n in schema.names if n not in EMBEDDING_FIELD_NAMES)})"
            )
        kind = schema.field(rule.column).type
        if pa.types.is_nested(kind):
            raise InputError(f"--where {rule}: {rule.column!r} is not a scalar column")
        if pa.types.is_integer(kind) or pa.types.is_floating(kind):
            for v in rule.value.split(",") if rule.op.endswith("in") else [rule.value]:
                try:
                    float(v)
                except ValueError:
                    raise InputError(f"--where {rule}: {v.strip()!r} is not a number") from None


class WhereRules(RowFilter):
    """The first rule a row fails removes it (reason rule_COLUMN)."""

    namespace = "select"

    def __init__(self, rules: tuple[Rule, ...]):
        self.rules = rules

    def keep(self, row):
        for rule in self.rules:
            if not rule_holds(row, rule):
                detail = f"{rule.column}={row.get(rule.column)!r} fails {rule}"
                return False, Reason.rule(rule.column), detail
        return True, None, None


class Where(beam.PTransform):
    """Rows -> {"kept", "removed"}: the first rule a row fails removes it (reason rule_COLUMN)."""

    def __init__(self, rules: tuple[Rule, ...]):
        super().__init__()
        self.rules = rules

    def expand(self, rows):
        return rows | "Rules" >> KeepRows(WhereRules(self.rules))
