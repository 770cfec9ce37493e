"""trading/dispatch.py: rooms below trading/tasks.py queue tasks by name, in any process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from trading import dispatch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", [dispatch.SIGNAL_PROCESS, dispatch.KILL_SWITCH_ENFORCE,
                                  "strategies.tasks.backtest_run"])
def test_a_process_that_never_imported_the_tasks_finds_them_by_name(name: str) -> None:
    code = (
        "import sys, django; django.setup()\n"
        "assert not {'trading.tasks', 'strategies.tasks'} & set(sys.modules), 'imported already: proves nothing'\n"
        "from trading import dispatch\n"
        f"print(dispatch.task({name!r}).name)\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tradesite.settings"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == name


def test_an_unknown_name_is_an_error_not_a_silent_drop() -> None:
    from celery.exceptions import NotRegistered

    with pytest.raises(NotRegistered):
        dispatch.task("trading.tasks.no_such_task")
