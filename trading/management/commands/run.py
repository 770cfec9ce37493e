"""`manage.py run`: migrate, create the demo login and data, then run web + worker + beat + market data + demo feed.

Once every role is up (/readyz answers 200) it prints where the site is and, last, the demo login, so that the login
is not lost in the roles' start-up logs."""

from __future__ import annotations

import ctypes
import io
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Collection, Iterable
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand


# How long the processes get to stop cleanly (a worker finishes its task at hand) before they are killed.
STOP_SECONDS = 20
# How long the roles get to report ready before the login is shown all the same.
READY_SECONDS = 120
_PR_SET_PDEATHSIG = 1


class _Stop(Exception):
    """SIGTERM or SIGHUP reached `run`: stop everything, as Ctrl-C does."""


def _raise_stop(signum: int, frame: Any) -> None:
    raise _Stop(signal.Signals(signum).name)


def _dies_with(parent: int) -> Callable[[], None] | None:
    """A child's pre-exec step (Linux): the kernel sends it SIGTERM when `run` dies without stopping it (SIGKILL, a
    crash), so no web, worker or beat is left running, orphaned, trading on its own."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child only calls it

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # `run` died before the line above: nobody would send the signal
            os.kill(os.getpid(), signal.SIGTERM)
    return arm


class Command(BaseCommand):
    help = ("Migrate, seed the demo, and run web, worker, beat, the market-data role and the demo price feed in the "
            "foreground.")

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--no-demo", action="store_true", help="do not seed demo data or run the demo feed")
        parser.add_argument("--feed-interval", type=float, default=1.0, help="seconds per replayed demo candle")

    def handle(self, *args: Any, **options: Any) -> None:
        call_command("migrate", interactive=False, verbosity=0)
        login = io.StringIO()  # seed_demo's lines, the demo login last: printed once every role is up
        if not options["no_demo"]:
            try:
                call_command("seed_demo", stdout=login)
            except BaseException:
                self.stdout.write(login.getvalue())  # a password created before the failure is not lost
                raise
            call_command("seed_demo_backtests")  # the strategies app's command (by name: no import upward)
        python, root = sys.executable, str(settings.BASE_DIR)
        roles = {
            "web": [python, "manage.py", "runserver", "--noreload", f"127.0.0.1:{options['port']}"],
            "worker": [python, "-m", "celery", "-A", "tradesite", "worker", "-Q", "execution,monitoring,strategies",
                       "-c", "2", "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "INFO"],
            "beat": [python, "-m", "celery", "-A", "tradesite", "beat", "-l", "INFO",
                     "--schedule", str(settings.VAR_DIR / "celerybeat-schedule")],
            # Venues' live prices and candles for what is in use (idle while only the demo feed is).
            "marketdata": [python, "manage.py", "marketdata"],
        }
        if not options["no_demo"]:
            roles["feed"] = [python, "manage.py", "demo_feed", "--interval", str(options["feed_interval"])]
        procs: dict[str, subprocess.Popen[bytes]] = {}
        arm = _dies_with(os.getpid())
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _raise_stop)
        try:
            for name, cmd in roles.items():
                procs[name] = subprocess.Popen(cmd, cwd=root, preexec_fn=arm, env={
                    **os.environ, "TRADESITE_COMPONENT": name, "LOG_FORMAT": settings.LOG_FORMAT})
            ready = roles_ready(procs.values(), f"http://127.0.0.1:{options['port']}/readyz", READY_SECONDS)
            if ready is False:
                self.stderr.write(f"not every role reported ready within {READY_SECONDS} s: "
                                  f"http://127.0.0.1:{options['port']}/readyz names what is missing")
            if ready is not None:  # None: a role exited (said below)
                self.stdout.write(self.style.SUCCESS(
                    f"tradesite is running: http://127.0.0.1:{options['port']}/ (dashboard; admin under "
                    f"/{settings.ADMIN_URL})  (Ctrl-C stops everything)"))
            if login.getvalue():  # shown even when a role failed: a password is printed only once
                self.stdout.write(self.style.WARNING(login.getvalue().rstrip("\n")))
            self.stdout.flush()
            while all(p.poll() is None for p in procs.values()):
                time.sleep(0.5)
            dead = [n for n, p in procs.items() if p.poll() is not None]
            self.stderr.write(f"{', '.join(dead)} exited; stopping the rest")
        except (KeyboardInterrupt, _Stop) as stop:
            self.stderr.write(f"{stop or 'Ctrl-C'}: stopping {', '.join(procs)}")
        finally:
            # A second signal must not cut the clean-up short and leave processes behind.
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)
            _stop_all(procs.values())


def roles_ready(procs: Collection[subprocess.Popen[bytes]], url: str, timeout: float) -> bool | None:
    """Wait until `url` (/readyz: database, broker, a worker of each queue, beat) answers 200: True; False after
    `timeout` seconds; None as soon as one of the processes has exited."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1: never through a proxy
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            return None
        try:
            with opener.open(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:  # not listening yet, or 503 (HTTPError) while a role is still starting
            pass
        time.sleep(0.5)
    return False


def _stop_all(procs: Iterable[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to each process still running, one deadline for all of them, then SIGKILL to what is left."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
