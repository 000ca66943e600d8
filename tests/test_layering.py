"""The recorder stands on kmemleak_offline.format only: importing it never loads the analyser
(load, analysis, engine, symbols, reports, diff, cli, commands, perfdata) nor pandas (nor numpy,
pyarrow or pyelftools, which would slow its start-up), and no
import statement in recorder/ or kmemleak_offline/format/ (function-level ones included) names
anything else."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORDER_MODULES = ["recorder.session", "recorder.command", "recorder.spool", "recorder.probes",
                    "recorder.procfs", "recorder.events", "recorder.ring"]
ANALYSER = ["load", "analysis", "engine", "symbols", "reports", "diff", "diff_markdown", "cli", "commands",
            "perfdata", "replay", "malloc", "printfmt", "info", "synthetic"]


def _allowed(module: str, names: list[str]) -> bool:
    if module == "kmemleak_offline":
        return names == ["__version__"]
    return module == "kmemleak_offline.format" or module.startswith("kmemleak_offline.format.")


def _project_imports(path: Path, package: str) -> list[tuple[int, str, list[str]]]:
    """(line, absolute module, imported names) of every project import in one file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([mod] if mod else []))
            out.append((node.lineno, mod, [a.name for a in node.names]))
    return [(ln, m, n) for ln, m, n in out if m.split(".")[0] == "kmemleak_offline"]


def test_importing_the_recorder_loads_no_analyser_module_nor_pandas():
    code = ("import json, sys\n"
            + "".join(f"import {m}\n" for m in RECORDER_MODULES)
            + "print(json.dumps(sorted(sys.modules)))\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    loaded = set(json.loads(res.stdout))
    assert "pandas" not in loaded
    bad = sorted(m for m in loaded
                 if m.startswith("kmemleak_offline.") and m.split(".")[1] in ANALYSER)
    assert bad == []
    assert "kmemleak_offline.format.chunks" in loaded  # the check sees project modules at all
    # start-up: until its events are on, the recorder needs neither numpy nor pyarrow (0.1 CPU s,
    # several times that on a busy box); the converter process imports them later
    assert not {"numpy", "pyarrow", "elftools"} & loaded


def test_recorder_and_format_import_only_the_format_layer():
    bad = []
    for d, package in ((ROOT / "recorder", "recorder"),
                       (ROOT / "kmemleak_offline" / "format", "kmemleak_offline.format")):
        files = sorted(d.glob("*.py"))
        assert files
        for f in files:
            for ln, mod, names in _project_imports(f, package):
                if not _allowed(mod, names):
                    bad.append(f"{f.relative_to(ROOT)}:{ln}: {mod} {names}")
    assert bad == []
