"""`kmemleak-offline convert`, and the transparent conversion (cached) of `analyze`/`info`/`diff`.

A raw recording (`record --defer-convert`, or the parts folder a killed recorder left) holds ring
chunks; every analysis needs event rows. `convert` turns it into a converted recording in place;
the other commands convert it once into a cache file and reuse that while the source is unchanged:
beside the recording (`NAME.converted.parquet`) when its folder is writable, else under
`$XDG_CACHE_HOME/kmemleak-offline/` (default `~/.cache`).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import fail

CACHE_KEY = "converted_from"  # metadata of a cache file: the source it was converted from


def _source_id(rec) -> dict[str, Any]:
    """What identifies the bytes of a recording: its path and each file's size and mtime."""
    files = [[f.name, st.st_size, st.st_mtime_ns] for f in rec.files for st in [f.stat()]]
    return {"path": str(Path(rec.path).resolve()), "files": files}


def _stem(rec) -> str:
    name = Path(rec.path).name
    for suffix in (".parts", ".parquet"):
        name = name.removesuffix(suffix)
    return name


def cache_paths(rec) -> list[Path]:
    """Where a cache file may be, in order: beside the recording when its folder is writable, and
    under $XDG_CACHE_HOME (also the fallback when the disk beside it is full)."""
    folder = Path(rec.path).resolve().parent
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kmemleak-offline"
    digest = hashlib.sha1(str(Path(rec.path).resolve()).encode()).hexdigest()[:16]
    xdg = base / f"{digest}-{_stem(rec)}.converted.parquet"
    if os.access(folder, os.W_OK | os.X_OK):
        return [folder / f"{_stem(rec)}.converted.parquet", xdg]
    return [xdg]


def converted(rec):
    """`rec` itself when it holds no ring chunks; else its converted copy (made once, cached)."""
    from ..format.convert import is_raw
    from ..format.recording import RecordingError, open_recording

    if not is_raw(rec):
        return rec
    src = _source_id(rec)
    paths = cache_paths(rec)
    for path in paths:
        if path.is_file():
            try:
                cached = open_recording(path)
                if cached.metadata.get(CACHE_KEY) == src:
                    return cached
            except RecordingError:
                pass  # a damaged cache: make it again
    mb = rec.size_bytes / 1e6
    for i, path in enumerate(paths):
        sys.stderr.write(f"kmemleak-offline: converting the ring chunks of {rec.path} ({mb:.0f} MB) "
                         f"into {path} (once: later runs reuse it)\n")
        sys.stderr.flush()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _convert(rec, path, {CACHE_KEY: src})
            break
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT) and i + 1 < len(paths):
                continue  # no room beside it (a disk that filled up while recording): the cache
            fail(f"cannot write the converted recording {path}: {exc.strerror or exc}")
    return open_recording(path)


def _convert(rec, out: Path, extra_meta: dict[str, Any] | None = None):
    from ..format.convert import convert_recording
    from ..format.recording import RecordingError

    if extra_meta:
        rec.metadata.update(extra_meta)
    try:
        return convert_recording(rec, out)
    except RecordingError as exc:
        fail(str(exc))


def convert(
    recording: Annotated[Path, typer.Argument(metavar="RECORDING", help="raw recording: file or parts folder")],
    output: Annotated[Path | None, typer.Option("-o", "--output", metavar="FILE", help="write here "
                                                "(default: in place; a parts folder NAME.parts becomes NAME)")] = None,
) -> None:
    """Convert the ring chunks of a raw recording (`record --defer-convert`, a killed recorder's
    parts folder) into event rows. `analyze`, `info` and `diff` do it by themselves (cached)."""
    from ..format.convert import is_raw, skip_pandas_probe
    from .common import load

    skip_pandas_probe()
    rec = load(recording, convert=False)
    if not is_raw(rec):
        sys.stderr.write(f"kmemleak-offline: {rec.path} holds no ring chunks: nothing to convert\n")
        return
    src = Path(rec.path)
    out = output
    if out is None:
        out = Path(str(src)[: -len(".parts")]) if rec.partial and str(src).endswith(".parts") else src
    t0, c0 = time.monotonic(), time.process_time()
    try:
        res = _convert(rec, out)
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror or exc}")
    if output is None and rec.partial and out != src:
        shutil.rmtree(src)
    wall, cpu = time.monotonic() - t0, time.process_time() - c0
    per = 1e6 * cpu / max(1, res.events)
    sys.stderr.write(f"kmemleak-offline: converted {res.events} events ({res.chunk_bytes / 1e6:.1f} MB "
                     f"of ring chunks) in {wall:.2f} s ({cpu:.2f} CPU s, {per:.3f} us/event) -> {out}\n")
    for ring, nbytes in sorted(res.gaps.items()):
        sys.stderr.write(f"kmemleak-offline: warning: ring {ring}: {nbytes} bytes missing between "
                         "chunks (a killed recorder's last writes)\n")
