"""`python -m recorder record ...`: the record command on its own (tests, machines without the CLI)."""

from __future__ import annotations

import sys

import typer

from recorder.command import record, record_fast

app = typer.Typer(add_completion=False, no_args_is_help=True)
app.command("record", context_settings={"allow_extra_args": True,
                                        "ignore_unknown_options": False})(record)


@app.callback()
def _main() -> None:
    """kmemleak-offline recorder."""


if __name__ == "__main__":
    args = sys.argv[1:]
    try:
        if args[:1] == ["record"] and record_fast(args[1:]):  # start-up: no Typer machinery
            sys.exit(0)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    app()
