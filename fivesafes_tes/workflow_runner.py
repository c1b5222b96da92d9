#!/usr/bin/python3
"""`fivesafes-workflow`: run one whole workflow inside one sandboxed container.

This file is copied into the runner image (`fivesafes_tes.devimages.RUNNER_IMAGE`) and runs there as
the only executor of a workflow's TES task, under the image's own python3: standard library only.
The engine executes every step itself, in this container, with no containers of its own: a TRE's
sandbox gives a task no network, no engine socket and no file system shared with anything else, so
this is the one way a CWL or Snakemake workflow can run inside a TRE whole.

Every step works under /tmp/workflow, on the sandbox's tmpfs: intermediates die with the container.
Only the final outputs are put in /outputs, the one directory the task declares as an output, so only
they are held in the TRE's airlock and reviewed; nothing else the run wrote can leave.
"""

from __future__ import annotations

import argparse
import os
import posixpath
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

OUTPUTS = Path("/outputs")
WORK = Path("/tmp/workflow")


def cwl_command(workflow: str, job: str | None, outputs: Path, work: Path) -> list[str]:
    """cwltool running every tool as a local process; its final outputs land in `outputs`."""
    return [
        "cwltool",
        "--no-container",  # the sandbox is the container; a task cannot start others
        "--skip-schemas",  # $schemas are fetched over a network a task does not have
        "--disable-color",
        "--outdir",
        str(outputs),
        "--tmpdir-prefix",
        f"{work}/tmp/",
        "--tmp-outdir-prefix",
        f"{work}/steps/",
        workflow,
        *([job] if job else []),
    ]


def snakemake_command(
    snakefile: str, targets: Sequence[str], cores: int, config: Sequence[str], work: Path
) -> list[str]:
    """Snakemake executing every job locally in `work`, building exactly `targets`."""
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        snakefile,
        "--directory",
        str(work / "run"),
        "--cores",
        str(cores),
        "--nocolor",
    ]
    if config:
        command += ["--config", *config]
    return [*command, "--", *targets]


def safe_target(target: str) -> str:
    """A target as a relative path inside the work directory; ValueError says what to change."""
    normal = posixpath.normpath(target)
    if target.startswith("/") or normal == "." or normal.split("/")[0] == "..":
        raise ValueError(
            f"output {target!r} must be a path relative to the workflow's working directory, "
            "without '..' (for example results/counts.csv)"
        )
    return normal


def publish(targets: Sequence[str], run_dir: Path, outputs: Path) -> list[str]:
    """Copy the named final outputs from the run into `outputs`; return the ones that are missing."""
    missing = []
    for target in targets:
        source, dest = run_dir / target, outputs / target
        if source.is_symlink() or not source.exists():
            missing.append(target)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, dest, symlinks=False, dirs_exist_ok=True)
        else:
            shutil.copyfile(source, dest)
    return missing


def main(argv: Sequence[str] | None = None, *, outputs: Path = OUTPUTS, work: Path = WORK) -> int:
    parser = argparse.ArgumentParser(prog="fivesafes-workflow", description=__doc__.split("\n\n")[0])
    engines = parser.add_subparsers(dest="engine", required=True)
    cwl = engines.add_parser("cwl", help="run a CWL workflow with cwltool")
    cwl.add_argument("workflow")
    cwl.add_argument("job", nargs="?")
    smk = engines.add_parser("snakemake", help="run a Snakefile with Snakemake")
    smk.add_argument("snakefile")
    smk.add_argument("--output", action="append", required=True, help="a final output to publish")
    smk.add_argument("--cores", type=int, default=1)
    smk.add_argument("--config", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    for sub in ("tmp", "steps", "run", "cache"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "XDG_CACHE_HOME": str(work / "cache")}
    outputs.mkdir(parents=True, exist_ok=True)
    if args.engine == "cwl":
        return subprocess.call(cwl_command(args.workflow, args.job, outputs, work), cwd=work / "run", env=env)
    try:
        targets = [safe_target(t) for t in args.output]
    except ValueError as exc:
        print(f"fivesafes-workflow: {exc}", file=sys.stderr)
        return 2
    code = subprocess.call(
        snakemake_command(args.snakefile, targets, args.cores, args.config, work), cwd=work, env=env
    )
    if code != 0:
        return code
    missing = publish(targets, work / "run", outputs)
    if missing:
        print(f"fivesafes-workflow: the workflow did not make {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
