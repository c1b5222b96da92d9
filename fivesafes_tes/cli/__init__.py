"""`fivesafes-tes`: serve the gateway, issue development tokens, and talk TES from a shell.

One module per group of commands; this one puts them together under one `app`."""

import typer

from fivesafes_tes.cli import admin, crates, dev, filer, images, operate, review, tasks, tre

app = typer.Typer(help="Five Safes TES: a GA4GH TES 1.1 gateway for federated TREs.", no_args_is_help=True)
app.add_typer(operate.app)
app.add_typer(tasks.app)
app.add_typer(images.app)
app.add_typer(dev.app)
app.add_typer(tre.app, name="tre")
app.add_typer(review.app, name="review")
app.add_typer(admin.app, name="admin")
app.add_typer(crates.app, name="crate")
app.add_typer(filer.app, name="filer")

__all__ = ["app", "main"]


def main() -> None:
    app()
