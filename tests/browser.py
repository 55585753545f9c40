"""A real headless Chromium, driven over the DevTools protocol on a pipe (no websocket
library, no network port): load a page, collect every console message, uncaught
exception and log entry (failed resource loads among them), take a screenshot.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-extensions", "--disable-sync", "--no-first-run", "--hide-scrollbars",
    "--disable-component-update", "--disable-default-apps", "--mute-audio",
    "--remote-debugging-pipe",
)  # fmt: skip


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class PageVisit:
    problems: list[str] = field(default_factory=list)  # console errors, exceptions, failed loads
    messages: list[str] = field(default_factory=list)  # every console message
    screenshot: bytes = b""
    values: dict[str, Any] = field(default_factory=dict)  # results of the expressions asked


class DevTools:
    """One browser; messages are NUL-terminated JSON on the browser's fds 3 and 4."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()
        # The shell puts our pipe ends on the fd numbers Chromium reads and writes.
        script = f'exec "$0" "$@" 3<&{to_browser_read} 4>&{from_browser_write}'
        self.process = subprocess.Popen(
            ["bash", "-c", script, binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"],
            pass_fds=(to_browser_read, from_browser_write),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30) -> dict[str, Any]:  # fmt: skip
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._read(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._from_browser], [], [], max(left, 0))
            if not ready:
                raise TimeoutError("Chromium did not answer")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed its DevTools pipe")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError, TimeoutError):
            self.send("Browser.close", timeout=10)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


def visit(binary: str, url: str, profile: Path, expressions: dict[str, str] | None = None,
          width: int = 1280, height: int = 1024) -> PageVisit:  # fmt: skip
    """Loads the page, then screenshots the whole of it and evaluates the expressions."""
    browser = DevTools(binary, profile)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Runtime", "Log", "Page"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                     "deviceScaleFactor": 1, "mobile": False}, session=session)  # fmt: skip
        browser.send("Page.navigate", {"url": url}, session=session)
        browser.wait_for("Page.loadEventFired")
        result = PageVisit()
        for name, expression in (expressions or {}).items():
            answer = browser.send("Runtime.evaluate", {"expression": expression,
                                  "returnByValue": True}, session=session)  # fmt: skip
            result.values[name] = answer.get("result", {}).get("value")
        shot = browser.send("Page.captureScreenshot", {"format": "png",
                            "captureBeyondViewport": True}, session=session)  # fmt: skip
        result.screenshot = base64.b64decode(shot["data"])
        time.sleep(0.2)  # late log entries (a failed image load) arrive after the load event
        browser.send("Runtime.evaluate", {"expression": "0"}, session=session)
        for event in browser.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled":
                text = " ".join(str(arg.get("value", arg.get("description", "")))
                                for arg in params.get("args", []))  # fmt: skip
                result.messages.append(f"{params.get('type')}: {text}")
                if params.get("type") in ("error", "assert", "warning"):
                    result.problems.append(f"console.{params.get('type')}: {text}")
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                description = details.get("exception", {}).get("description") or details.get("text")
                result.problems.append(f"exception: {description}")
            elif method == "Log.entryAdded":
                entry = params.get("entry", {})
                if entry.get("level") in ("error", "warning"):
                    result.problems.append(f"log {entry.get('level')}: {entry.get('text')}"
                                           f" {entry.get('url', '')}".rstrip())  # fmt: skip
        return result
    finally:
        browser.close()
