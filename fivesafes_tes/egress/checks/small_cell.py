"""Small cells: a count in a released table that is above zero but below the TRE's threshold lets a
reader single out the few people behind it.

What is taken for a count column, and so for a count table (a table with at least one):

* a column whose name says it counts something (`n`, `count`, `num_patients`, `TotalCases`, ...) and
  none of the `exclude_words`, or that the TRE names in `count_columns`; or
* by its content (`counts_by_content`, on by default): a column whose numbers are all whole and not
  negative (3, 12.0), with no more other values than numbers (suppression markers such as "<10" or
  "*" may stand in for some), under any name that is not ruled out below. This is what finds small
  cells in a cross-tabulation whose count columns are named by category labels (`stage I`,
  `stage IV`, `Female`, `2019`, `0-17`): in a table of counts, the cells that are not labels are
  whole numbers, whatever the columns are called. A column whose first rows (about 64 KiB of a
  delimited file, the first batch of others) hold more text than numbers is taken for labels there
  and not read further: reading text columns in full would double what the rule costs.

Ruled out as counts by content, because a whole number there means something else:

* names with one of the `exclude_words` (an id, a code, a rate, a mean, a rank...), names made only
  of `category_words` (`age`, `year`, `sex`, `age_band`, `imd quintile`: a variable whose values are
  integer-coded categories; `age 0-17` or `stage IV` add a label and are counted), names with no
  letter or digit (a written-out row index), and the TRE's `label_columns`;
* a first column holding 0, 1, 2, ... or 1, 2, 3, ... down at least two rows: row numbers;
* a column all of whose numbers are years (1800 to 2100).

Years, large ids and large measurements have no value below the threshold, so whether they are taken
for counts changes no verdict; the rules above keep the small values of row numbers, ids, codes,
ages and integer-coded categories from failing a table. A category coded by integers under a name
these words miss is taken for counts: name it with a category word or list it in `label_columns`.
Values that are not numbers are skipped. Reading streams in batches, so memory does not grow with
the file.

Settings (the rule's `config`, per TRE and per project):

=====================  ===========  ==============================================================
key                    default      meaning
=====================  ===========  ==============================================================
threshold              10           counts with 0 < n < threshold fail
zeros                  "review"     "pass", "review" or "fail" for a zero count
count_words            see below    a column is count-like when its name has one of these words
exclude_words          see below    ...and none of these (they name measures that are not counts)
category_words         see below    a name made only of these names a variable, not a count
count_columns          []           column names that are always count-like
label_columns          []           column names never taken for counts by their content
counts_by_content      true         also find count columns by their content (see above)
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
from fivesafes_tes.egress.checks.base import CheckContext, Finding, RuleResult, Verdict
from fivesafes_tes.egress.held import HeldFile

COUNT_WORDS = [
    "n", "count", "counts", "freq", "frequency", "num", "number", "total", "totals", "sum", "size",
    "cases", "patients", "persons", "people", "individuals", "subjects", "participants", "respondents",
    "deaths", "births", "events", "admissions", "episodes", "records", "households", "observations",
    "obs", "numerator", "denominator",
]  # fmt: skip
EXCLUDE_WORDS = [
    "id", "ids", "nhs", "nric", "phone", "tel", "postcode", "house", "version", "code", "codes", "index",
    "unnamed", "row", "rank", "order", "rate", "pct", "percent", "percentage", "proportion", "prop",
    "ratio", "mean", "median", "avg", "average", "sd", "se", "ci", "lower", "upper", "score", "min",
    "max", "minimum", "maximum", "iqr", "quantile", "percentile", "df", "dof",
]  # fmt: skip
CATEGORY_WORDS = [
    "year", "years", "age", "ages", "sex", "gender", "month", "week", "day", "quarter", "period",
    "date", "stage", "grade", "group", "grp", "band", "level", "class", "category", "cat", "type",
    "tertile", "quartile", "quintile", "decile", "imd", "region", "flag", "status",
]  # fmt: skip
_YEARS = (1800, 2100)


class SmallCellSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timeout_s: float = Field(default=60.0, gt=0, description="Read by the runner.")
    threshold: int = Field(default=10, ge=1)
    zeros: Literal["pass", "review", "fail"] = "review"
    count_words: list[str] = Field(default_factory=lambda: list(COUNT_WORDS))
    exclude_words: list[str] = Field(default_factory=lambda: list(EXCLUDE_WORDS))
    category_words: list[str] = Field(default_factory=lambda: list(CATEGORY_WORDS))
    count_columns: list[str] = Field(default_factory=list)
    label_columns: list[str] = Field(default_factory=list)
    counts_by_content: bool = True
    max_findings: int = Field(default=50, ge=1, le=500)


@dataclass
class _Column:
    """What has been seen of one candidate column so far."""

    by_name: bool
    first: bool  # the table's first column: row numbers are written there
    integers: int = 0
    fractions: int = 0  # a count column holds no 2.5: one that does is a measure, not a count
    negatives: int = 0
    texts: int = 0
    small: int = 0
    zeros: int = 0
    rows: int = 0
    years: bool = True  # every number so far is a year
    row_numbers: bool = True  # (first column) every row so far holds the next row number
    next_row: float | None = None
    cells: list[tuple[int, bool]] = field(default_factory=list)  # (row, is_zero), up to max_findings

    @property
    def label(self) -> bool:
        """More text than numbers: a column of labels, not counts."""
        return not self.by_name and self.texts > self.integers

    @property
    def settled(self) -> bool:
        """Nothing more can make it a count column: the rest of it need not be judged."""
        return bool(self.fractions or (self.negatives and not self.by_name))

    def is_count(self) -> bool:
        if self.integers == 0 or self.fractions:
            return False
        if self.by_name:
            return True
        row_numbers = self.first and self.row_numbers and self.rows >= 2
        return not (self.negatives or self.texts > self.integers or row_numbers or self.years)


class SmallCellRule:
    name: ClassVar[str] = "small_cell"
    version: ClassVar[str] = "2"

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
        category_words = {w.lower() for w in settings.category_words}
        named, labels = set(settings.count_columns), set(settings.label_columns)

        def by_name(name: str) -> bool:
            words = set(name_words(name))
            return name in named or (bool(words & count_words) and not words & exclude_words)

        def by_content(name: str) -> bool:
            words = set(name_words(name))
            return (
                settings.counts_by_content
                and name not in labels
                and bool(words - category_words)
                and not words & exclude_words
            )

        def wanted(name: str) -> bool:
            return by_name(name) or by_content(name)

        columns: dict[str, _Column] = {}
        first = table.columns[0] if table.columns else None
        rows = 0

        def judge(batch: pa.RecordBatch) -> None:
            nonlocal first, rows
            if first is None and batch.num_columns:
                first = batch.schema.names[0]  # JSON records: the first key of the first record
            for name, array in zip(batch.schema.names, batch.columns, strict=True):
                column = columns.get(name)
                if column is None:
                    column = columns[name] = _Column(by_name=by_name(name), first=name == first)
                if not column.settled:
                    self._judge(column, array, rows, settings)
            rows += batch.num_rows

        # Columns whose first rows hold more text than numbers, a fraction or a negative number are
        # labels or measures: reading them in full is most of what this rule would cost.
        head = table.first_rows(wanted)
        if head is not None:
            sample = {name: _Column(by_name=by_name(name), first=False) for name in head.schema.names}
            for name, array in zip(head.schema.names, head.columns, strict=True):
                self._judge(sample[name], array, 0, settings)
            done = {name for name, column in sample.items() if column.settled or column.label}
            columns.update({name: sample[name] for name in done})
        skip = frozenset(columns)
        for batch in table.batches(lambda name: wanted(name) and name not in skip):
            judge(batch)
        return columns, rows

    @staticmethod
    def _judge(column: _Column, array: pa.Array, offset: int, settings: SmallCellSettings) -> None:
        values, texts = _numbers(array)
        column.texts += texts
        if column.first and column.row_numbers and len(array):
            column.row_numbers, column.next_row = _numbering(values, column.next_row)
        column.rows += len(array)
        if values is None:
            return
        whole = pc.equal(values, pc.floor(values))
        column.integers += pc.sum(whole).as_py() or 0
        column.fractions += pc.sum(pc.invert(whole)).as_py() or 0
        low, high = pc.min_max(values).values()
        if low.is_valid:
            column.negatives += low.as_py() < 0
            column.years = column.years and _YEARS[0] <= low.as_py() and high.as_py() <= _YEARS[1]
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
        counts = [name for name, c in columns.items() if c.is_count()]
        if not counts:
            note = (
                "no count columns (columns named like n, count, total, patients, ...; or of whole numbers "
                "of at least zero, not named like an id, age, year, code or rate)"
                if settings.counts_by_content
                else "no count-like columns (integer columns named like n, count, total, patients, ...)"
            )
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


def _numbering(values: pa.Array | None, start: float | None) -> tuple[bool, float | None]:
    """Whether a non-empty batch of the first column goes on numbering rows, one step per row with
    none missing, from `start` (from 0 or 1 at the table's start, `start` None); and the number the
    next batch must start with."""
    if values is None or values.null_count:
        return False, None
    first = values[0].as_py()
    if first != start and not (start is None and first in (0, 1)):
        return False, None
    steps = pc.pairwise_diff(values).slice(1)
    if len(steps) and not pc.all(pc.equal(steps, 1)).as_py():
        return False, None
    return True, first + len(values)


def _numbers(array: pa.Array) -> tuple[pa.Array | None, int]:
    """(the values as float64 with null where a value is not a number, how many non-empty values are
    not numbers); (None, 0) for a column of a type that cannot hold counts."""
    kind = array.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        return pc.cast(array, pa.float64()), 0
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        return None, 0
    # The usual case, and the fast one, tried only when the first values are numbers: a cast that
    # fails costs ten times what the slow path does.
    if pc.all(pc.match_substring_regex(array.slice(0, 16), NUMBER_RE)).as_py() is not False:
        try:
            return pc.cast(pc.cast(array, pa.int64()), pa.float64()), 0
        except pa.ArrowInvalid:
            pass
    is_number = pc.match_substring_regex(array, NUMBER_RE)
    blank = pc.equal(pc.utf8_trim_whitespace(array), "")
    texts = pc.sum(pc.and_not(pc.invert(is_number), blank)).as_py() or 0
    values = pc.cast(pc.if_else(is_number, pc.utf8_trim_whitespace(array), None), pa.float64())
    return values, texts
