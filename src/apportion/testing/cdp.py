"""Headless Chromium driven over the Chrome DevTools Protocol, for tests of live pages.

:class:`Browser` starts Debian's ``chromium`` with a remote-debugging port, attaches to its
page over a websocket (the ``websockets`` package, sync client) and offers what page tests
need: go to a URL, evaluate JavaScript, wait for a condition (a bounded number of polls,
never a timed assertion), fill in and submit a form, take a screenshot, switch the colour
scheme. Unlike :func:`apportion.testing.chromium.laid_out` (one page load, DOM dumped), the
page stays open, so a test can watch it change (Server-Sent Events, fetches)::

    with Browser(chromium_or_skip(), tmp_path) as browser:
        browser.go(url)
        browser.wait_for("document.querySelector('table') !== null")
        browser.screenshot(tmp_path / "page.png")
"""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import threading
import urllib.request
from pathlib import Path
from typing import Any, Final

from apportion.testing.chromium import HEADLESS_FLAGS

__all__ = ["Browser", "BrowserError"]

_FLAGS: Final = (
    *HEADLESS_FLAGS,
    "--no-default-browser-check",
    "--disable-extensions",
    "--hide-scrollbars",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)


class BrowserError(RuntimeError):
    """The browser failed, or a page never reached the state a test waited for."""


class Browser:
    """One headless Chromium with one page, driven over the DevTools Protocol.

    Args:
        executable: the browser (:func:`apportion.testing.chromium.chromium_or_skip`).
        workdir: a directory for its profile and log.
        window: the viewport's width and height in CSS pixels.
        reply_seconds: how long to wait for one protocol reply.
    """

    def __init__(
        self,
        executable: str,
        workdir: Path,
        *,
        window: tuple[int, int] = (1280, 900),
        reply_seconds: float = 30.0,
    ) -> None:
        self.executable = executable
        self.workdir = workdir
        self.window = window
        self.reply_seconds = reply_seconds
        self.events: list[dict[str, Any]] = []
        """Protocol events received so far (``method``, ``params``), oldest first."""
        self._process: subprocess.Popen[bytes] | None = None
        self._socket: Any = None
        self._stack = contextlib.ExitStack()
        self._next_id = 0
        self._log = workdir / "chromium.log"

    def __enter__(self) -> Browser:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int:
        """The browser's process id (its renderers run below it).

        Raises:
            BrowserError: the browser is not started.
        """
        if self._process is None:
            raise BrowserError("the browser is not started")
        return self._process.pid

    def start(self) -> None:
        """Start the browser and attach to its page."""
        from websockets.sync.client import connect

        profile = self.workdir / "chromium-profile"
        profile.mkdir(parents=True, exist_ok=True)
        port_file = profile / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)
        with self._log.open("wb") as log:
            self._process = subprocess.Popen(
                [
                    self.executable,
                    *_FLAGS,
                    f"--user-data-dir={profile}",
                    f"--window-size={self.window[0]},{self.window[1]}",
                    "about:blank",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        waited = threading.Event()
        for _ in range(600):  # the browser writes its port once it listens (bounded polls)
            if port_file.exists() and port_file.read_text().strip():
                break
            if self._process.poll() is not None:
                raise BrowserError(f"chromium exited early: {self._tail()}")
            waited.wait(0.05)
        else:
            raise BrowserError(f"chromium never opened its debugging port: {self._tail()}")
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
            targets = json.loads(answer.read())
        page = next(t for t in targets if t.get("type") == "page")
        self._socket = self._stack.enter_context(
            connect(page["webSocketDebuggerUrl"], max_size=2**28, open_timeout=10)
        )
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {
                "width": self.window[0],
                "height": self.window[1],
                "deviceScaleFactor": 1,
                "mobile": False,
            },
        )

    def _tail(self) -> str:
        try:
            return self._log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Call a protocol method and return its result (events meanwhile are kept)."""
        if self._socket is None:
            raise BrowserError("the browser is not started")
        self._next_id += 1
        call_id = self._next_id
        self._socket.send(json.dumps({"id": call_id, "method": method, "params": params or {}}))
        while True:
            try:
                message = json.loads(self._socket.recv(timeout=self.reply_seconds))
            except TimeoutError:
                raise BrowserError(f"no reply to {method} from chromium") from None
            if message.get("id") == call_id:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            if "method" in message:
                self.events.append(message)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:200]}: {result['exceptionDetails']}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, *, polls: int = 300, every: float = 0.1) -> Any:
        """Evaluate ``expression`` until it is truthy (at most ``polls`` times); its value.

        Raises:
            BrowserError: it never was.
        """
        pause = threading.Event()
        for _ in range(polls):
            value = self.evaluate(expression)
            if value:
                return value
            pause.wait(every)
        raise BrowserError(f"the page never satisfied: {expression[:300]}")

    def go(self, url: str) -> None:
        """Load ``url`` and wait until the document is complete."""
        self.send("Page.navigate", {"url": url})
        self.wait_for("location.href !== 'about:blank' && document.readyState === 'complete'")

    def submit(self, form_selector: str, values: dict[str, str]) -> None:
        """Fill in a form's fields by id and submit it (as a user pressing the button)."""
        before = self.evaluate("performance.timeOrigin")
        fills = "".join(
            f"document.getElementById({json.dumps(k)}).value = {json.dumps(v)};"
            for k, v in values.items()
        )
        self.evaluate(
            f"{fills} document.querySelector({json.dumps(form_selector)}).requestSubmit(); true"
        )
        self.wait_for(
            f"performance.timeOrigin !== {json.dumps(before)} && document.readyState === 'complete'"
        )

    def color_scheme(self, scheme: str) -> None:
        """Emulate ``prefers-color-scheme: scheme`` (``light`` or ``dark``)."""
        self.send(
            "Emulation.setEmulatedMedia",
            {"features": [{"name": "prefers-color-scheme", "value": scheme}]},
        )

    def screenshot(self, path: Path) -> Path:
        """Write a PNG of the whole page (beyond the viewport) to ``path``."""
        metrics = self.send("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        clip = {
            "x": 0,
            "y": 0,
            "width": max(self.window[0], int(size["width"])),
            "height": min(6000, max(200, int(size["height"]))),
            "scale": 1,
        }
        shot = self.send(
            "Page.captureScreenshot",
            {"format": "png", "captureBeyondViewport": True, "clip": clip},
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def dialogs(self) -> list[str]:
        """The messages of every JavaScript dialog (``alert`` ...) the page opened."""
        return [
            str(e["params"].get("message"))
            for e in self.events
            if e.get("method") == "Page.javascriptDialogOpening"
        ]

    def close(self) -> None:
        """Close the page's connection and stop the browser."""
        if self._socket is not None:
            self._socket = None
            with contextlib.suppress(Exception):  # a socket already gone
                self._stack.close()
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
