"""Real servers on 127.0.0.1 for webhook tests and benchmarks: gunicorn (the web role) and uvicorn (the intake
role) against the test database and Redis, and a private redis-server that a test can stop and start."""

from __future__ import annotations

import http.client
import json
import os
import signal
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


class RedisServer:
    """A redis-server of our own on a free port (no persistence: a restart starts empty), stopped and started again
    by the test, on the same port, as an operator's restart would."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it and wait until it answers PING."""
        import redis

        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "redis.conf"
        conf.write_text(f'port {self.port}\nbind 127.0.0.1\nsave ""\nappendonly no\ndir {self.directory}\n')
        self.proc = subprocess.Popen(["redis-server", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + 20
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    pass
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {self.port} did not come up")
                time.sleep(0.05)
        finally:
            client.close()

    def pause(self) -> None:
        """Freeze it (SIGSTOP): connections are still accepted by the kernel, and nothing is answered."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Let a frozen one run again (SIGCONT), with its data and connections."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        """Stop it (SIGTERM, as a service stop does) and wait until it is gone: connections are then refused."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGCONT)  # a frozen one would never act on SIGTERM
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=20)
        self.proc = None


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
