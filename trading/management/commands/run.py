"""`manage.py run`: migrate, create the demo login and data, then run web + worker + beat + demo feed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Migrate, seed the demo, and run web, worker, beat and the demo price feed in the foreground."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--no-demo", action="store_true", help="do not seed demo data or run the demo feed")
        parser.add_argument("--feed-interval", type=float, default=1.0, help="seconds per replayed demo candle")

    def handle(self, *args: Any, **options: Any) -> None:
        call_command("migrate", interactive=False, verbosity=0)
        if not options["no_demo"]:
            call_command("seed_demo")
            call_command("seed_demo_backtests")  # the strategies app's command (by name: no import upward)
        python, root = sys.executable, str(settings.BASE_DIR)
        roles = {
            "web": [python, "manage.py", "runserver", "--noreload", f"127.0.0.1:{options['port']}"],
            "worker": [python, "-m", "celery", "-A", "tradesite", "worker", "-Q", "execution,monitoring,strategies",
                       "-c", "2", "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "INFO"],
            "beat": [python, "-m", "celery", "-A", "tradesite", "beat", "-l", "INFO",
                     "--schedule", str(settings.VAR_DIR / "celerybeat-schedule")],
        }
        if not options["no_demo"]:
            roles["feed"] = [python, "manage.py", "demo_feed", "--interval", str(options["feed_interval"])]
        procs = {
            name: subprocess.Popen(cmd, cwd=root, env={**os.environ, "TRADESITE_COMPONENT": name})
            for name, cmd in roles.items()
        }
        self.stdout.write(self.style.SUCCESS(
            f"tradesite is running: http://127.0.0.1:{options['port']}/ (dashboard; admin under /{settings.ADMIN_URL})  "
            "(Ctrl-C stops everything)"))
        try:
            while all(p.poll() is None for p in procs.values()):
                time.sleep(0.5)
            dead = [n for n, p in procs.items() if p.poll() is not None]
            self.stderr.write(f"{', '.join(dead)} exited; stopping the rest")
        except KeyboardInterrupt:
            pass
        finally:
            for p in procs.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs.values():
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
