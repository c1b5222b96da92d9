"""Record-level data: a table with one row per person (or per person's event) must not leave a TRE,
however harmless each column looks on its own.

Three signs, each with its own verdict:

* a per-person key: a column named like one (`person_id`, `patient`, `nhs_number`, `SubjectID`, `id`)
  whose values are mostly distinct, or that names many distinct people even when they repeat;
* the shape of event data: a column of dates beside a text column whose values are mostly distinct;
* length: far more rows than an aggregate table has.

Distinctness is measured in windows of consecutive rows (`window_rows`), so memory stays flat however
long the file is; a table is judged by its most distinct window. Each window tells its text columns'
kinds (dates, numbers, text) from their first 1,024 values.

Settings (the rule's `config`, per TRE and per project):

=========================  ========  ===========================================================
key                        default   meaning
=========================  ========  ===========================================================
max_rows                   1000      more data rows than this is the "length" sign
max_unique_fraction        0.9       a key-named column at least this distinct is a per-person key
min_distinct_ids           100       ...as is one with at least this many distinct values
min_rows                   100       fewer rows than this say nothing about distinctness
high_cardinality_fraction  0.5       a text column at least this distinct, beside dates: event data
window_rows                65536     rows per distinctness window (fewer when they pass 64 MiB)
person_words, id_words     see below what makes a column name a key's name
id_column                  "fail"    verdict for a per-person key ("review" or "fail")
row_shape                  "review"  verdict for the event-data shape ("pass", "review" or "fail")
many_rows                  "review"  verdict for length ("pass", "review" or "fail")
=========================  ========  ===========================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fivesafes_tes.egress.checks._tables import (
    DATE_RE,
    NUMBER_RE,
    Table,
    UnreadableTable,
    name_words,
    open_table,
    settings_problem,
)
from fivesafes_tes.egress.checks.base import CheckContext, Finding, RuleResult, Verdict
from fivesafes_tes.egress.held import HeldFile

PERSON_WORDS = [
    "person", "patient", "subject", "participant", "individual", "pupil", "student", "member",
    "client", "customer", "user", "resident", "respondent", "nhs", "nric", "fin", "mrn", "chi",
    "eid", "pid", "uid", "hadm",
]  # fmt: skip
ID_WORDS = ["id", "ids", "identifier", "no", "num", "number", "key", "ref", "uuid", "guid"]
_SAMPLE = 4_096  # values per window that tell categories from mostly distinct text
_KIND_SAMPLE = 1_024  # values per window that tell dates, numbers and text apart
_DATE_SHARE = 0.9
_WINDOW_BYTES = 64 << 20  # a window of wide rows ends sooner: memory stays bounded by bytes too


class RecordLevelSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timeout_s: float = Field(default=60.0, gt=0, description="Read by the runner.")
    max_rows: int = Field(default=1000, ge=1)
    max_unique_fraction: float = Field(default=0.9, gt=0, le=1)
    min_distinct_ids: int = Field(default=100, ge=2)
    min_rows: int = Field(default=100, ge=2)
    high_cardinality_fraction: float = Field(default=0.5, gt=0, le=1)
    window_rows: int = Field(default=65_536, ge=100, le=10_000_000)
    person_words: list[str] = Field(default_factory=lambda: list(PERSON_WORDS))
    id_words: list[str] = Field(default_factory=lambda: list(ID_WORDS))
    id_column: Literal["review", "fail"] = "fail"
    row_shape: Literal["pass", "review", "fail"] = "review"
    many_rows: Literal["pass", "review", "fail"] = "review"


@dataclass
class _Column:
    is_key: bool  # named like a per-person key
    dates: bool = False
    text: bool = False
    most_distinct: tuple[float, int, int] = (0.0, 0, 0)  # (fraction, distinct, values) of one window
    most_values: tuple[float, int, int] = (0.0, 0, 0)  # the window with most distinct values

    settled: bool = False  # already past its thresholds: more windows cannot change the findings

    def saw(self, distinct: int, values: int, settings: RecordLevelSettings) -> None:
        window = (distinct / values, distinct, values)
        self.most_distinct = max(self.most_distinct, window)
        self.most_values = max(self.most_values, window, key=lambda w: w[1])
        if self.is_key:
            self.settled = (
                self.most_distinct[0] >= settings.max_unique_fraction
                or self.most_values[1] >= settings.min_distinct_ids
            )
        else:
            self.settled = self.most_distinct[0] >= settings.high_cardinality_fraction


class RecordLevelRule:
    name: ClassVar[str] = "record_level"
    version: ClassVar[str] = "1"

    def check(self, file: HeldFile, config: dict[str, Any], context: CheckContext) -> RuleResult:
        try:
            settings = RecordLevelSettings.model_validate(config)
        except ValidationError as exc:
            return self._result([settings_problem(exc)])
        try:
            table = open_table(file)
            if table is None:
                note = "not a table (CSV, TSV, Parquet or JSON records): no rows to judge"
                return self._result([Finding(Verdict.PASS, note)])
            columns, rows = self._scan(table, settings)
        except UnreadableTable as exc:
            return self._result([Finding(Verdict.FAIL, str(exc))])
        return self._result(self._findings(columns, rows, settings))

    def _scan(self, table: Table, settings: RecordLevelSettings) -> tuple[dict[str, _Column], int]:
        person = {w.lower() for w in settings.person_words}
        ids = {w.lower() for w in settings.id_words}
        columns: dict[str, _Column] = {}
        window: list[pa.RecordBatch] = []
        window_rows = window_bytes = rows = 0
        for batch in table.batches():
            rows += batch.num_rows
            window.append(batch)
            window_rows += batch.num_rows
            window_bytes += batch.nbytes
            if window_rows >= settings.window_rows or window_bytes >= _WINDOW_BYTES:
                self._measure(window, columns, person, ids, settings)
                window, window_rows, window_bytes = [], 0, 0
        if window:
            self._measure(window, columns, person, ids, settings)
        return columns, rows

    @staticmethod
    def _measure(
        window: list[pa.RecordBatch],
        columns: dict[str, _Column],
        person: set[str],
        ids: set[str],
        settings: RecordLevelSettings,
    ) -> None:
        names = list(dict.fromkeys(name for batch in window for name in batch.schema.names))
        open_columns: dict[str, pa.ChunkedArray] = {}
        for name in names:
            column = columns.get(name)
            if column is None:
                column = columns[name] = _Column(is_key=_is_key_name(name, person, ids))
            if column.settled:
                continue
            parts = [batch.column(name) for batch in window if name in batch.schema.names]
            open_columns[name] = (
                pa.chunked_array(parts) if len({p.type for p in parts}) == 1 else _as_text(parts)
            )
        kinds = _kinds(open_columns)
        for name, values in open_columns.items():
            column, kind = columns[name], kinds[name]
            column.dates = column.dates or kind == "dates"
            column.text = column.text or kind == "text"
            present = len(values) - values.null_count
            if present < settings.min_rows or not (kind == "text" or (column.is_key and kind == "numbers")):
                continue
            if (
                not column.is_key
                and _distinct_share(values.slice(0, _SAMPLE)) < settings.high_cardinality_fraction
            ):
                continue  # a few categories: distinctness only falls as a window grows
            column.saw(pc.count_distinct(values).as_py(), present, settings)

    def _findings(
        self, columns: dict[str, _Column], rows: int, settings: RecordLevelSettings
    ) -> list[Finding]:
        findings: list[Finding] = []
        unique = (
            f"{settings.max_unique_fraction:.0%} distinct or {settings.min_distinct_ids:,} distinct values"
        )
        for name, column in columns.items():
            if not column.is_key:
                continue
            window = column.most_distinct
            if window[0] < settings.max_unique_fraction:
                window = column.most_values
                if window[1] < settings.min_distinct_ids:
                    continue
            fraction, distinct, values = window
            message = (
                f"looks like a per-person key: {distinct:,} distinct among {values:,} values ({fraction:.0%})"
            )
            findings.append(Finding(Verdict(settings.id_column), message, name, threshold=unique))
        dates = [name for name, c in columns.items() if c.dates]
        varied = [
            name
            for name, c in columns.items()
            if c.text and c.most_distinct[0] >= settings.high_cardinality_fraction
        ]
        if dates and varied and rows >= settings.min_rows:
            described = ", ".join(f"{n} ({columns[n].most_distinct[0]:.0%} distinct)" for n in varied)
            message = (
                f"looks like one row per person or event: dates in {', '.join(dates)} beside "
                f"mostly distinct text in {described}, {rows:,} rows"
            )
            threshold = f"{settings.high_cardinality_fraction:.0%} distinct, {settings.min_rows:,} rows"
            findings.append(Finding(Verdict(settings.row_shape), message, threshold=threshold))
        if rows > settings.max_rows:
            message = f"{rows:,} data rows: aggregate tables are rarely this long"
            findings.append(
                Finding(Verdict(settings.many_rows), message, threshold=f"{settings.max_rows:,} rows")
            )
        if not findings:
            findings.append(Finding(Verdict.PASS, f"{rows:,} rows, no sign of one row per person"))
        return findings

    def _result(self, findings: list[Finding]) -> RuleResult:
        verdict = Verdict.worst([f.verdict for f in findings])
        return RuleResult(rule=self.name, version=self.version, verdict=verdict, findings=findings)


def _is_key_name(name: str, person: set[str], ids: set[str]) -> bool:
    """`id`, `uuid`, `patient`, `person_id`, `nhs_number`, `SubjectNo`: a person word plus nothing but
    key words, or a key word alone. `n_patients` and `patient_age` are not keys."""
    words = name_words(name)
    if not words:
        return False
    if len(words) == 1 and words[0] in ids - {"no", "num", "number", "key", "ref"}:
        return True
    return any(w in person for w in words) and all(w in person or w in ids for w in words)


def _kinds(columns: dict[str, pa.ChunkedArray]) -> dict[str, str]:
    """dates | numbers | fractions | text | other for each column, from its type or from a sample of
    its string values. The samples of all string columns are matched together: two pattern
    matches a window, not two a column."""
    kinds: dict[str, str] = {}
    samples: dict[str, pa.Array] = {}
    for name, values in columns.items():
        kind = values.type
        if pa.types.is_date(kind) or pa.types.is_timestamp(kind):
            kinds[name] = "dates"
        elif pa.types.is_integer(kind):
            kinds[name] = "numbers"
        elif pa.types.is_floating(kind) or pa.types.is_decimal(kind):
            kinds[name] = "fractions"
        elif (
            not (pa.types.is_string(kind) or pa.types.is_large_string(kind))
            or len(sample := values.drop_null().slice(0, _KIND_SAMPLE)) == 0
        ):
            kinds[name] = "other"
        else:
            samples[name] = pc.cast(sample, pa.large_string()).combine_chunks()
    if not samples:
        return kinds
    together = pa.concat_arrays(list(samples.values()))
    dates = pc.match_substring_regex(together, DATE_RE)
    numbers = pc.match_substring_regex(together, NUMBER_RE)
    start = 0
    for name, sample in samples.items():
        size = len(sample)
        is_number = numbers.slice(start, size)
        if (pc.sum(dates.slice(start, size)).as_py() or 0) >= _DATE_SHARE * size:
            kinds[name] = "dates"
        elif (pc.sum(is_number).as_py() or 0) >= 0.5 * size:
            values = pc.cast(pc.if_else(is_number, pc.utf8_trim_whitespace(sample), None), pa.float64())
            whole = pc.all(pc.equal(values, pc.floor(values))).as_py()
            kinds[name] = "numbers" if whole in (True, None) else "fractions"
        else:
            kinds[name] = "text"
        start += size
    return kinds


def _distinct_share(values: pa.ChunkedArray) -> float:
    present = len(values) - values.null_count
    return pc.count_distinct(values).as_py() / present if present else 0.0


def _as_text(parts: list[pa.Array]) -> pa.ChunkedArray:
    """JSON records may change a key's type between batches: compare them as text."""
    try:
        return pa.chunked_array([pc.cast(p, pa.string()) for p in parts], pa.string())
    except pa.ArrowException:
        return pa.chunked_array([pa.nulls(sum(len(p) for p in parts))])
