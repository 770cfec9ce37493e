"""The import direction of STYLE.md, kept by import-linter: tradesite -> webhooks | strategies -> trading ->
exchanges | infra."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept() -> None:
    linter = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert linter, "import-linter is installed with the dev requirements"
    result = subprocess.run([linter], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:]
    assert "0 broken" in result.stdout


def test_no_float_in_money_paths() -> None:
    offenders = [
        f"{path}:{n}"
        for package in ("trading", "exchanges", "webhooks", "infra")
        for path in (ROOT / package).rglob("*.py")
        if "migrations" not in path.parts
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if "float(" in line and not line.lstrip().startswith("#")
    ]
    assert offenders == []
