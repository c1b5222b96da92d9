"""Small cells: a count in a released table that is above zero but below the TRE's threshold lets a
reader single out the few people behind it.

Count-like columns are integer-valued columns whose name says they count something (`n`, `count`,
`num_patients`, `TotalCases`, ...), or, when a TRE says its outputs are aggregate tables, every
integer-valued column whose name does not say it is something else (an age, a year, a code, a rate).
Values that are not numbers, such as "<10" or "*" left by the researcher's own suppression, are not
counts and are skipped. Reading streams in batches, so memory does not grow with the file.

Settings (the rule's `config`, per TRE and per project):

=====================  ===========  ==============================================================
key                    default      meaning
=====================  ===========  ==============================================================
threshold              10           counts with 0 < n < threshold fail
zeros                  "review"     "pass", "review" or "fail" for a zero count
count_words            see below    a column is count-like when its name has one of these words
exclude_words          see below    ...and none of these (they name measures that are not counts)
count_columns          []           column names that are always count-like
all_integer_columns    false        also treat every other integer-valued column as count-like
max_findings           50           cells listed one by one; the rest are summed up per column
=====================  ===========  ==============================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fivesafes_tes.egress.checks._tables import (
    NUMBER_RE,
    Table,
    UnreadableTable,
    name_words,
    open_table,
    row_indices,
    settings_problem,
)
from fivesafes_tes.egress.checks.base import CheckContext, Finding, HeldFile, RuleResult, Verdict

COUNT_WORDS = [
    "n", "count", "counts", "freq", "frequency", "num", "number", "total", "totals", "sum", "size",
    "cases", "patients", "persons", "people", "individuals", "subjects", "participants", "respondents",
    "deaths", "births", "events", "admissions", "episodes", "records", "households", "observations",
    "obs", "numerator", "denominator",
]  # fmt: skip
EXCLUDE_WORDS = [
    "id", "nhs", "nric", "phone", "tel", "postcode", "house", "version", "code", "year", "age",
    "index", "unnamed", "row", "rank", "order", "rate", "pct", "percent", "percentage", "proportion",
    "prop", "ratio", "mean", "median", "avg", "average", "sd", "se", "ci", "lower", "upper", "score",
]  # fmt: skip


class SmallCellSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timeout_s: float = Field(default=60.0, gt=0, description="Read by the runner.")
    threshold: int = Field(default=10, ge=1)
    zeros: Literal["pass", "review", "fail"] = "review"
    count_words: list[str] = Field(default_factory=lambda: list(COUNT_WORDS))
    exclude_words: list[str] = Field(default_factory=lambda: list(EXCLUDE_WORDS))
    count_columns: list[str] = Field(default_factory=list)
    all_integer_columns: bool = False
    max_findings: int = Field(default=50, ge=1, le=500)


@dataclass
class _Column:
    """What has been seen of one candidate column so far."""

    by_name: bool
    integers: int = 0
    fractions: int = 0  # a count column holds no 2.5: one that does is a measure, not a count
    texts: int = 0
    small: int = 0
    zeros: int = 0
    cells: list[tuple[int, bool]] = field(default_factory=list)  # (row, is_zero), up to max_findings

    def is_count(self, all_integer_columns: bool) -> bool:
        if self.integers == 0 or self.fractions:
            return False
        return self.by_name or (all_integer_columns and self.texts <= self.integers)


class SmallCellRule:
    name: ClassVar[str] = "small_cell"
    version: ClassVar[str] = "1"

    def check(self, file: HeldFile, config: dict[str, Any], context: CheckContext) -> RuleResult:
        try:
            settings = SmallCellSettings.model_validate(config)
        except ValidationError as exc:
            return self._result(Verdict.FAIL, [settings_problem(exc)])
        try:
            table = open_table(file)
            if table is None:
                note = "not a table (CSV, TSV, Parquet or JSON records): no counts to check"
                return self._result(Verdict.PASS, [Finding(Verdict.PASS, note)])
            columns, rows = self._scan(table, settings)
        except UnreadableTable as exc:
            return self._result(Verdict.FAIL, [Finding(Verdict.FAIL, str(exc))])
        return self._result(None, self._findings(columns, rows, settings))

    def _scan(self, table: Table, settings: SmallCellSettings) -> tuple[dict[str, _Column], int]:
        count_words = {w.lower() for w in settings.count_words}
        exclude_words = {w.lower() for w in settings.exclude_words}
        named = set(settings.count_columns)

        def by_name(name: str) -> bool:
            words = set(name_words(name))
            return name in named or (bool(words & count_words) and not words & exclude_words)

        def wanted(name: str) -> bool:
            if by_name(name):
                return True
            words = name_words(name)
            return settings.all_integer_columns and bool(words) and not set(words) & exclude_words

        columns: dict[str, _Column] = {}
        rows = 0
        for batch in table.batches(wanted):
            for name, array in zip(batch.schema.names, batch.columns, strict=True):
                column = columns.get(name)
                if column is None:
                    column = columns[name] = _Column(by_name=by_name(name))
                self._judge(column, array, rows, settings)
            rows += batch.num_rows
        return columns, rows

    @staticmethod
    def _judge(column: _Column, array: pa.Array, offset: int, settings: SmallCellSettings) -> None:
        values, texts = _numbers(array)
        column.texts += texts
        if values is None:
            return
        whole = pc.equal(values, pc.floor(values))
        column.integers += pc.sum(whole).as_py() or 0
        column.fractions += pc.sum(pc.invert(whole)).as_py() or 0
        small = pc.and_(pc.and_(whole, pc.greater(values, 0)), pc.less(values, settings.threshold))
        small_rows = row_indices(small)
        column.small += len(small_rows)
        zero_rows = row_indices(pc.equal(values, 0)) if settings.zeros != "pass" else []
        column.zeros += len(zero_rows)
        room = settings.max_findings - len(column.cells)
        if room > 0 and (small_rows or zero_rows):
            cells = sorted([(r, False) for r in small_rows[:room]] + [(r, True) for r in zero_rows[:room]])
            column.cells.extend((offset + r + 1, is_zero) for r, is_zero in cells[:room])

    def _findings(self, columns: dict[str, _Column], rows: int, settings: SmallCellSettings) -> list[Finding]:
        counts = [name for name, c in columns.items() if c.is_count(settings.all_integer_columns)]
        if not counts:
            note = "no count-like columns (integer columns named like n, count, total, patients, ...)"
            return [Finding(Verdict.PASS, note)]
        threshold = str(settings.threshold)
        zeros = f"zeros: {settings.zeros}"
        zero_verdict = Verdict(settings.zeros)
        findings: list[Finding] = []
        room = settings.max_findings
        for name in counts:
            column = columns[name]
            listed = column.cells[:room]
            room -= len(listed)
            for row, is_zero in listed:
                if is_zero:
                    findings.append(Finding(zero_verdict, "zero count", name, row, "0", zeros))
                else:
                    findings.append(
                        Finding(
                            Verdict.FAIL, f"count below {threshold}", name, row, f"<{threshold}", threshold
                        )
                    )
            unlisted_small = column.small - sum(1 for _, is_zero in listed if not is_zero)
            unlisted_zeros = column.zeros - sum(1 for _, is_zero in listed if is_zero)
            if unlisted_small:
                message = f"{column.small:,} counts below {threshold} in all, {unlisted_small:,} not listed"
                findings.append(Finding(Verdict.FAIL, message, name, threshold=threshold))
            if unlisted_zeros:
                message = f"{column.zeros:,} zero counts in all, {unlisted_zeros:,} not listed"
                findings.append(Finding(zero_verdict, message, name, threshold=zeros))
        message = f"checked count columns {', '.join(counts)} over {rows:,} rows"
        findings.append(Finding(Verdict.PASS, message, threshold=threshold))
        return findings

    def _result(self, verdict: Verdict | None, findings: list[Finding]) -> RuleResult:
        if verdict is None:
            verdict = Verdict.worst([f.verdict for f in findings])
        return RuleResult(rule=self.name, version=self.version, verdict=verdict, findings=findings)


def _numbers(array: pa.Array) -> tuple[pa.Array | None, int]:
    """(the values as float64 with null where a value is not a number, how many non-empty values are
    not numbers); (None, 0) for a column of a type that cannot hold counts."""
    kind = array.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        return pc.cast(array, pa.float64()), 0
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        return None, 0
    try:
        return pc.cast(pc.cast(array, pa.int64()), pa.float64()), 0  # the usual case, and the fast one
    except pa.ArrowInvalid:
        pass
    is_number = pc.match_substring_regex(array, NUMBER_RE)
    blank = pc.equal(pc.utf8_trim_whitespace(array), "")
    texts = pc.sum(pc.and_not(pc.invert(is_number), blank)).as_py() or 0
    values = pc.cast(pc.if_else(is_number, pc.utf8_trim_whitespace(array), None), pa.float64())
    return values, texts
