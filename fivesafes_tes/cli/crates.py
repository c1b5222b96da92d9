"""`fivesafes-tes crate ...`: make a Five Safes request crate (5s-crate 0.4) to submit with
`fivesafes-tes submit request.zip` (see ro-crates/README.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from fivesafes_tes.cli import _output

app = typer.Typer(
    help="Five Safes request crates: scaffold one, zip one for submission.", no_args_is_help=True
)


@app.command("new")
def new(
    out: Annotated[
        Path,
        typer.Option(
            help="Where to write it: request.zip (a BagIt zip to submit), or a new folder (the bag)."
        ),
    ],
    project: Annotated[
        str, typer.Option(help="The project the request is for (the crate's sourceOrganization).")
    ],
    tes: Annotated[Path | None, typer.Option(help="A TES task JSON file: the task runs as given.")] = None,
    cwl: Annotated[
        Path | None, typer.Option(help="A CWL workflow (*.cwl), run whole inside each TRE.")
    ] = None,
    job: Annotated[
        Path | None, typer.Option(help="CWL: the job file; its values become the crate's inputs.")
    ] = None,
    root: Annotated[
        Path | None, typer.Option(help="CWL: the folder sent with the workflow (default: its own folder).")
    ] = None,
    name: Annotated[str | None, typer.Option(help="A title for the request.")] = None,
    person_name: Annotated[str | None, typer.Option(help="Your name, as the crate's agent shows it.")] = None,
    orcid: Annotated[str | None, typer.Option(help="Your ORCID, https://orcid.org/...")] = None,
    license: Annotated[str | None, typer.Option(help="The crate's licence, e.g. an SPDX URL.")] = None,
) -> None:
    """Scaffold a request crate from a TES task file (--tes) or a CWL workflow (--cwl); print where it is.

    The gateway names you as the crate's agent whatever it says, and accepts only a project you are in."""
    from fivesafes_tes.crates import scaffold

    if (tes is None) == (cwl is None):
        _output.err.print("[red]Give one of --tes TASK.json or --cwl WORKFLOW.cwl.[/]")
        raise typer.Exit(2)
    try:
        if tes is not None:
            if job is not None or root is not None:
                raise scaffold.ScaffoldError(
                    "--job and --root are for --cwl; a TES task carries its own inputs"
                )
            source = scaffold.from_tes(tes)
        else:
            assert cwl is not None
            source = scaffold.from_cwl(cwl, job, root)
        crate = scaffold.request_crate(
            source,
            project=project,
            name=name,
            requester=scaffold.Requester(name=person_name, orcid=orcid),
            license=license,
        )
        if out.suffix == ".zip":
            with out.open("wb") as handle:
                scaffold.write_zip(crate, handle)
        else:
            scaffold.write_directory(crate, out)
    except (scaffold.ScaffoldError, OSError) as exc:
        _output.err.print(f"[red]Cannot make this crate:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    _output.err.print(f"request crate {crate.bag_info['External-Identifier']} for project {project}")
    typer.echo(str(out))


@app.command("zip")
def zip_(
    folder: Annotated[
        Path,
        typer.Argument(
            help="A bag folder (e.g. ro-crates/tes-task), or an RO-Crate folder (its "
            "ro-crate-metadata.json at the top)."
        ),
    ],
    out: Annotated[Path, typer.Option(help="The zip to write, e.g. request.zip.")],
) -> None:
    """Zip a request crate for `fivesafes-tes submit`, under a new External-Identifier (each request
    has its own): a bag folder is checked against its own manifests first; an RO-Crate folder is
    bagged (BagIt 1.0, sha512 and sha256 manifests)."""
    from fivesafes_tes.crates import scaffold

    if not (folder / "bagit.txt").is_file() and not (folder / scaffold.METADATA).is_file():
        _output.err.print(
            f"[red]{escape(str(folder))} is neither a bag folder (bagit.txt) nor an RO-Crate folder "
            f"({scaffold.METADATA})[/]"
        )
        raise typer.Exit(2)
    try:
        with out.open("wb") as handle:
            if (folder / "bagit.txt").is_file():
                identifier = scaffold.zip_directory(folder, handle)
            else:
                identifier = scaffold.bag_crate_folder(folder, handle)
    except (scaffold.ScaffoldError, OSError) as exc:
        out.unlink(missing_ok=True)
        _output.err.print(f"[red]Cannot zip this crate:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    _output.err.print(f"request crate {identifier}")
    typer.echo(str(out))
