"""The command's own surface: --version, help that is not cut off, plain metavars."""

from __future__ import annotations

import subprocess
import sys

from kmemleak_offline import __version__
from kmemleak_offline.cli import main


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"kmemleak-offline {__version__}\n"


def test_top_level_help_lists_every_command_uncut():
    out = subprocess.run([sys.executable, "-c", ("import sys; from kmemleak_offline.cli import main;"
                          "sys.exit(main(['--help']))")], capture_output=True, text=True,
                         env={"COLUMNS": "80", "PATH": "/usr/bin:/bin"}, check=True).stdout
    listed = out.split("Commands:")[1].strip().splitlines()
    assert [line.split()[0] for line in listed] == ["analyze", "diff", "fleet", "info", "record", "import",
                                                   "convert"]
    assert not any(line.rstrip().endswith("...") for line in listed), listed


def test_usage_names_arguments_plainly(capsys):
    main(["analyze", "--help"])
    assert "Usage: kmemleak-offline analyze [OPTIONS] RECORDING\n" in capsys.readouterr().out
    main(["diff", "--help"])
    assert "[OPTIONS] BASE NEW\n" in capsys.readouterr().out
    main(["fleet", "--help"])
    assert "Usage: kmemleak-offline fleet [OPTIONS] REC...\n" in capsys.readouterr().out
