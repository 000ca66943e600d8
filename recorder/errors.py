"""Recorder errors: one-line messages the `record` command prints, with their exit status."""

from __future__ import annotations


class RecordError(Exception):
    """A runtime failure (exit 1): not root, no tracefs, perf_event_open refused..."""

    exit_code = 1


class RecordInputError(RecordError):
    """Bad input (exit 2): unknown event, bad filter, missing ptr, no such pid, bad option."""

    exit_code = 2
