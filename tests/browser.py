"""Headless Chromium driven over the DevTools protocol (CDP) on a pipe, for the HTML report tests
and bench/html_bench.py: open a local file with the network off, wait until a JavaScript
condition holds, read text and values, collect console errors and any network request, take a
screenshot.

Chromium's `--remote-debugging-pipe` reads NUL-terminated JSON commands on fd 3 and writes
replies and events on fd 4: no port, no extra package. Every wait has a deadline.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self


def chromium() -> str | None:
    """The Chromium binary (Debian's `chromium`), or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


class BrowserError(RuntimeError):
    pass


@dataclass
class PageLog:
    """What the page said and asked for while it was open."""

    console: list[tuple[str, str]] = field(default_factory=list)  # (level, text)
    exceptions: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # every URL the page requested

    def errors(self) -> list[str]:
        return ([f"console.{lvl}: {txt}" for lvl, txt in self.console if lvl in ("error", "assert")]
                + [f"exception: {e}" for e in self.exceptions])

    def remote_requests(self) -> list[str]:
        """Requests that would need the network (anything but file:, data:, blob:, about:)."""
        return [u for u in self.requests if not u.startswith(("file:", "data:", "blob:", "about:"))]


class Browser:
    """One headless Chromium with one page. Use as a context manager."""

    def __init__(self, width: int = 1400, height: int = 1000, timeout: float = 60) -> None:
        exe = chromium()
        if exe is None:
            raise BrowserError("chromium is not installed (Debian: apt-get install chromium)")
        self.timeout = timeout
        self.width, self.height = width, height
        self._profile = tempfile.mkdtemp(prefix="kmlo-chromium-")
        cmd_r, self._cmd_w = os.pipe()  # we write commands; Chromium reads fd 3
        self._evt_r, evt_w = os.pipe()  # Chromium writes fd 4; we read

        def child_fds() -> None:  # in the child before exec: its pipe ends go to fds 3 and 4
            r, w = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (cmd_r, evt_w))
            os.dup2(r, 3)  # dup2 leaves 3 and 4 inheritable; everything else is close-on-exec
            os.dup2(w, 4)

        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             f"--user-data-dir={self._profile}", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--disable-background-networking", "--disable-sync",
             "--disable-component-update", "--mute-audio", "--hide-scrollbars",
             "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9",
             f"--window-size={width},{height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=child_fds, close_fds=False)  # noqa: PLW1509 (only dup2 calls: Chromium
        # wants its pipe on fds 3 and 4, which pass_fds cannot place)
        os.close(cmd_r)
        os.close(evt_w)
        self._buf = b""
        self._id = 0
        self._session: str | None = None
        self.log = PageLog()
        try:
            self._attach()
        except BaseException:
            self.close()
            raise

    # ---- protocol ------------------------------------------------------------------------------

    def _send(self, method: str, params: dict | None = None, session: bool = True) -> int:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session and self._session:
            msg["sessionId"] = self._session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        return self._id

    def _read(self, deadline: float) -> dict:
        import select

        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("timed out waiting for Chromium")
            ready, _, _ = select.select([self._evt_r], [], [], left)
            if ready:
                chunk = os.read(self._evt_r, 1 << 20)
                if not chunk:
                    raise BrowserError(f"Chromium exited (code {self.proc.poll()})")
                self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        msg = json.loads(raw)
        if "method" in msg:
            self._event(msg)
        return msg

    def _event(self, msg: dict) -> None:
        m, p = msg["method"], msg.get("params", {})
        if m == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            self.log.console.append((p.get("type", ""), text))
        elif m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            self.log.exceptions.append(d.get("exception", {}).get("description") or d.get("text", ""))
        elif m == "Log.entryAdded":
            e = p.get("entry", {})
            self.log.console.append((e.get("level", ""), e.get("text", "")))
        elif m == "Network.requestWillBeSent":
            url = p.get("request", {}).get("url", "")
            self.log.requests.append(url[:60] + "..." if url.startswith("data:") else url)

    def call(self, method: str, params: dict | None = None, timeout: float | None = None,
             session: bool = True) -> dict:
        """Send one command and return its result (events that arrive meanwhile are logged)."""
        i = self._send(method, params, session)
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            msg = self._read(deadline)
            if msg.get("id") == i:
                if "error" in msg:
                    raise BrowserError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def wait_event(self, method: str, timeout: float | None = None) -> dict:
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            msg = self._read(deadline)
            if msg.get("method") == method:
                return msg.get("params", {})

    def _attach(self) -> None:
        targets = self.call("Target.getTargets", session=False)["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self._session = self.call("Target.attachToTarget", {"targetId": page["targetId"],
                                                            "flatten": True},
                                  session=False)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")
        self.call("Network.emulateNetworkConditions", {"offline": True, "latency": 0,
                                                       "downloadThroughput": -1,
                                                       "uploadThroughput": -1})
        self.call("Emulation.setDeviceMetricsOverride", {"width": self.width, "height": self.height,
                                                         "deviceScaleFactor": 1, "mobile": False})

    # ---- page ----------------------------------------------------------------------------------

    def open(self, path: Path) -> float:
        """Load a local file; returns the seconds until its load event."""
        self.log = PageLog()
        t0 = time.monotonic()
        self.call("Page.navigate", {"url": Path(path).resolve().as_uri()})
        self.wait_event("Page.loadEventFired")
        return time.monotonic() - t0

    def evaluate(self, expression: str, timeout: float | None = None) -> Any:
        """The value of a JavaScript expression (promises awaited), as JSON."""
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                           "awaitPromise": True}, timeout)
        if "exceptionDetails" in r:
            raise BrowserError(f"{expression!r}: {r['exceptionDetails'].get('text')}")
        return r["result"].get("value")

    def wait_for(self, expression: str, timeout: float | None = None, poll: float = 0.02) -> float:
        """Poll until `expression` is truthy; returns the seconds waited."""
        t0 = time.monotonic()
        deadline = t0 + (timeout or self.timeout)
        while not self.evaluate(expression):
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out waiting for {expression!r}")
            time.sleep(poll)
        return time.monotonic() - t0

    def screenshot(self, out: Path, full_page: bool = True) -> Path:
        """A PNG of the page (its whole height when full_page)."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            m = self.call("Page.getLayoutMetrics")["cssContentSize"]
            params["clip"] = {"x": 0, "y": 0, "width": self.width,
                              "height": max(self.height, int(m["height"])), "scale": 1}
            params["captureBeyondViewport"] = True
        data = self.call("Page.captureScreenshot", params)["data"]
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_bytes(base64.b64decode(data))
        return Path(out)

    def drain(self, seconds: float = 0.2) -> None:
        """Read events for a moment (late console messages)."""
        deadline = time.monotonic() + seconds
        try:
            while True:
                self._read(deadline)
        except BrowserError:
            pass

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self._send("Browser.close", session=False)
                    self.proc.wait(timeout=10)
                except (OSError, subprocess.TimeoutExpired):
                    self.proc.kill()
                    self.proc.wait(timeout=10)
        finally:
            for fd in (self._cmd_w, self._evt_r):
                try:
                    os.close(fd)
                except OSError:
                    pass
            shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
