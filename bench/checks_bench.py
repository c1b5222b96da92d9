"""Throughput and memory of the tabular and identifier disclosure rules on large CSV files.

Generates synthetic aggregate-style CSV tables (100 MB and 1 GB by default) in a temporary folder,
then times, each in a fresh process so that peak RSS belongs to it alone: a plain streaming read
in 1 MiB chunks, a plain line-by-line read, and each rule (`small_cell`, `record_level`,
`identifiers`) with its default settings and the default `checks.threads`. Each is timed twice:
warm (the file in the page cache) and cold (the file's pages dropped from the cache first with
posix_fadvise, so it comes from the disk as a file just written and evicted would). A rule's figure
is given as a share of the plain reads: warm against warm, cold against cold. A second warm run of
each rule under tracemalloc gives the peak of Python's own allocations; Arrow's memory pool reports
its own peak.

    python -m bench.checks_bench [--sizes 100,1000] [--out bench/results/checks.json]
    python -m bench.checks_bench --code ../before --out before.json   # another checkout's rules
"""

from __future__ import annotations

import argparse
import json
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

REGIONS = ["North East", "North West", "Yorkshire", "East Midlands", "West Midlands", "East", "London",
           "South East", "South West", "Wales", "Scotland", "Northern Ireland"]  # fmt: skip
AGE_BANDS = ["0-17", "18-29", "30-44", "45-64", "65-74", "75+"]
CODES = ["E11", "E10", "I10", "I21", "J45", "C50", "C61", "F32", "N18", "K21"]
WORDS = ["admitted", "discharged", "reviewed", "referred", "follow", "up", "clinic", "ward", "stable", "improved",
         "routine", "planned"]  # fmt: skip


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


def _rule_runner(name: str, folder: Path) -> tuple[Callable[[Path], dict[str, Any]], float]:
    """The rule's check as a function of a path, after one call on a small table: imports and
    Arrow's first-call set-up (about a third of a second, once per check process) are not timed."""
    import importlib

    from fivesafes_tes.egress.checks.base import CheckContext, HeldFile

    module, _, cls = RULES[name].partition(":")
    rule = getattr(importlib.import_module(module), cls)()
    try:  # what a check process inherits from its fork server (this checkout's code has it)
        importlib.import_module("fivesafes_tes.egress.checks._warm")
    except ImportError:
        pass

    def check(path: Path) -> dict[str, Any]:
        file = HeldFile(path, f"/outputs/{path.name}", "output", path.stat().st_size, "")
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
    result = parent.recv()
    process.join()
    return result


def run(sizes_mb: list[int], code: str | None = None) -> dict[str, Any]:
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "code": code or str(ROOT),
        "files": [],
    }
    with tempfile.TemporaryDirectory(prefix="checks-bench-") as folder:
        for size_mb in sizes_mb:
            path = Path(folder) / f"counts-{size_mb}mb.csv"
            rows = generate(path, size_mb * MB)
            size = path.stat().st_size
            measure("chunks", path)  # warm the page cache
            entry: dict[str, Any] = {"size_bytes": size, "rows": rows, "runs": {}}
            for kind in ("chunks", "lines"):
                entry["runs"][f"plain_{kind}"] = measure(kind, path)
            entry["runs"]["plain_chunks"]["cold"] = measure("chunks", path, cold=True)
            for name in RULES:
                print(f"  {size_mb} MB: {name}", file=sys.stderr, flush=True)
                run_ = measure("rule", path, name, code=code)
                run_["python_peak_bytes"] = measure("rule", path, name, trace=True, code=code)[
                    "python_peak_bytes"
                ]
                run_["cold"] = measure("rule", path, name, cold=True, code=code)
                entry["runs"][name] = run_
            for run_ in entry["runs"].values():
                run_["mb_per_s"] = size / MB / run_["seconds"]
                if "cold" in run_:
                    run_["cold"]["mb_per_s"] = size / MB / run_["cold"]["seconds"]
            plain = entry["runs"]
            for name in RULES:
                run_ = entry["runs"][name]
                run_["share_of_chunks"] = run_["mb_per_s"] / plain["plain_chunks"]["mb_per_s"]
                run_["share_of_lines"] = run_["mb_per_s"] / plain["plain_lines"]["mb_per_s"]
                run_["cold_share_of_chunks"] = (
                    run_["cold"]["mb_per_s"] / plain["plain_chunks"]["cold"]["mb_per_s"]
                )
            results["files"].append(entry)
            path.unlink()
    return results


def table(results: dict[str, Any]) -> str:
    header = (
        "file", "run", "warm MB/s", "vs 1MiB", "vs lines", "cold MB/s", "vs cold read",
        "RSS MiB", "arrow MiB", "py MiB", "verdict",
    )  # fmt: skip
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
        "  ".join(cell.ljust(w) if i == 1 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
