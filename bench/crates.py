"""Intake of BagIt-zipped crates (`fivesafes_tes/crates/bagit.py`): how fast a large crate is verified
against `sha512sum` on its payload file, how much memory that takes, and how fast hostile zips are
refused, with nothing written.

Part of `make bench` (``python -m bench --only crates``); also runs alone:

    python -m bench.crates [--mb 1024] [--rounds 3] [--out bench/results/crates.json]

The crates are made in a temporary folder with `write_bag` (the gateway's own writer): one payload
file of random bytes stored uncompressed (as a zip tool stores data that does not compress), and for
comparison a CSV table a quarter of that size, deflated, and a small stored crate for memory. Each
intake (`open_bag`: the central directory judged, the tag files read, then one pass over the whole
zip hashing every member with SHA-512 and SHA-256 and the zip itself with SHA-512; once more with
the zip's SHA-512 given, as when the gateway hashed the upload while spooling it) runs in a fresh
process, right after `sha512sum` on the payload file, in alternating order over the rounds; files
are in the page cache. Peak memory is the process's high-water mark (VmHWM, reset before the
intake) above its RSS before it. Refusals run in fresh processes under a Python audit hook that
records every file opened for writing, created, renamed or removed, in an empty working folder
that is also TMPDIR.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "crates.json"
MiB = 1 << 20
ENTRIES = 60_000
METADATA = json.dumps(
    {
        "@context": "https://w3id.org/ro/crate/1.2/context",
        "@graph": [
            {"@id": "ro-crate-metadata.json", "@type": "CreativeWork", "about": {"@id": "./"}},
            {"@id": "./", "@type": "Dataset", "name": "bench crate"},
        ],
    }
).encode()


# --- making the crates -----------------------------------------------------------------------


def _random_file(path: Path, size: int) -> None:
    with path.open("wb") as out:
        for start in range(0, size, MiB):
            out.write(os.urandom(min(MiB, size - start)))


def _csv_file(path: Path, size: int) -> None:
    from bench.checks_bench import generate

    generate(path, size)


def _zeros(size: int) -> IO[bytes]:
    """A stream of ``size`` zero bytes, made a chunk at a time."""

    class Zeros(io.RawIOBase):
        left = size

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            n = min(len(buffer), self.left)
            buffer[:n] = bytes(n)
            self.left -= n
            return n

    return io.BufferedReader(Zeros(), MiB)


def make_crate(path: Path, files: dict[str, Callable[[], IO[bytes]]], compression: int) -> None:
    from fivesafes_tes.crates.bagit import BagEntry, write_bag

    entries = [BagEntry("ro-crate-metadata.json", lambda: io.BytesIO(METADATA))]
    entries += [BagEntry(name, opener) for name, opener in files.items()]
    with path.open("wb") as out:
        write_bag(out, "bench-crate", entries, {}, compression=compression)


def _opener(path: Path) -> Callable[[], IO[bytes]]:
    return lambda: path.open("rb")


# --- measuring, each in a fresh process ------------------------------------------------------


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _writes_watch() -> list[Any]:
    """Every file opened for writing, created, renamed or removed from now on, in this process."""
    seen: list[Any] = []
    flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    events = {"os.mkdir", "os.rename", "os.remove", "os.symlink", "os.link", "os.truncate", "shutil.copyfile"}

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "open":
            mode, flag = args[1], args[2] or 0
            if (isinstance(mode, str) and set(mode) & set("wax+")) or flag & flags:
                seen.append([event, str(args[0])])
        elif event in events:
            seen.append([event, *map(str, args)])

    sys.addaudithook(hook)
    return seen


def _child(conn: Any, kind: str, path: str, known: str | None) -> None:
    from fivesafes_tes.crates.bagit import BagRefused, open_bag

    result: dict[str, Any] = {}
    if kind == "intake":
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the RSS now
        rss = _status("VmRSS")
        cpu = time.process_time()
        started = time.perf_counter()
        with open_bag(Path(path), zip_sha512=known) as bag:
            result["seconds"] = time.perf_counter() - started
            result["payload_bytes"] = sum(f.size for f in bag.payload.values())
        result["cpu_s"] = time.process_time() - cpu
        result["rss_growth_bytes"] = _status("VmHWM") - rss
    else:
        with tempfile.TemporaryDirectory(prefix="refusal-") as folder:
            os.chdir(folder)
            os.environ["TMPDIR"] = folder
            tempfile.tempdir = folder
            writes = _writes_watch()
            started = time.perf_counter()
            try:
                with open_bag(Path(path)):
                    pass
            except BagRefused as refused:
                result["seconds"] = time.perf_counter() - started
                result["message"] = str(refused)
            else:
                result["seconds"] = time.perf_counter() - started
                result["message"] = None
            result["writes"] = [*writes, *(["left in the folder", p.name] for p in Path(folder).iterdir())]
            os.chdir("/")
    conn.send(result)
    conn.close()


def measure(kind: str, path: Path, known: str | None = None) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: its memory is this run's
    parent, child = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(child, kind, str(path), known))
    process.start()
    child.close()
    try:
        result: dict[str, Any] = parent.recv()
        return result
    finally:
        process.join()


def _sha512(path: Path) -> str:
    digest = hashlib.sha512()
    with path.open("rb") as stream:
        while chunk := stream.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def sha512sum(path: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["sha512sum", str(path)], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def _warm(*paths: Path) -> None:
    for path in paths:
        with path.open("rb") as stream:
            while stream.read(8 * MiB):
                pass


def verify(
    crate: Path, payload: Path, rounds: int, label: str, compression: str, known: str | None = None
) -> dict[str, Any]:
    """Intake of ``crate`` against `sha512sum` of ``payload``, alternating over ``rounds``; with
    ``known``, the zip's SHA-512 is given to `open_bag` as the gateway's spooling would."""
    _warm(crate, payload)
    runs = []
    for r in range(rounds):
        if r % 2 == 0:
            plain = sha512sum(payload)
            intake = measure("intake", crate, known)
        else:
            intake = measure("intake", crate, known)
            plain = sha512sum(payload)
        runs.append({"sha512sum_s": plain, **intake})
    size = payload.stat().st_size
    plain_s = statistics.median(r["sha512sum_s"] for r in runs)
    intake_s = statistics.median(r["seconds"] for r in runs)
    return {
        "crate": label,
        "compression": compression,
        "payload_bytes": size,
        "zip_bytes": crate.stat().st_size,
        "runs": runs,
        "sha512sum_mb_per_s": size / MiB / plain_s,
        "intake_mb_per_s": size / MiB / intake_s,
        "share": plain_s / intake_s,
        "rss_growth_bytes": max(r["rss_growth_bytes"] for r in runs),
        "cpu_s": statistics.median(r["cpu_s"] for r in runs),
        "seconds": intake_s,
    }


def refuse(crate: Path, label: str, what: str) -> dict[str, Any]:
    runs = [measure("refusal", crate) for _ in range(3)]
    return {
        "case": label,
        "what": what,
        "zip_bytes": crate.stat().st_size,
        "seconds": max(r["seconds"] for r in runs),
        "runs_s": [r["seconds"] for r in runs],
        "message": runs[0]["message"],
        "writes": [w for r in runs for w in r["writes"]],
    }


# --- the benchmark -----------------------------------------------------------------------------


@contextlib.contextmanager
def _folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="crates-bench-") as folder:
        yield Path(folder)


def run(size_mb: int, rounds: int = 3, on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every crate measurement at a payload of ``size_mb`` MiB; ``on_step`` hears what is next."""
    step = on_step or (lambda what: print(f"  {what}", file=sys.stderr, flush=True))
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "size_mb": size_mb,
        "rounds": rounds,
        "verify": [],
        "refusals": [],
    }
    with _folder() as folder:
        small_mb = max(1, size_mb // 16)
        cases = [
            ("stored", size_mb, _random_file, zipfile.ZIP_STORED, "random bytes, stored"),
            ("deflated", max(1, size_mb // 4), _csv_file, zipfile.ZIP_DEFLATED, "CSV table, deflated"),
            ("small", small_mb, _random_file, zipfile.ZIP_STORED, "random bytes, stored"),
        ]
        for label, mb, fill, compression, what in cases:
            step(f"making the {mb:,} MiB {label} crate")
            payload = folder / f"{label}.payload"
            fill(payload, mb * MiB)
            crate = folder / f"{label}.zip"
            make_crate(
                crate, {"payload.bin" if label != "deflated" else "table.csv": _opener(payload)}, compression
            )
            step(f"verifying the {mb:,} MiB {label} crate ({rounds} rounds)")
            results["verify"].append(verify(crate, payload, rounds, label, what))
            if label == "stored":
                step(f"verifying the {mb:,} MiB {label} crate, its SHA-512 given ({rounds} rounds)")
                known = _sha512(crate)
                what += ", zip SHA-512 given"
                results["verify"].append(verify(crate, payload, rounds, "stored, hash given", what, known))
            payload.unlink()
            crate.unlink()

        bomb_mb = max(size_mb, 64)
        step(f"making a zip bomb ({bomb_mb:,} MiB of zeros)")
        bomb = folder / "bomb.zip"
        make_crate(bomb, {"zeros.csv": lambda: _zeros(bomb_mb * MiB)}, zipfile.ZIP_DEFLATED)
        step("refusing the zip bomb")
        results["refusals"].append(
            refuse(bomb, "zip bomb", f"a valid bag but for one member: {bomb_mb:,} MiB of zeros, deflated")
        )
        step(f"making a crate of {ENTRIES:,} files")
        many = folder / "many.zip"
        files = {f"many/{n:05}.txt": (lambda n=n: io.BytesIO(b"%05d\n" % n)) for n in range(ENTRIES)}
        make_crate(many, files, zipfile.ZIP_DEFLATED)
        step(f"refusing the crate of {ENTRIES:,} files")
        results["refusals"].append(
            refuse(many, f"{ENTRIES:,} entries", f"a valid bag of {ENTRIES:,} small payload files")
        )
    return results


def table(results: dict[str, Any]) -> str:
    rows = [("crate", "payload MiB", "zip MiB", "intake MiB/s", "sha512sum MiB/s", "share", "RSS growth MiB")]
    for v in results["verify"]:
        rows.append(
            (
                f"{v['crate']} ({v['compression']})",
                f"{v['payload_bytes'] / MiB:,.0f}",
                f"{v['zip_bytes'] / MiB:,.0f}",
                f"{v['intake_mb_per_s']:,.0f}",
                f"{v['sha512sum_mb_per_s']:,.0f}",
                f"{v['share']:.0%}",
                f"{v['rss_growth_bytes'] / MiB:,.1f}",
            )
        )
    for r in results["refusals"]:
        refused = f"refused in {r['seconds'] * 1000:,.0f} ms"
        rows.append((r["case"], "", f"{r['zip_bytes'] / MiB:,.1f}", refused,
                     f"writes: {len(r['writes'])}", "", ""))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--mb", type=int, default=1024, help="payload of the large crate in MiB (default 1024)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="intake runs per crate (default 3)")
    parser.add_argument("--out", type=Path, default=OUT, help="where the JSON results go")
    args = parser.parse_args()
    results = run(args.mb, args.rounds)
    print(table(results))
    from bench.common import write_results  # here, not at the top: spawned children import this module

    write_results(results, args.out, ROOT)


if __name__ == "__main__":
    main()
