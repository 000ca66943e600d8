"""Fleet arguments -> recordings: local files, parts folders, directories, globs, fsspec URLs.

An argument that names nothing (a missing path, a glob without a match, a directory without
recordings) is a mistake on the command line, found before any work: FleetError (one line, exit
2). Whether a named file is a readable recording is found out by the worker that analyses it.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

PARTS_SUFFIX = ".parts"
PART_GLOB = "part-*.parquet"


class FleetError(ValueError):
    """Bad fleet input or a missing optional package: one line for the user."""


@dataclass(frozen=True)
class Source:
    """One recording: `label` names it in reports (the path as found, or the URL); `path` is what
    the worker opens: an absolute local path, or a URL fsspec can read."""

    label: str
    path: str
    remote: bool = False


def is_url(arg: str) -> bool:
    return "://" in arg and not arg.startswith("file://")


def _has_magic(s: str) -> bool:
    return glob.has_magic(s)


def _is_parts_dir(p: Path) -> bool:
    return p.name.endswith(PARTS_SUFFIX) or any(p.glob(PART_GLOB))


def _local(arg: str) -> list[Source]:
    path = arg.removeprefix("file://")
    if _has_magic(path):
        found = sorted(glob.glob(path, recursive=True))
        if not found:
            raise FleetError(f"{arg}: no file matches")
        out: list[Source] = []
        for f in found:
            p = Path(f)
            if p.is_dir() and not _is_parts_dir(p):
                continue  # a glob's directories are not recordings (name them to look inside)
            out.append(Source(f, os.path.abspath(f)))
        if not out:
            raise FleetError(f"{arg}: matches only directories")
        return out
    p = Path(path)
    if not p.exists():
        raise FleetError(f"{arg}: no such file or directory")
    if p.is_dir() and not _is_parts_dir(p):
        inside = sorted([*p.glob("*.parquet"), *(d for d in p.glob(f"*{PARTS_SUFFIX}") if d.is_dir())])
        inside = [f for f in inside if f.is_file() or f.is_dir()]
        if not inside:
            raise FleetError(f"{arg}: no *.parquet file or *.parts folder in this directory")
        return [Source(str(f), os.path.abspath(f)) for f in inside]
    return [Source(path, os.path.abspath(path))]


def _remote(arg: str) -> list[Source]:
    try:
        import fsspec
    except ImportError as exc:
        raise FleetError(f"{arg}: URLs need fsspec: pip install 'kmemleak-offline[fleet]' ({exc})") from None
    try:
        fs, path = fsspec.core.url_to_fs(arg)
    except (ImportError, ValueError) as exc:  # unknown protocol, or its package (s3fs...) missing
        raise FleetError(f"{arg}: {exc}") from None
    proto = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol

    def url(p: str) -> str:
        return fs.unstrip_protocol(p) if hasattr(fs, "unstrip_protocol") else f"{proto}://{p}"

    try:
        if _has_magic(path):
            found = [p for p in sorted(fs.glob(path)) if not fs.isdir(p) or p.endswith(PARTS_SUFFIX)]
            if not found:
                raise FleetError(f"{arg}: no file matches")
        elif not fs.exists(path):
            raise FleetError(f"{arg}: no such file or directory")
        elif fs.isdir(path) and not path.rstrip("/").endswith(PARTS_SUFFIX):
            found = sorted(p for p in fs.ls(path, detail=False)
                           if p.endswith(".parquet") or p.rstrip("/").endswith(PARTS_SUFFIX))
            if not found:
                raise FleetError(f"{arg}: no *.parquet file or *.parts folder in this directory")
        else:
            found = [path]
    except FleetError:
        raise
    except Exception as exc:  # noqa: BLE001 - credentials, network, permissions: the fs's words
        raise FleetError(f"{arg}: {type(exc).__name__}: {exc}") from None
    return [Source(url(p), url(p), remote=True) for p in found]


def expand(args: list[str]) -> list[Source]:
    """Every recording the arguments name, in argument order (each argument's matches sorted),
    each once."""
    out: list[Source] = []
    seen: set[str] = set()
    for arg in args:
        for s in _remote(arg) if is_url(arg) else _local(arg):
            if s.path not in seen:
                seen.add(s.path)
                out.append(s)
    return out
