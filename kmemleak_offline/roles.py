"""Event roles: the --alloc/--free specs of an analysis, checked against the recording's event
formats, their expressions compiled, and evaluated over sample columns (payloads decoded only for
the fields the expressions read). Both analysis paths (in memory, streaming) use this."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .format import expr as exprmod
from .format import spec as specmod
from .format.tracefs import EventFormat, FormatError, parse_format
from .load import SIZE_LIMIT, Samples


class AnalysisError(ValueError):
    """Bad input to the analysis (unknown event, bad expression...). Message may be multi-line for
    expressions (caret + available fields), else one line."""


@dataclass
class EventRole:
    """One --alloc/--free event after defaults, with its compiled expressions."""

    spec: specmod.EventSpec
    fmt: EventFormat
    is_alloc: bool
    ptr: exprmod.Expr
    size: exprmod.Expr | None
    filter: exprmod.Expr | None  # applied offline (the kernel did not apply it)
    code: int = -1  # index in Analysis.roles


def formats_of(meta: dict) -> dict[str, EventFormat]:
    out = {}
    for name, ev in meta.get("events", {}).items():
        system = name.split(":", 1)[0]
        try:
            out[name] = parse_format(ev.get("format", ""), system)
        except FormatError as exc:
            raise AnalysisError(f"recording metadata: bad format text for {name}: {exc}") from None
    return out


def build_roles(meta: dict, alloc: list[str], free: list[str], formats: dict[str, EventFormat],
                warn: Callable[[str], None], verbose: int = 0,
                expansions: list[tuple[str, str]] | None = None) -> list[EventRole]:
    """Parse spec lists against the recording's formats; compile ptr/size/filter expressions.
    `expansions` collects (list as given, list after wildcard expansion), for -v."""
    kernel_filters = (meta.get("options") or {}).get("kernel_filters") or {}
    roles: list[EventRole] = []
    for is_alloc, texts in ((True, alloc), (False, free)):
        specs: list[specmod.EventSpec] = []
        try:
            for t in texts:
                expanded = specmod.expand_wildcards(specmod.parse_list(t), formats.keys())
                if expansions is not None:
                    expansions.append((t, ",".join(sp.text for sp in expanded)))
                specs.extend(expanded)
        except specmod.SpecError as exc:
            raise AnalysisError(str(exc)) from None
        for sp in specs:
            fmt = formats.get(sp.full_name)
            if fmt is None:
                raise AnalysisError(f"{sp.full_name} not found in the recording (it has: "
                                    f"{', '.join(sorted(formats)) or 'no events'})")
            try:
                sp = specmod.with_defaults(sp, fmt)
            except specmod.SpecError as exc:
                raise AnalysisError(str(exc)) from None
            if verbose and sp.ignored:
                warn(f"{sp.full_name}: ignoring attributes not used by kmemleak: "
                     + ", ".join(f"{k}={v}" if v else k for k, v in sp.ignored))
            try:
                ptr = exprmod.compile_expr(sp.ptr, fmt.fields)
                size = exprmod.compile_expr(sp.size, fmt.fields) if (is_alloc and sp.size) else None
                flt = None
                if sp.filter and kernel_filters.get(sp.full_name) != sp.filter:
                    flt = exprmod.compile_expr(sp.filter, fmt.fields)
                    if verbose:
                        warn(f"{sp.full_name} filters '{sp.filter}' in userspace")
            except exprmod.ExprError as exc:
                raise AnalysisError(str(exc)) from None
            roles.append(EventRole(spec=sp, fmt=fmt, is_alloc=is_alloc, ptr=ptr, size=size,
                                   filter=flt, code=len(roles)))
    if not any(r.is_alloc for r in roles):
        raise AnalysisError("no --alloc event given (and the recording names none)")
    if not any(not r.is_alloc for r in roles):
        raise AnalysisError("no --free event given (and the recording names none)")
    return roles


@dataclass
class Evaluated:
    """Per sample row: its role (-1: not replayed), key and size, and whether a filter kept it."""

    role: np.ndarray  # int32 role code per row, -1 = not an alloc/free event
    key: np.ndarray  # uint64
    size: np.ndarray | None  # uint64, None when no role has a size
    keep: np.ndarray | None  # bool per row, only when some role filters
    fail_counts: dict[tuple[str, str], int]

    def replayed(self) -> np.ndarray | None:
        """Bool per row: replayed (an alloc/free event that passed its filter); None = all rows."""
        if self.keep is not None:
            return self.keep
        if len(self.role) and self.role.min() < 0:
            return self.role >= 0
        return None


def evaluate_roles(sm: Samples, roles: list[EventRole], names: list[str], role_lut: np.ndarray,
                   env: exprmod.ExprEnv | None = None) -> Evaluated:
    """Evaluate ptr/size/filter of every alloc/free row, decoding only the fields they read.

    Payloads are decoded in file order (each chunk's rows of one event are read front to back).
    `env` gives expressions the recording's kallsyms (`ksymbol()`) and comms (`comm_get()`)."""
    n = len(sm)
    role_r = role_lut[sm.event]  # per sample row; -1: not an alloc/free event (or a null event)
    key = np.zeros(n, np.uint64)
    size = np.zeros(n, np.uint64) if any(r.size is not None for r in roles) else None
    keep = None
    fail_counts: dict[tuple[str, str], int] = dict(sm.implausible)
    for role in roles:
        if names.index(role.spec.full_name) != role.code:
            continue  # an event listed twice (or in both lists) belongs to its first role
        rows = np.flatnonzero(role_r == role.code)
        if not len(rows):
            continue
        short = sm.payload_lengths(rows) < role.fmt.min_payload
        if short.any():  # the kernel delivers every field: a damaged or foreign row
            if keep is None:
                keep = role_r >= 0
            keep[rows[short]] = False
            k = (role.spec.full_name, "short payload")
            fail_counts[k] = fail_counts.get(k, 0) + int(np.count_nonzero(short))
        cols = _decode_for(role, sm, rows)
        m = len(rows)
        if role.filter is not None:
            fr = role.filter.evaluate(cols, m, env)
            if keep is None:
                keep = role_r >= 0
            keep[rows] = exprmod.filter_mask(fr)
            _count_fail(fail_counts, role.spec.full_name, "filter", fr)
        pr = role.ptr.evaluate(cols, m, env)
        _count_fail(fail_counts, role.spec.full_name, "ptr", pr)
        key[rows] = exprmod.as_ptr(pr)
        if role.size is not None:
            sr = role.size.evaluate(cols, m, env)
            _count_fail(fail_counts, role.spec.full_name, "size", sr)
            sz = exprmod.as_size(sr)
            size[rows] = sz
            huge = sz > np.uint64(SIZE_LIMIT)
            if huge.any():  # no allocator returns that much: left out, counted in a warning
                if keep is None:
                    keep = role_r >= 0
                keep[rows[huge]] = False
                n_huge = int(np.count_nonzero(huge))
                k = (role.spec.full_name, "huge size")
                fail_counts[k] = fail_counts.get(k, 0) + n_huge
    return Evaluated(role=role_r, key=key, size=size, keep=keep, fail_counts=fail_counts)


def warn_failures(fail_counts: dict[tuple[str, str], int], warn: Callable[[str], None],
                  fate: str = "left out of the report") -> None:
    """One line per event and kind of failure: expressions that failed, values no kernel
    produces (docs/behaviour.md)."""
    for (ev, what), cnt in sorted(fail_counts.items(), key=lambda kv: (kv[0][1] in _DAMAGE, kv[0])):
        if what == "huge size":
            warn(f"warning: {ev}: {cnt} samples with a size past {SIZE_LIMIT:,} bytes (128 TiB: "
                 f"no allocator returns that; damaged or foreign data?): {fate}")
        elif what == "short payload":
            warn(f"warning: {ev}: {cnt} samples with a payload shorter than the event's format "
                 f"(damaged or foreign data?): {fate}")
        elif what == "time":
            warn(f"warning: {ev}: {cnt} samples timed after the recording's stop "
                 f"(damaged or foreign data?): {fate}")
        else:
            warn(f"warning: {ev}: {what} expression failed (division by zero) on {cnt} samples")


_DAMAGE = ("huge size", "time", "short payload")


def _decode_for(role: EventRole, sm: Samples, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Decode only the fields the role's expressions read (and `_cpu`/`_pid` when they do)."""
    need = set(role.ptr.fields_used) | role.ptr.specials_used
    for e in (role.size, role.filter):
        if e is not None:
            need |= set(e.fields_used) | e.specials_used
    cols = sm.decode(role.fmt, rows, fields=need)
    if "_cpu" in need:
        cols["_cpu"] = sm.cpu[rows].astype(np.int64)
    if "_pid" in need:
        cols["_pid"] = sm.pid[rows].astype(np.int64)
    return cols


def _count_fail(acc: dict, ev: str, what: str, r: exprmod.EvalResult) -> None:
    c = int(np.count_nonzero(r.failed))
    if c:
        acc[(ev, what)] = acc.get((ev, what), 0) + c


def uses_comm(role: EventRole) -> bool:
    return any(e is not None and "comm_get" in e.text for e in (role.ptr, role.size, role.filter))
