"""ACRO's own verdicts honoured: when a held folder holds ACRO's `results.json`, each output in it
gets the status ACRO gave it, and anything ACRO or the researcher marked not for release fails.

ACRO (the `acro` package) checks tables and models as the researcher makes them and, on
`finalise`, writes an output folder: one file per output, `results.json` with a record per output
(`status` pass | review | fail, `exception` the researcher's request, `comments`, and per file the
cells each check flagged), `config.json` with the thresholds it used, and `checksums/<file>.txt`.
ACRO runs inside the researcher's own code, so its passes count only when the thresholds it ran
with are at least this TRE's, and only for content that still has the checksum ACRO wrote. Its
verdict can only add to the other rules' findings, never lift them: the worst verdict wins.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, ClassVar

from fivesafes_tes.egress.checks.base import CheckContext, Finding, RuleResult, Verdict
from fivesafes_tes.egress.held import HeldFile

RESULTS = "results.json"
CONFIG = "config.json"
CHECKSUMS = "checksums"
_MAX_METADATA_BYTES = 64 << 20
_STATUSES = {"pass": Verdict.PASS, "review": Verdict.REVIEW, "fail": Verdict.FAIL}
# The ACRO settings each of its checks is judged against, for findings a checker can weigh.
_CHECK_SETTINGS = {
    "MinimumThresholdCheck": ("safe_threshold",),
    "NKCheck": ("safe_nk_n", "safe_nk_k"),
    "PPercentCheck": ("safe_pratio_p",),
    "MinimumDoFCheck": ("safe_dof_threshold",),
    "PresenceOfZeroCheck": ("zeros_are_disclosive",),
    "RequiredZeroCheck": ("zeros_are_disclosive",),
}


class _Malformed(ValueError):
    pass


@dataclass(frozen=True)
class _Output:
    """One record of results.json as it applies to one of its files."""

    uid: str
    status: str
    kind: str
    summary: str
    exception: str
    comments: tuple[str, ...]
    cells: dict[str, list[Any]]
    columns: tuple[str, ...]
    rows: tuple[str, ...]


@dataclass
class _Folder:
    root: PurePosixPath
    outputs: dict[str, _Output] = field(default_factory=dict)  # file name relative to root -> its record
    statuses: dict[str, str] = field(default_factory=dict)  # output id -> status, files or not
    exceptions: int = 0
    acro_settings: dict[str, Any] | None = None
    checksums: dict[str, str] = field(default_factory=dict)
    problem: str | None = None


class AcroRule:
    name: ClassVar[str] = "acro"
    version: ClassVar[str] = "1"

    def __init__(self) -> None:
        # A check process serves one CheckContext: index it once, not once per file.
        self._context: CheckContext | None = None
        self._held: dict[str, HeldFile] = {}
        self._folders: dict[PurePosixPath, _Folder | None] = {}

    def check(self, file: HeldFile, config: dict[str, Any], context: CheckContext) -> RuleResult:
        label = f"{self.name} v{self.version}: {file.name}"
        findings: list[Finding] = []
        markers = list(config["dont_release_markers"])
        marker = _marked(file.name, markers)
        if marker:
            findings.append(
                Finding(Verdict.FAIL, f"{label} is named {marker!r}: never released", never_release=True)
            )
        held = self._index(context)
        located = _locate(file, held)
        if located is not None:
            folder = self._folder(*located, held)
            if folder is not None:
                findings += _judge(file, folder, config, label, markers, held)
        verdict = Verdict.worst([f.verdict for f in findings])
        return RuleResult(rule=self.name, version=self.version, verdict=verdict, findings=findings)

    def _index(self, context: CheckContext) -> dict[str, HeldFile]:
        if context is not self._context:
            self._context, self._folders = context, {}
            self._held = {f.name: f for f in context.files if f.kind == "output"}
        return self._held

    def _folder(self, root: PurePosixPath, results: HeldFile, held: dict[str, HeldFile]) -> _Folder | None:
        if root not in self._folders:
            own = [f for f in held.values() if _is_metadata(_relative(f, root))]
            self._folders[root] = _read_folder(root, results, own)
        return self._folders[root]


def _judge(
    file: HeldFile,
    folder: _Folder,
    config: dict[str, Any],
    label: str,
    markers: list[str],
    held: dict[str, HeldFile],
) -> list[Finding]:
    where = f"ACRO output folder {folder.root}"
    if folder.problem is not None:
        return [
            Finding(
                Verdict.FAIL,
                f"{label}: the results.json of {where} cannot be read ({folder.problem}); ACRO's "
                "verdicts cannot be honoured, so nothing in this folder leaves until results.json is "
                "fixed or removed",
            )
        ]
    rel = _relative(file, folder.root)
    findings: list[Finding] = []
    if rel == RESULTS:
        findings += _summarise(folder, config, label, held)
    elif rel.startswith(f"{CHECKSUMS}/"):
        findings.append(_judge_checksum(rel, folder, config, label, held))
    elif _is_metadata(rel):
        findings.append(
            Finding(Verdict(config["metadata"]), f"{label} is ACRO's own record-keeping in {where}")
        )
    elif rel in folder.outputs:
        findings += _judge_output(rel, folder.outputs[rel], folder, config, label, markers)
    else:
        findings.append(
            Finding(
                Verdict(config["unlisted"]),
                f"{label} is in {where} but ACRO's results.json does not list it: ACRO never checked it",
                threshold=f"unlisted={config['unlisted']}",
            )
        )
    expected = folder.checksums.get(rel)
    if expected is not None and expected != file.sha256.lower():
        findings.append(
            Finding(
                Verdict(config["checksum_mismatch"]),
                f"{label} changed after ACRO wrote it: its SHA-256 differs from {CHECKSUMS}/{rel}.txt, "
                "so ACRO's verdict is not about this content",
                threshold=f"checksum_mismatch={config['checksum_mismatch']}",
            )
        )
    return findings


def _judge_checksum(
    rel: str, folder: _Folder, config: dict[str, Any], label: str, held: dict[str, HeldFile]
) -> Finding:
    """A checksum that is exactly the SHA-256 of a held sibling says nothing new, so it may pass;
    any other text in checksums/ could carry anything."""
    target = rel.removeprefix(f"{CHECKSUMS}/").removesuffix(".txt")
    sibling = held.get((folder.root / target).as_posix())
    if sibling is not None and folder.checksums.get(target) == sibling.sha256.lower():
        return Finding(Verdict.PASS, f"{label} is ACRO's SHA-256 of {target}, matching it")
    return Finding(
        Verdict(config["metadata"]),
        f"{label} is in ACRO's checksums/ but is not the SHA-256 of a held file of this folder",
    )


def _judge_output(
    rel: str, output: _Output, folder: _Folder, config: dict[str, Any], label: str, markers: list[str]
) -> list[Finding]:
    what = f"output {output.uid!r} ({output.kind})"
    summary = f": {output.summary}" if output.summary else ""
    findings: list[Finding] = []
    marked = next(
        (m for text in (output.uid, output.exception, *output.comments) if (m := _marked(text, markers))),
        None,
    )
    if marked:
        findings.append(
            Finding(
                Verdict.FAIL,
                f"{label}: {what} is marked {marked!r} by ACRO: never released",
                never_release=True,
            )
        )
    status = _STATUSES.get(output.status.lower())
    if status is None:
        findings.append(
            Finding(
                Verdict.FAIL, f"{label}: {what} has status {output.status[:20]!r}, not pass, review or fail"
            )
        )
        status = Verdict.FAIL
    elif status is Verdict.PASS:
        doubt = _settings_doubt(folder, config)
        if doubt:
            status = Verdict.REVIEW
            findings.append(
                Finding(Verdict.REVIEW, f"{label}: ACRO passed {what}, but {doubt}", threshold=doubt)
            )
        else:
            findings.append(Finding(Verdict.PASS, f"{label}: ACRO passed {what}{summary}"))
    elif status is Verdict.FAIL and output.exception:
        status = Verdict(config["exception"])
        findings.append(
            Finding(
                status,
                f"{label}: ACRO failed {what}{summary}; the researcher requested an exception: "
                f"{_short(output.exception)!r}",
                threshold=f"exception={config['exception']}",
            )
        )
    elif status is Verdict.FAIL:
        findings.append(
            Finding(Verdict.FAIL, f"{label}: ACRO failed {what}{summary}; no exception was requested")
        )
    else:
        exception = f"; the researcher's reason: {_short(output.exception)!r}" if output.exception else ""
        findings.append(
            Finding(Verdict.REVIEW, f"{label}: ACRO asks for review of {what}{summary}{exception}")
        )
    if status is not Verdict.PASS:
        findings += _cell_findings(rel, output, folder, status, int(config["max_cell_findings"]), label)
    findings += [Finding(Verdict.PASS, f"{label}: comment in ACRO: {_short(c)!r}") for c in output.comments]
    return findings


def _cell_findings(
    rel: str, output: _Output, folder: _Folder, verdict: Verdict, limit: int, label: str
) -> list[Finding]:
    flagged = [(check, cell) for check, cells in output.cells.items() for cell in cells]
    findings: list[Finding] = []
    for check, cell in flagged[:limit]:
        row, column = _cell_position(cell)
        row_label = output.rows[row] if row is not None and row < len(output.rows) else None
        col_label = output.columns[column] if column is not None and column < len(output.columns) else None
        at = ", ".join(
            part
            for part in (
                f"row {row_label!r}"
                if row_label is not None
                else (f"row {row + 1}" if row is not None else ""),
                f"column {col_label!r}" if col_label is not None else "",
            )
            if part
        )
        findings.append(
            Finding(
                verdict,
                f"{label}: ACRO {check} flagged the cell at {at or 'an unknown position'} of {rel} "
                f"(output {output.uid!r})",
                column=col_label,
                row=row + 1 if row is not None else None,
                threshold=_threshold(check, folder.acro_settings),
            )
        )
    if len(flagged) > limit:
        findings.append(
            Finding(
                verdict,
                f"{label}: ACRO flagged {len(flagged) - limit} more cells",
                threshold=f"max_cell_findings={limit}",
            )
        )
    return findings


def _cell_position(cell: Any) -> tuple[int | None, int | None]:
    if isinstance(cell, list | tuple) and len(cell) == 2 and all(isinstance(x, int) and x >= 0 for x in cell):
        return cell[0], cell[1]
    return None, None


def _threshold(check: str, settings: dict[str, Any] | None) -> str | None:
    if not settings or check not in _CHECK_SETTINGS:
        return None
    parts = [f"{key}={settings[key]}" for key in _CHECK_SETTINGS[check] if key in settings]
    return ", ".join(parts) or None


def _summarise(
    folder: _Folder, config: dict[str, Any], label: str, held: dict[str, HeldFile]
) -> list[Finding]:
    counts: dict[str, int] = {}
    for status in folder.statuses.values():
        counts[status] = counts.get(status, 0) + 1
    tally = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "none"
    findings = [
        Finding(
            Verdict(config["metadata"]),
            f"{label} is ACRO's record of {len(folder.statuses)} outputs "
            f"({tally}; exceptions requested for {folder.exceptions})",
        )
    ]
    for rel, output in sorted(folder.outputs.items()):
        if (folder.root / rel).as_posix() not in held:
            findings.append(
                Finding(
                    Verdict.REVIEW, f"{label}: ACRO lists {rel} (output {output.uid!r}) but it was not held"
                )
            )
    doubt = _settings_doubt(folder, config)
    if doubt:
        findings.append(
            Finding(Verdict.REVIEW, f"{label}: {doubt}: ACRO's passes need review", threshold=doubt)
        )
    return findings


def _settings_doubt(folder: _Folder, config: dict[str, Any]) -> str | None:
    """Why ACRO's passes cannot be trusted as they are, or None."""
    settings = folder.acro_settings
    if settings is None:
        return f"ACRO's {CONFIG} was not held or cannot be read, so the thresholds it used are unknown"
    weaker = []
    for key, minimum in (
        ("safe_threshold", config["min_safe_threshold"]),
        ("safe_dof_threshold", config["min_safe_dof_threshold"]),
    ):
        value = settings.get(key)
        if not isinstance(value, int | float) or isinstance(value, bool) or value < minimum:
            weaker.append(f"{key}={value} (this TRE requires at least {minimum})")
    if weaker:
        return "ACRO ran with " + ", ".join(weaker)
    return None


def _read_folder(root: PurePosixPath, results: HeldFile, own: list[HeldFile]) -> _Folder | None:
    folder = _Folder(root=root)
    try:
        data = _load_json(results)
    except _Malformed as exc:
        folder.problem = str(exc)
        return folder
    if not _looks_like_acro(data):
        return None
    try:
        folder.outputs = _outputs(data)
        records = data["results"]
        folder.statuses = {str(uid): str(record["status"]) for uid, record in records.items()}
        folder.exceptions = sum(1 for record in records.values() if record.get("exception"))
    except _Malformed as exc:
        folder.problem = str(exc)
        return folder
    for file in own:
        rel = _relative(file, root)
        if rel == CONFIG:
            try:
                settings = _load_json(file)
            except _Malformed:
                settings = None
            folder.acro_settings = settings if isinstance(settings, dict) else None
        elif rel.startswith(f"{CHECKSUMS}/") and rel.endswith(".txt") and file.size <= 1024:
            digest = file.path.read_bytes().decode("ascii", "replace").strip().lower()
            if re.fullmatch(r"[0-9a-f]{64}", digest):
                folder.checksums[rel.removeprefix(f"{CHECKSUMS}/").removesuffix(".txt")] = digest
    return folder


def _looks_like_acro(data: Any) -> bool:
    """ACRO's results.json names the tool (recent ACRO) or has version + a results mapping (older)."""
    if not isinstance(data, dict):
        return False
    tool = data.get("tool")
    if isinstance(tool, dict) and str(tool.get("name", "")).upper() == "ACRO":
        return True
    return "version" in data and isinstance(data.get("results"), dict)


def _mapping(value: Any) -> dict[Any, Any]:
    """`value` if the metadata has a mapping there, else an empty one (ACRO omits what is empty)."""
    return value if isinstance(value, dict) else {}


def _outputs(data: dict[str, Any]) -> dict[str, _Output]:
    records = data.get("results")
    if not isinstance(records, dict):
        raise _Malformed("'results' is not a mapping of outputs")
    outputs: dict[str, _Output] = {}
    for uid, record in records.items():
        if not isinstance(record, dict):
            raise _Malformed(f"output {str(uid)[:40]!r} is not a mapping")
        status, files = record.get("status"), record.get("files")
        if not isinstance(status, str) or not isinstance(files, list):
            raise _Malformed(f"output {str(uid)[:40]!r} has no status or no files list")
        comments = record.get("comments") or []
        outcome = _mapping(record.get("outcome"))
        columns = tuple(str(c) for c in outcome)
        first: Any = next(iter(outcome.values()), {})
        rows = tuple(str(r) for r in first) if isinstance(first, dict) else ()
        for entry in files:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise _Malformed(f"output {str(uid)[:40]!r} lists a file without a name")
            cells = _mapping(_mapping(entry.get("sdc")).get("cells"))
            outputs[PurePosixPath(entry["name"]).as_posix()] = _Output(
                uid=str(uid),
                status=status,
                kind=str(record.get("type", "output")),
                summary=_short(str(record.get("summary") or "")),
                exception=str(record.get("exception") or ""),
                comments=tuple(str(c) for c in comments) if isinstance(comments, list) else (),
                cells={str(k): v for k, v in cells.items() if isinstance(v, list)},
                columns=columns,
                rows=rows,
            )
    return outputs


def _load_json(file: HeldFile) -> Any:
    if file.size > _MAX_METADATA_BYTES:
        raise _Malformed(f"it is larger than {_MAX_METADATA_BYTES} bytes")
    try:
        return json.loads(file.path.read_bytes())
    except json.JSONDecodeError as exc:
        raise _Malformed(f"not valid JSON at line {exc.lineno}, column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:
        raise _Malformed(f"not valid JSON: {type(exc).__name__}") from None
    except OSError:
        raise _Malformed("it could not be read") from None


def _locate(file: HeldFile, held: dict[str, HeldFile]) -> tuple[PurePosixPath, HeldFile] | None:
    """The nearest folder above `file` holding a results.json, and that results.json."""
    if file.kind != "output":
        return None
    for parent in PurePosixPath(file.name).parents:
        results = held.get((parent / RESULTS).as_posix())
        if results is not None:
            return parent, results
    return None


def _relative(file: HeldFile, root: PurePosixPath) -> str:
    try:
        return PurePosixPath(file.name).relative_to(root).as_posix()
    except ValueError:
        return ""


def _is_metadata(rel: str) -> bool:
    return rel in (RESULTS, CONFIG) or rel.startswith(f"{CHECKSUMS}/")


def _marked(text: str, markers: list[str]) -> str | None:
    """The marker `text` carries, ignoring case and how words are joined ("-DONT_RELEASE", "dont release")."""
    normal = _normalise(text)
    return next((m for m in markers if _normalise(m) and _normalise(m) in normal), None)


def _normalise(text: str) -> str:
    return " " + re.sub(r"[\s_\-./]+", " ", text).upper().strip() + " "


def _short(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
