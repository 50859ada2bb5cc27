"""Real parts for `edge-infer serve`: the server as a subprocess on a free loopback port, plain HTTP calls, and a
headless Chromium (Debian's chromium + chromium-driver) driven by Selenium. Used by tests/test_serve.py,
benchmarks/serve.py and examples/serve_page.py.

    with ServerProcess(["--max-body", "64K"]) as server:
        reply = call(server.port, "POST", "/v1/digits", png_bytes)
        reply.status, reply.json
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# As root in a container: no sandbox; and nothing that reaches the network (the page must work offline).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
    "--disable-dev-shm-usage",
)
START_TIMEOUT_S = 30  # a loaded 2-core machine: importing Starlette, uvicorn and onnxruntime takes ~1 s


def missing_serve_parts() -> str | None:
    """Why the server can't run here (the serve extra is not installed), or None."""
    import importlib.util

    missing = [name for name in ("starlette", "uvicorn", "python_multipart") if importlib.util.find_spec(name) is None]
    return f'the serve extra is not installed ({", ".join(missing)}): pip install -e ".[serve]"' if missing else None


def missing_browser() -> str | None:
    """Why the browser tests can't run here (no selenium, chromium or chromedriver), or None."""
    import importlib.util

    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (the dev extra)"
    for program in (CHROMIUM, CHROMEDRIVER):
        if not os.access(program, os.X_OK):
            return f"{program} not found: apt-get install -y chromium chromium-driver"
    return None


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def call(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    connection: http.client.HTTPConnection | None = None,
    timeout: float = 30,
) -> Reply:
    """One HTTP request to the server on 127.0.0.1:port (on `connection` when given: keep-alive)."""
    own = connection is None
    conn = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body, headers or {})
        response = conn.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        if own:
            conn.close()


def multipart(files: list[tuple[str, bytes]], field: str = "file") -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body of files (name, bytes) and its Content-Type header."""
    boundary = "edge-infer-test-boundary-7f3a"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + b"\r\n"
        for name, data in files
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), {
        "Content-Type": f"multipart/form-data; boundary={boundary}"
    }


class ServerProcess:
    """`python -m edge_infer serve --port 0 ARGS` from this checkout; port is the one it printed."""

    def __init__(self, args: list[str] | tuple[str, ...] = (), env: dict[str, str] | None = None) -> None:
        self.args, self.env = list(args), env
        self.process: subprocess.Popen[str] | None = None
        self.port = 0
        self.first_line = ""

    def start(self) -> ServerProcess:
        env = {**os.environ, "PYTHONPATH": str(ROOT), **(self.env or {})}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edge_infer", "serve", "--port", "0", *self.args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.first_line = self.process.stdout.readline()  # printed once the port is bound and the model loaded
        if "listening on http://" not in self.first_line:
            self.process.kill()
            _, err = self.process.communicate(timeout=START_TIMEOUT_S)
            raise RuntimeError(f"the server did not start: {self.first_line!r} {err!r}")
        self.port = int(self.first_line.split("http://")[1].split("/")[0].rsplit(":", 1)[1])
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> tuple[int, str, str]:
        """Signal the server and wait for it: (exit code, rest of stdout, stderr)."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            out, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, err = self.process.communicate()
        return self.process.returncode, out, err

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.stop()


# -----------------------------------------------------------------------------
# the browser


class Browser:
    """Headless Chromium (Selenium) with its own empty profile directory, removed on close."""

    def __init__(self, width: int = 900, height: int = 1000) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = tempfile.mkdtemp(prefix="edge-infer-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", f"--window-size={width},{height}"):
            options.add_argument(flag)
        self.driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        self.driver.set_page_load_timeout(30)

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)

    def open(self, port: int) -> None:
        self.driver.get(f"http://127.0.0.1:{port}/")

    def element(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def answers(self) -> int:
        """How many answers the page has shown so far."""
        return int(self.element("#answer").get_attribute("data-answers"))

    def wait_for_answer(self, after: int, timeout: float = 20) -> str:
        """Wait until the page shows answer number after + 1; its text."""
        deadline = time.monotonic() + timeout
        while self.answers() <= after:
            error = self.element("#error").text
            if error or time.monotonic() > deadline:
                raise AssertionError(f"no answer from the page: {error or 'timed out'}")
            time.sleep(0.05)
        return str(self.element("#answer").text)

    def draw(self, strokes: list[list[tuple[float, float]]], kind: str = "mouse") -> None:
        """Draw strokes on the canvas with pointer events: each stroke a list of points as fractions (0..1) of
        the canvas's width and height; kind is the pointer: mouse, pen or touch."""
        from selenium.webdriver.common.actions import interaction
        from selenium.webdriver.common.actions.action_builder import ActionBuilder
        from selenium.webdriver.common.actions.pointer_input import PointerInput

        pad = self.element("#pad")
        width, height = pad.size["width"], pad.size["height"]
        kinds = {"mouse": interaction.POINTER_MOUSE, "pen": interaction.POINTER_PEN, "touch": interaction.POINTER_TOUCH}
        for stroke in strokes:
            builder = ActionBuilder(self.driver, mouse=PointerInput(kinds[kind], kind), duration=10)
            at = [(round((x - 0.5) * width), round((y - 0.5) * height)) for x, y in stroke]  # from the centre
            builder.pointer_action.move_to(pad, *at[0]).pointer_down()
            for x, y in at[1:]:
                builder.pointer_action.move_to(pad, x, y)
            builder.pointer_action.pointer_up()
            builder.perform()

    def canvas_png(self) -> bytes:
        """The canvas as the PNG the page sends."""
        url = self.driver.execute_script("return document.getElementById('pad').toDataURL('image/png')")
        return base64.b64decode(url.split(",", 1)[1])


def line(start: tuple[float, float], end: tuple[float, float], steps: int = 8) -> list[tuple[float, float]]:
    """A straight stroke from start to end through steps + 1 points."""
    return [
        (start[0] + (end[0] - start[0]) * i / steps, start[1] + (end[1] - start[1]) * i / steps)
        for i in range(steps + 1)
    ]


# Digits drawn as a person would, in fractions of a square canvas (shifted and scaled for a number).
ONE = [line((0.52, 0.2), (0.48, 0.8))]
SEVEN = [line((0.3, 0.22), (0.7, 0.22)) + line((0.7, 0.22), (0.42, 0.82))[1:]]


def placed(strokes: list[list[tuple[float, float]]], left: float, width: float) -> list[list[tuple[float, float]]]:
    """strokes squeezed into the columns [left, left + width] of the canvas (for a number's digits)."""
    return [[(left + x * width, y) for x, y in stroke] for stroke in strokes]
