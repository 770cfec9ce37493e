"""A real gunicorn server on 127.0.0.1 against the test database and Redis, for webhook tests and benchmarks."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def gunicorn(env: dict[str, str], *, workers: int = 3, threads: int = 8, log_path: Path | None = None,
             app: str = "tradesite.wsgi:application") -> Iterator[int]:
    """Run gunicorn on a free port until the block ends; yield the port.

    `threads` > 1: gthread workers, as the web role runs (the webhook's group commit then batches); 1: sync workers.
    """
    port = free_port()
    argv = [sys.executable, "-m", "gunicorn", app, "-b", f"127.0.0.1:{port}", "-w", str(workers),
            *(["-k", "gthread", "--threads", str(threads)] if threads > 1 else ["-k", "sync"]),
            "--backlog", "2048", "--timeout", "30"]
    with _serving(argv, env, port, log_path):
        yield port


@contextmanager
def intake(env: dict[str, str], *, workers: int = 1, log_path: Path | None = None,
           app: str = "tradesite.intake:application") -> Iterator[int]:
    """Run the intake role's server (uvicorn, tradesite/intake.py, as the bootstrap starts it) on a free port until
    the block ends; yield the port. `app` swaps the ASGI application, the server's options unchanged."""
    from tradesite.bootstrap import role_command

    port = free_port()
    argv = role_command("intake", {**env, "INTAKE_BIND": f"127.0.0.1:{port}", "INTAKE_WORKERS": str(workers),
                                   "LOG_LEVEL": "warning"})
    argv = [app if part == "tradesite.intake:application" else part for part in argv]
    with _serving([sys.executable, *argv[1:]], env, port, log_path):
        yield port


@contextmanager
def _serving(argv: list[str], env: dict[str, str], port: int, log_path: Path | None) -> Iterator[None]:
    log = (log_path or Path(os.devnull)).open("wb")
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{argv[2]} exited with {proc.returncode}")
            try:
                status, _ = request(port, "GET", "/healthz")
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{argv[2]} did not come up in 60 s")
            time.sleep(0.1)
        yield
    finally:
        try:
            os.killpg(proc.pid, 15)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)
        log.close()


def request(port: int, method: str, path: str, body: bytes = b"",
            content_type: str = "application/json") -> tuple[int, Any]:
    """One HTTP request on a fresh connection; (status, decoded JSON body or raw bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body or None, headers={"Content-Type": content_type} if body else {})
        response = conn.getresponse()
        raw = response.read()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw
    finally:
        conn.close()
