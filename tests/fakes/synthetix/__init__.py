"""The Synthetix fake's on-chain parts: Vyper mocks, their committed compiled artifact, and an anvil node.

`python -m tests.fakes.synthetix` recompiles the mocks and rewrites `artifact.json`; a test recompiles them and
compares with the committed artifact, so the mocks and the artifact never drift apart.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ARTIFACT = HERE / "artifact.json"
SOURCES = ("MockPerpsMarket", "MockUSD", "MockPythWrapper", "MockForwarder")
VYPER_VERSION = "0.4.3"
# installed by `make test` (npm ci in this folder, pinned in package-lock.json)
ANVIL_NPM_BIN = HERE / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"


def compile_contracts() -> dict[str, Any]:
    """Compile the Vyper mocks in-process; return the artifact (abi and creation bytecode per contract)."""
    import vyper

    contracts = {}
    for name in SOURCES:
        out = vyper.compile_code((HERE / f"{name}.vy").read_text(), output_formats=["abi", "bytecode"])
        contracts[name] = {"abi": out["abi"], "bytecode": out["bytecode"]}
    return {"compiler": f"vyper {vyper.__version__}", "contracts": contracts}


def load_artifact() -> dict[str, Any]:
    """Return the committed compiled artifact."""
    artifact: dict[str, Any] = json.loads(ARTIFACT.read_text())
    return artifact


def anvil_path() -> str | None:
    """The anvil binary: the pinned npm package first, then one on PATH."""
    if ANVIL_NPM_BIN.exists():
        return str(ANVIL_NPM_BIN)
    return shutil.which("anvil")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Anvil:
    """An anvil node on 127.0.0.1 and a free port, automining, with anvil's ten funded dev accounts."""

    def __init__(self, *, chain_id: int = 84532) -> None:
        path = anvil_path()
        if path is None:
            raise RuntimeError("anvil is not installed: run `npm ci --prefix tests/fakes/synthetix`")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [path, "--host", "127.0.0.1", "--port", str(self.port), "--chain-id", str(chain_id), "--silent",
             "--accounts", "4", "--balance", "1000"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, "NO_COLOR": "1"},
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("anvil did not start") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
