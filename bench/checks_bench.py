"""Throughput and memory of the tabular and identifier disclosure rules on large CSV files.

Part of `make bench` (``python -m bench --only checks``); also runs alone. Generates synthetic
aggregate-style CSV tables (100 MB and 1 GB by default) in a temporary folder, then times, each in a
fresh process so that peak RSS belongs to it alone, each rule (`small_cell`, `record_level`,
`identifiers`) with its default settings and the default `checks.threads`, against the ceiling of a
plain read of the same file: warm (the file in the page cache) against a line-by-line read, and cold
(the file's pages dropped from the cache first with posix_fadvise, as for a file written and
evicted) against a 1 MiB chunked read. Subject and ceiling are interleaved: each rule's run comes
right after the plain read it is compared with, so drifting load on the machine hits both alike. A
third run of each rule under tracemalloc gives the peak of Python's own allocations; Arrow's memory
pool reports its own peak.

    python -m bench.checks_bench [--sizes 100,1000] [--out bench/results/checks.json]
    python -m bench.checks_bench --code ../before --out before.json   # another checkout's rules
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import platform
import random
import resource
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "checks.json"
RULES = {
    "small_cell": "fivesafes_tes.egress.checks.small_cell:SmallCellRule",
    "record_level": "fivesafes_tes.egress.checks.record_level:RecordLevelRule",
    "identifiers": "fivesafes_tes.egress.checks.identifiers:IdentifiersRule",
}
MB = 1_000_000
_TEMPLATE_ROWS = 50_000

REGIONS = [
    "North East",
    "North West",
    "Yorkshire",
    "East Midlands",
    "West Midlands",
    "East",
    "London",
    "South East",
    "South West",
    "Wales",
    "Scotland",
    "Northern Ireland",
]
AGE_BANDS = ["0-17", "18-29", "30-44", "45-64", "65-74", "75+"]
CODES = ["E11", "E10", "I10", "I21", "J45", "C50", "C61", "F32", "N18", "K21"]
WORDS = [
    "admitted",
    "discharged",
    "reviewed",
    "referred",
    "follow",
    "up",
    "clinic",
    "ward",
    "stable",
    "improved",
    "routine",
    "planned",
]


def generate(path: Path, size_bytes: int, seed: int = 7) -> int:
    """A weekly counts table by region, age band, sex and condition, with a free-text note. About
    one row in 100 has a count below 10, and one in 200,000 a note quoting an NHS number or an email
    address, so the rules have findings to make. Returns the rows written."""
    rng = random.Random(seed)
    start = date(2015, 1, 5)
    templates = []
    for i in range(_TEMPLATE_ROWS):
        count = rng.randint(1, 9) if rng.random() < 0.01 else rng.randint(10, 5000)
        note = " ".join(rng.choices(WORDS, k=rng.randint(2, 7)))
        if i % 25_000 == 7:
            note += " NHS 943 476 5919" if i % 50_000 == 7 else " contact a.person@example.org"
        week = start + timedelta(weeks=rng.randint(0, 520))
        templates.append(
            f"{week.isoformat()},{rng.choice(REGIONS)},{rng.choice(AGE_BANDS)},{rng.choice('FM')},"
            f"{rng.choice(CODES)},{count},{count / rng.randint(1000, 90000) * 1000:.3f},{note}\n"
        )
    block = "".join(templates).encode()
    rows = 0
    with path.open("wb") as out:
        out.write(b"week,region,age_band,sex,condition,n_patients,rate_per_1000,note\n")
        written = 0
        while written < size_bytes:
            part = block[: size_bytes - written]
            part = part[: part.rfind(b"\n") + 1]
            if not part:
                break
            out.write(part)
            written += len(part)
            rows += part.count(b"\n")
    return rows


def _plain_chunks(path: Path) -> None:
    with path.open("rb") as stream:
        while stream.read(1 << 20):
            pass


def _plain_lines(path: Path) -> None:
    with path.open("rb") as stream:
        for _ in stream:
            pass


def _evict(path: Path) -> None:
    """Drop the file's pages from the page cache (written back first), so the next read is from disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def held_file(path: Path) -> Any:
    """The held file a rule is given for ``path``: the one place this bench builds one, so that a
    change to ``checks.base.HeldFile`` is adapted here alone."""
    size = path.stat().st_size
    try:
        from fivesafes_tes.egress.held import HeldFile, OutputKey
    except ImportError:  # a checkout from before `egress.held` (a --before run of older rules)
        from fivesafes_tes.egress.checks.base import HeldFile as OldHeldFile

        return OldHeldFile(path, f"/outputs/{path.name}", "output", size, "")
    return HeldFile(OutputKey(f"/outputs/{path.name}"), size, "", local=path)


def _rule_runner(name: str, folder: Path) -> tuple[Callable[[Path], dict[str, Any]], float]:
    """The rule's check as a function of a path, after one call on a small table: imports and
    Arrow's first-call set-up (about a third of a second, once per check process) are not timed."""
    import importlib

    from fivesafes_tes.egress.checks.base import CheckContext

    module, _, cls = RULES[name].partition(":")
    rule = getattr(importlib.import_module(module), cls)()
    # what a check process inherits from its fork server (this checkout's code has it)
    with contextlib.suppress(ImportError):
        importlib.import_module("fivesafes_tes.egress.checks._warm")

    def check(path: Path) -> dict[str, Any]:
        file = held_file(path)
        result = rule.check(file, {}, CheckContext(files=(file,)))
        return {"verdict": result.verdict.value, "findings": len(result.findings)}

    warm = folder / "warm-up.csv"
    warm.write_text("group,n,note\na,12,x\nb,40,y\n")
    started = time.perf_counter()
    check(warm)
    return check, time.perf_counter() - started


def _child(conn: Any, kind: str, path: Path, name: str, trace: bool, cold: bool, code: str | None) -> None:
    if code:
        sys.path.insert(0, code)  # the rules of another checkout, for before/after figures
    extra: dict[str, Any] = {}
    if kind == "rule":
        import pyarrow as pa

        check, extra["first_call_seconds"] = _rule_runner(name, path.parent)
        extra["package"] = str(Path(sys.modules["fivesafes_tes"].__file__ or "").parent.parent)

        def work() -> None:
            extra.update(check(path))
    else:
        work = partial(_plain_chunks if kind == "chunks" else _plain_lines, path)
    if cold:
        _evict(path)
    if trace:
        tracemalloc.start()
    started = time.perf_counter()
    work()
    extra["seconds"] = time.perf_counter() - started
    if trace:
        extra["python_peak_bytes"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    if kind == "rule":
        extra["arrow_peak_bytes"] = pa.default_memory_pool().max_memory()
    extra["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    conn.send(extra)
    conn.close()


def measure(
    kind: str, path: Path, name: str = "", trace: bool = False, cold: bool = False, code: str | None = None
) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: its peak RSS is this run's
    parent, child = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(child, kind, path, name, trace, cold, code))
    process.start()
    child.close()
    try:
        result = parent.recv()
    except EOFError:
        process.join()
        raise RuntimeError(
            f"measuring {kind} {name} on {path.name} failed: its process ended with exit code "
            f"{process.exitcode} before reporting (its traceback is above)"
        ) from None
    process.join()
    return result


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median speed: what a table row shows for a plain read made several times."""
    return sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]


def measure_file(
    path: Path, code: str | None = None, on_step: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Every rule on one file, each run right after the plain read it is compared with."""
    size = path.stat().st_size
    measure("chunks", path)  # warm the page cache
    plain: dict[str, list[dict[str, Any]]] = {"plain_chunks": [], "plain_lines": [], "plain_chunks_cold": []}
    runs: dict[str, dict[str, Any]] = {}
    for name in RULES:
        if on_step:
            on_step(name)
        plain["plain_chunks"].append(measure("chunks", path))
        lines = measure("lines", path)
        warm = measure("rule", path, name, code=code)
        cold_plain = measure("chunks", path, cold=True)
        warm["cold"] = measure("rule", path, name, cold=True, code=code)
        warm["python_peak_bytes"] = measure("rule", path, name, trace=True, code=code)["python_peak_bytes"]
        plain["plain_lines"].append(lines)
        plain["plain_chunks_cold"].append(cold_plain)
        for run_ in (lines, cold_plain, warm, warm["cold"]):
            run_["mb_per_s"] = size / MB / run_["seconds"]
        warm["paired"] = {
            "plain_lines_mb_per_s": lines["mb_per_s"],
            "plain_chunks_cold_mb_per_s": cold_plain["mb_per_s"],
        }
        warm["share_of_lines"] = warm["mb_per_s"] / lines["mb_per_s"]
        warm["cold_share_of_chunks"] = warm["cold"]["mb_per_s"] / cold_plain["mb_per_s"]
        runs[name] = warm
    for run_ in plain["plain_chunks"]:
        run_["mb_per_s"] = size / MB / run_["seconds"]
    chunks = _median(plain["plain_chunks"])
    chunks["cold"] = _median(plain["plain_chunks_cold"])
    for name in RULES:
        runs[name]["share_of_chunks"] = runs[name]["mb_per_s"] / chunks["mb_per_s"]
    return {
        "size_bytes": size,
        "runs": {"plain_chunks": chunks, "plain_lines": _median(plain["plain_lines"]), **runs},
    }


def run(
    sizes_mb: list[int], code: str | None = None, on_step: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """The checks benchmark on a generated file of each size; ``on_step`` hears "<size> MB: <rule>"."""
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "code": code or str(ROOT),
        "sizes_mb": sizes_mb,
        "files": [],
    }
    with tempfile.TemporaryDirectory(prefix="checks-bench-") as folder:
        for size_mb in sizes_mb:
            path = Path(folder) / f"counts-{size_mb}mb.csv"
            rows = generate(path, size_mb * MB)
            step = partial(_announce, on_step, size_mb)
            results["files"].append({"rows": rows, **measure_file(path, code, step)})
            path.unlink()
    return results


def _announce(on_step: Callable[[str], None] | None, size_mb: int, name: str) -> None:
    message = f"{size_mb} MB: {name}"
    if on_step:
        on_step(message)
    else:
        print(f"  {message}", file=sys.stderr, flush=True)


def table(results: dict[str, Any]) -> str:
    header = (
        "file",
        "run",
        "warm MB/s",
        "vs 1MiB",
        "vs lines",
        "cold MB/s",
        "vs cold read",
        "RSS MiB",
        "arrow MiB",
        "py MiB",
        "verdict",
    )
    rows = [header]
    for entry in results["files"]:
        label = f"{entry['size_bytes'] / MB:,.0f} MB"
        for name, run_ in entry["runs"].items():
            cold = run_.get("cold", {})
            cells = [
                f"{run_['mb_per_s']:,.0f}",
                *(f"{run_[key]:.0%}" if key in run_ else "" for key in ("share_of_chunks", "share_of_lines")),
                f"{cold['mb_per_s']:,.0f}" if cold else "",
                f"{run_['cold_share_of_chunks']:.0%}" if "cold_share_of_chunks" in run_ else "",
                *(
                    f"{run_[key] / (1 << 20):,.0f}" if key in run_ else ""
                    for key in ("peak_rss_bytes", "arrow_peak_bytes", "python_peak_bytes")
                ),
                run_.get("verdict", ""),
            ]
            rows.append((label, name, *cells))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i == 1 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000", help="file sizes in MB, comma-separated")
    parser.add_argument("--out", type=Path, default=OUT, help="where the JSON results go")
    parser.add_argument("--code", help="a checkout whose rules to measure instead (before/after figures)")
    args = parser.parse_args()
    code = str(Path(args.code).resolve()) if args.code else None
    results = run([int(s) for s in args.sizes.split(",")], code)
    print(table(results))
    from bench.common import write_results  # here, not at the top: spawned children import this module

    write_results(results, args.out, ROOT)


if __name__ == "__main__":
    main()
