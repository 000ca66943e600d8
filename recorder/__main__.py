"""`python -m recorder record ...`: the record command on its own (tests, machines without the CLI)."""

from __future__ import annotations

import typer

from recorder.command import record

app = typer.Typer(add_completion=False, no_args_is_help=True)
app.command("record", context_settings={"allow_extra_args": True,
                                        "ignore_unknown_options": False})(record)


@app.callback()
def _main() -> None:
    """kmemleak-offline recorder."""


if __name__ == "__main__":
    app()
