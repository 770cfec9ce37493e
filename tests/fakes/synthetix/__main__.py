"""Recompile the Vyper mocks and rewrite the committed artifact: `python -m tests.fakes.synthetix`."""

import json

from tests.fakes.synthetix import ARTIFACT, compile_contracts

ARTIFACT.write_text(json.dumps(compile_contracts(), indent=1, sort_keys=True) + "\n")
print(f"wrote {ARTIFACT}")
