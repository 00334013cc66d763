"""What the server tests share: ``python -m rwkv_relax.serve`` in a subprocess on 127.0.0.1 (a free
port), its metrics and RSS, and raw HTTP calls."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The real server as a child process; ``url`` is its ``/v1`` base."""

    def __init__(self, model_dir: Path, lib: Path, log: Path, *flags):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = self.base + "/v1"
        self.model = model_dir.name
        self.log = log
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rwkv_relax.serve", "--model", str(model_dir), "--model-lib", str(lib),
             "--port", str(self.port), "--log-level", "warning", *map(str, flags)],
            stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=env, cwd=ROOT)
        deadline = time.monotonic() + 120
        while True:
            try:
                if self.get("/health")[0] == 200:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)

    # ---- raw HTTP --------------------------------------------------------------------------------
    def request(self, method: str, path: str, body: bytes | None = None, timeout: float = 60):
        """(status, headers with lower-case names, body bytes) of one request."""
        req = urllib.request.Request(self.base + path, data=body, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
        except urllib.error.HTTPError as err:
            return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()

    def get(self, path: str):
        status, _, body = self.request("GET", path, timeout=10)
        return status, body

    def post(self, path: str, payload) -> tuple[int, dict, dict]:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        status, headers, body = self.request("POST", path, raw)
        return status, headers, json.loads(body)

    def metrics(self) -> dict[str, float]:
        """``/metrics`` as {sample name (labels included): value}."""
        status, body = self.get("/metrics")
        assert status == 200
        out = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def wait_idle(self, timeout: float = 30) -> dict[str, float]:
        """Metrics once no request is active (the loop frees cancelled ones at its next step)."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.metrics()
            if (m["rwkv_active_sequences"] == 0 and m["rwkv_queue_length"] == 0) or time.monotonic() > deadline:
                return m
            time.sleep(0.05)

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def alive(self) -> bool:
        return self.proc.poll() is None and self.get("/health")[0] == 200

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


CLIENT_ERRORS = range(400, 500)


def assert_openai_error(status: int, body: dict, statuses=CLIENT_ERRORS) -> dict:
    """An OpenAI-style error answer: ``{"error": {"message", "type", "param", "code"}}``."""
    assert status in statuses, (status, body)
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    assert "\n" not in body["error"]["message"]
    return body["error"]
