"""Command-line errors on one line: `PROG: error: MESSAGE`, exit code 2, for every option or usage error.

click prints three lines for a bad option (Usage / Try / Error); the README promises one. Any click command
can use this: `@click.command(cls=OneLineErrors)`.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from collections.abc import Sequence


def fail(prog: str, message: str, code: int = 2) -> None:
    """Print `prog: error: message` on stderr (as one line) and exit."""
    sys.stderr.write(f"{prog}: error: {' '.join(str(message).split())}\n")
    sys.stderr.flush()
    sys.exit(code)


class OneLineErrors(click.Command):
    """A click command whose usage errors are one line on stderr and exit code 2."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        prog = prog_name or self.name or "command"
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as error:  # bad option, missing argument, bad value, ...
            fail(prog, error.format_message())
        except click.exceptions.Abort:  # Ctrl-C or EOF at a prompt
            sys.stderr.write("\n")
            sys.exit(130)
        except click.ClickException as error:
            fail(prog, error.format_message(), error.exit_code)
        # without standalone mode click returns the exit code of --help/--version (0) instead of exiting
        sys.exit(result if isinstance(result, int) else 0)
