"""The recorder says when something it relies on did not work (no silent handlers)."""

from __future__ import annotations

import os

from recorder.session import Session


class _Writer:
    def __init__(self) -> None:
        self.metadata = {"counts": {}, "clock": {}}


def test_unreadable_counters_are_marked_and_said(capsys):
    s = Session.__new__(Session)
    r, w = os.pipe()  # not perf fds: reading their counts fails
    os.close(r)
    os.close(w)
    s.event_fds = {"kmem:kmalloc": [r, w]}
    s.writer = _Writer()
    s._unread_warned = set()
    s._refresh_counts()
    s._refresh_counts()
    c = s.writer.metadata["counts"]["kmem:kmalloc"]
    assert c["unread_counters"] == 2 and c["lost"] == 0
    err = capsys.readouterr().err
    assert err.count("kernel counters could not be read") == 1  # once, not per refresh


def test_failed_sched_fifo_is_said(monkeypatch, capsys):
    def refuse(*_a):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    monkeypatch.setenv("KMEMLEAK_RECORD_FIFO", "1")
    s = Session.__new__(Session)
    s._realtime(True)
    assert "SCHED_FIFO: Operation not permitted" in capsys.readouterr().err
    s._realtime(False)  # going back quietly
    assert capsys.readouterr().err == ""
