"""Where the CLI writes: standard output for answers, standard error for everything else.

Commands reach these through the module (`_output.console`), so that a test can swap them for a buffer."""

from rich.console import Console

console = Console()
err = Console(stderr=True, soft_wrap=True)  # an error is one line, whatever the terminal's width
