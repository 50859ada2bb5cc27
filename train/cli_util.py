"""What edge-train and edge-export share on the command line: one-line errors (never click's Usage/Try/Error
block, never a traceback) and a quiet Ctrl-C. Imports click only, so that it is ready before torch loads."""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import click


def fail(prog: str, message: str, code: int = 2) -> NoReturn:
    """`PROG: error: MESSAGE` as one line on stderr, then exit with code (2: usage or unusable input)."""
    click.echo(f"{prog}: error: {' '.join(str(message).split())}", err=True)
    sys.exit(code)


class OneLineCommand(click.Command):
    """A click command whose option errors are one line and exit 2, as the README promises, and whose
    Ctrl-C, wherever the command itself does not handle it, is one line and exit 130. Give it the program's
    name: @click.command(cls=OneLineCommand, name="edge-train")."""

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        prog = self.name or "error"
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as error:
            fail(prog, f"{error.format_message()} (see {prog} --help)", error.exit_code)
        except click.ClickException as error:
            fail(prog, error.format_message(), error.exit_code)
        except click.Abort:  # Ctrl-C (or EOF) that reached click
            click.echo(f"{prog}: interrupted", err=True)
            sys.exit(130)
        if not standalone_mode:
            return result
        sys.exit(result if isinstance(result, int) else 0)  # --help returns 0; a finished command None
