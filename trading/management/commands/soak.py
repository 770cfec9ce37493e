"""`manage.py soak --minutes N`: the whole platform under steady load for N minutes, with resource figures.

Runs web (gunicorn), an execution worker, a strategies+monitoring worker, beat, the demo candle replay and a second
replay that an RSI strategy evaluates candle by candle (the strategies queue) as child processes (as `run` and the
containers do), sends TradingView webhook alerts over HTTP at a steady rate, and every --sample seconds records RSS
and CPU of each process tree, the Celery queue depths, the webhook answer times, the strategy evaluations and the
signal-to-fill latencies of the signals received in that window. At the end it prints the windows, latency
percentiles and the growth between the first window after warm-up and the last one (memory should be flat).
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, UTC
from pathlib import Path
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db.models import Count

from exchanges.base import datetime_to_ms
from trading import services
from trading.models import PriceFeed, Signal, Strategy, VenueAccount

_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICK = os.sysconf("SC_CLK_TCK")
QUEUES = ("execution", "strategies", "monitoring")
PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")  # kombu's Redis lists, one per priority step
INDICATOR_SYMBOL = "XRP/USDT:USDT"
INDICATOR_TIMEFRAME_MS = 5 * 60 * 1000
INDICATOR_CANDLES = "XRP_USDT_USDT-5m-futures.csv"  # under data/ (data/README.md)


def replay_rows(rows: list[list[str]], *, count: int, first_ms: int) -> list[list[str]]:
    """`count` candles (timestamp,open,high,low,close,volume) on the 5-minute grid from `first_ms` (epoch ms).

    The rows play forwards, then backwards, and so on: a candle played backwards has its open and close swapped, so
    the price runs on without a jump however long the replay (a soak of any length never runs out of candles).
    """
    if not rows:
        raise ValueError("no candles to replay")
    forwards = [r[1:] for r in rows]
    backwards = [[c, h, lo, o, v] for _, o, h, lo, c, v in reversed(rows)]  # opens where the last one closed
    cycle = forwards + backwards
    return [[str(first_ms + i * INDICATOR_TIMEFRAME_MS), *cycle[i % len(cycle)]] for i in range(count)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tree(root: int) -> list[int]:
    """The pid and every descendant (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
        except OSError:
            continue
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _usage(root: int) -> tuple[float, float]:
    """(RSS in MiB, CPU seconds so far) of a process tree."""
    rss = cpu = 0.0
    for pid in _tree(root):
        try:
            with open(f"/proc/{pid}/statm") as fh:
                rss += int(fh.read().split()[1]) * _PAGE
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime
        except (OSError, IndexError, ValueError):
            continue
    return rss / 2**20, cpu


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Command(BaseCommand):
    help = "Run the platform under steady webhook + candle load for N minutes and report memory, CPU, queues, latency."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--minutes", type=float, required=True)
        parser.add_argument("--rate", type=float, default=2.0, help="webhook alerts per second")
        parser.add_argument("--sample", type=float, default=0, help="seconds per window (default: minutes*60/12)")
        parser.add_argument("--warmup", type=float, default=0,
                            help="seconds excluded before growth is measured (default: a quarter, at most 120 s)")
        parser.add_argument("--feed-interval", type=float, default=1.0, help="seconds per replayed candle")
        parser.add_argument("--web-workers", type=int, default=2)
        parser.add_argument("--json", default="", help="also write the figures to this file")

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DATABASE_URL or not settings.REDIS_URL:
            raise CommandError("soak needs DATABASE_URL (PostgreSQL) and REDIS_URL: it measures the deployed setup")
        if options["feed_interval"] <= 0:
            raise CommandError("--feed-interval must be positive (seconds per replayed candle)")
        seconds = options["minutes"] * 60
        sample = options["sample"] or max(5.0, seconds / 12)
        warmup = options["warmup"] or min(120.0, seconds / 4)
        call_command("migrate", interactive=False, verbosity=0)
        call_command("seed_demo")
        strategy, secret = self._soak_strategy()
        self._indicator_strategy()
        candles = self._indicator_candles(seconds=seconds, interval=options["feed_interval"])
        port = _free_port()
        procs = self._start(port, options, candles)
        try:
            self._wait_up(port, procs)
            report = self._drive(port, strategy, secret, procs, seconds=seconds, sample=sample, warmup=warmup,
                                 rate=options["rate"])
        finally:
            self._stop(procs)
        report["command"] = " ".join(["python manage.py soak"] + sys.argv[2:])
        self._print(report)
        if options["json"]:
            Path(options["json"]).write_text(json.dumps(report, indent=2, default=str))

    # ------------------------------------------------------------------------------------------- set-up

    def _soak_strategy(self) -> tuple[Strategy, str]:
        strategy = _started_strategy(
            account={"name": "soak-paper", "quote_asset": "BTC", "paper_initial_cash": "100", "max_leverage": "2"},
            strategy={"name": "soak webhook", "slug": "soak-webhook", "kind": "webhook", "symbol": "ETH/BTC",
                      "sizing_mode": "quantity", "sizing_value": "0.01"})
        secret = services.strategy_webhook_secret_rotate(strategy=strategy, by="soak")
        return strategy, secret

    def _indicator_strategy(self) -> Strategy:
        """An RSI strategy on the replayed XRP perp (its own USDT account), so strategy evaluation carries load."""
        return _started_strategy(
            account={"name": "soak-usdt", "quote_asset": "USDT", "paper_initial_cash": "100000", "max_leverage": "5"},
            strategy={"name": "soak RSI", "slug": "soak-rsi", "kind": "rsi", "symbol": INDICATOR_SYMBOL,
                      "timeframe": "5m", "params": {"period": 14}, "sizing_mode": "quantity", "sizing_value": "100"})

    def _indicator_candles(self, *, seconds: float, interval: float) -> Path:
        """Write this run's XRP replay: enough candles for the run, starting after the last one stored.

        Evaluations are once per strategy and bar, so a second soak on the same database replays bars of its own
        (later timestamps, same price path continued) instead of bars that were evaluated already.
        """
        with (settings.BASE_DIR / "data" / INDICATOR_CANDLES).open(newline="") as fh:
            rows = list(csv.reader(fh))[1:]
        last = apps.get_model("strategies", "Candle").objects.filter(  # replay_candles stores under the demo feed
            venue=PriceFeed.DEMO, symbol=INDICATOR_SYMBOL, timeframe="5m").order_by("-open_time").values_list(
            "open_time", flat=True).first()
        first_ms = int(rows[0][0]) if last is None else datetime_to_ms(last) + INDICATOR_TIMEFRAME_MS
        count = math.ceil((seconds + 300) / interval)  # the run, start-up and shutdown at one candle per interval
        path = settings.VAR_DIR / "soak" / "indicator-candles.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["timestamp", "open", "high", "low", "close", "volume"])
            writer.writerows(replay_rows(rows, count=count, first_ms=first_ms))
        return path

    def _start(self, port: int, options: dict[str, Any], candles: Path) -> dict[str, subprocess.Popen[bytes]]:
        python, root = sys.executable, str(settings.BASE_DIR)
        log_dir = settings.VAR_DIR / "soak"
        log_dir.mkdir(parents=True, exist_ok=True)
        celery = [python, "-m", "celery", "-A", "tradesite"]
        worker_flags = ["--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "INFO"]
        roles = {
            "web": [python, "-m", "gunicorn", "tradesite.wsgi:application", "-b", f"127.0.0.1:{port}",
                    "-w", str(options["web_workers"]), "--timeout", "30"],
            "worker-execution": celery + ["worker", "-Q", "execution", "-c", "2", "-n", f"soak-ex-{port}@localhost",
                                          *worker_flags],
            "worker-monitoring": celery + ["worker", "-Q", "strategies,monitoring", "-c", "1",
                                           "-n", f"soak-mon-{port}@localhost", *worker_flags],
            "beat": celery + ["beat", "-l", "INFO", "--schedule", str(log_dir / "celerybeat-schedule")],
            "feed": [python, "manage.py", "demo_feed", "--interval", str(options["feed_interval"])],
            # Each replayed candle closes, is stored, and the RSI strategy evaluates it on the strategies queue.
            "replay": [python, "manage.py", "replay_candles", "--symbol", INDICATOR_SYMBOL, "--timeframe", "5m",
                       "--file", str(candles),
                       "--speed", str(1 / options["feed_interval"])],
        }
        env = {**os.environ, "WEBHOOK_RATE_LIMIT_PER_IP": "1000000", "WEBHOOK_RATE_LIMIT_PER_STRATEGY": "1000000"}
        procs = {}
        for name, cmd in roles.items():
            out = (log_dir / f"{name}.out").open("wb")
            procs[name] = subprocess.Popen(cmd, cwd=root, env={**env, "TRADESITE_COMPONENT": name}, stdout=out,
                                           stderr=subprocess.STDOUT, start_new_session=True)
        return procs

    def _wait_up(self, port: int, procs: dict[str, subprocess.Popen[bytes]]) -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            dead = [n for n, p in procs.items() if p.poll() is not None]
            if dead:
                raise CommandError(f"{', '.join(dead)} exited at start (see {settings.VAR_DIR / 'soak'})")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
                    if r.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.5)
        raise CommandError("web did not become ready in 90 s")

    def _stop(self, procs: dict[str, subprocess.Popen[bytes]]) -> None:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)

    # ------------------------------------------------------------------------------------------- load + samples

    def _drive(self, port: int, strategy: Strategy, secret: str, procs: dict[str, subprocess.Popen[bytes]], *,
               seconds: float, sample: float, warmup: float, rate: float) -> dict[str, Any]:
        import redis

        stop = threading.Event()
        answers: list[tuple[float, int, float]] = []  # (monotonic time, status, seconds)
        lock = threading.Lock()

        def send() -> None:
            n, start = 0, time.monotonic()
            url = f"http://127.0.0.1:{port}/api/webhooks/tradingview/"
            while not stop.is_set():
                due = start + n / rate
                if (pause := due - time.monotonic()) > 0:
                    stop.wait(pause)
                    continue
                body = {"passphrase": secret, "strategy": strategy.slug, "ticker": "ETHBTC",
                        "action": "buy" if n % 2 == 0 else "close", "contracts": "0.01",
                        "id": f"soak-{port}-{n}", "time": datetime.now(UTC).isoformat()}
                n += 1
                sent = time.monotonic()
                try:
                    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                                 headers={"Content-Type": "application/json"})
                    with urllib.request.urlopen(req, timeout=10) as r:
                        status = r.status
                except urllib.error.HTTPError as exc:
                    status = exc.code
                except OSError:
                    status = 0
                with lock:
                    answers.append((sent, status, time.monotonic() - sent))

        sender = threading.Thread(target=send, daemon=True)
        began, began_wall = time.monotonic(), datetime.now(UTC)
        sender.start()
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)
        prefix = str(settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("global_keyprefix", ""))
        windows: list[dict[str, Any]] = []
        last_cpu = {name: _usage(p.pid)[1] for name, p in procs.items()}
        window_start, window_wall = began, began_wall
        while time.monotonic() - began < seconds:
            time.sleep(min(sample, seconds - (time.monotonic() - began)))
            now, now_wall = time.monotonic(), datetime.now(UTC)
            dead = [n for n, p in procs.items() if p.poll() is not None]
            if dead:
                stop.set()
                raise CommandError(f"{', '.join(dead)} died during the soak")
            row: dict[str, Any] = {"t": round(now - began, 1), "rss_mib": {}, "cpu_pct": {},
                                   "loadavg_1m": round(os.getloadavg()[0], 2)}  # the machine is shared
            for name, p in procs.items():
                rss, cpu = _usage(p.pid)
                row["rss_mib"][name] = round(rss, 1)
                row["cpu_pct"][name] = round(100 * (cpu - last_cpu[name]) / (now - window_start), 1)
                last_cpu[name] = cpu
            pipe = client.pipeline(transaction=False)
            for q in QUEUES:  # every priority list, as /metrics counts them
                for suffix in PRIORITY_SUFFIXES:
                    pipe.llen(prefix + q + suffix)
            lengths = pipe.execute()
            row["queue_depth"] = {q: sum(lengths[i * len(PRIORITY_SUFFIXES):(i + 1) * len(PRIORITY_SUFFIXES)])
                                  for i, q in enumerate(QUEUES)}
            with lock:
                mine = [a for a in answers if window_start <= a[0] < now]
            row["webhooks"] = len(mine)
            row["webhook_errors"] = sum(1 for a in mine if a[1] != 202)
            row["webhook_p95_ms"] = _ms(_pct([a[2] for a in mine], 0.95))
            row["strategy_evaluations"] = _evaluations().objects.filter(
                created_at__gte=window_wall, created_at__lt=now_wall).count()
            fills = self._latencies(window_wall, now_wall)
            row["signals_filled"] = len(fills)
            row["fill_p50_ms"], row["fill_p95_ms"] = _ms(_pct(fills, 0.5)), _ms(_pct(fills, 0.95))
            windows.append(row)
            self.stdout.write(json.dumps(row))
            window_start, window_wall = now, now_wall
        stop.set()
        sender.join(timeout=15)
        return self._summary(windows, answers, began_wall, warmup, rate, seconds)

    def _latencies(self, since: datetime, until: datetime) -> list[float]:
        rows = Signal.objects.filter(received_at__gte=since, received_at__lt=until, filled_at__isnull=False) \
            .values_list("received_at", "filled_at")
        return [(f - r).total_seconds() for r, f in rows if f is not None]  # none is, as filtered

    def _summary(self, windows: list[dict[str, Any]], answers: list[tuple[float, int, float]], began: datetime,
                 warmup: float, rate: float, seconds: float) -> dict[str, Any]:
        after = [w for w in windows if w["t"] > warmup] or windows[-1:]
        first, last = after[0], after[-1]
        growth = {name: round(last["rss_mib"][name] - first["rss_mib"][name], 1) for name in last["rss_mib"]}
        slope = {}
        for name in last["rss_mib"]:
            xs, ys = [w["t"] for w in after], [w["rss_mib"][name] for w in after]
            slope[name] = round(statistics.linear_regression(xs, ys).slope * 3600, 1) if len(after) > 2 else None
        fills = self._latencies(began, began + timedelta(seconds=seconds + 60))
        statuses: dict[str, int] = {}
        for _, status, _ in answers:
            statuses[str(status)] = statuses.get(str(status), 0) + 1
        by_status = dict(Signal.objects.filter(received_at__gte=began).values_list("status").annotate(
            n=Count("id")).order_by())
        return {
            "minutes": round(seconds / 60, 2), "rate_per_s": rate, "warmup_s": warmup, "windows": windows,
            "webhook_answers": statuses,
            "webhook_ms": {q: _ms(_pct([a[2] for a in answers], p)) for q, p in (("p50", .5), ("p95", .95),
                                                                                   ("p99", .99))},
            "signals_by_status": by_status,
            "strategy_evaluations": _evaluations().objects.filter(created_at__gte=began).count(),
            "strategy_signals": dict(Signal.objects.filter(received_at__gte=began, source=Signal.Source.STRATEGY)
                                     .values_list("status").annotate(n=Count("id")).order_by()),
            "fill_ms": {q: _ms(_pct(fills, p)) for q, p in (("p50", .5), ("p95", .95), ("p99", .99))},
            "max_queue_depth": {q: max(w["queue_depth"][q] for w in windows) for q in QUEUES},
            "rss_first_after_warmup_mib": first["rss_mib"], "rss_last_mib": last["rss_mib"],
            "rss_growth_mib": growth, "rss_slope_mib_per_hour": slope,
            "machine": {"cpus": os.cpu_count(), "loadavg_1m_mean": round(statistics.fmean(
                w["loadavg_1m"] for w in windows), 2), "loadavg_1m_max": max(w["loadavg_1m"] for w in windows)},
            "cpu_pct_mean": {n: round(statistics.fmean(w["cpu_pct"][n] for w in windows), 1)
                             for n in last["cpu_pct"]},
        }

    def _print(self, r: dict[str, Any]) -> None:
        w = self.stdout.write
        w(f"\nsoak: {r['minutes']} min at {r['rate_per_s']} alerts/s (+ demo feed); warm-up {r['warmup_s']:.0f} s")
        w(f"webhook answers {r['webhook_answers']}  webhook ms {r['webhook_ms']}")
        w(f"signals {r['signals_by_status']}  signal->fill ms {r['fill_ms']}")
        w(f"strategy evaluations {r['strategy_evaluations']}  strategy signals {r['strategy_signals']}")
        w(f"max queue depth {r['max_queue_depth']}  machine {r['machine']}")
        w(f"{'process':<18} {'rss first':>10} {'rss last':>10} {'growth':>8} {'MiB/h':>8} {'cpu %':>6}")
        for name in r["rss_last_mib"]:
            w(f"{name:<18} {r['rss_first_after_warmup_mib'][name]:>10} {r['rss_last_mib'][name]:>10} "
              f"{r['rss_growth_mib'][name]:>8} {str(r['rss_slope_mib_per_hour'][name]):>8} "
              f"{r['cpu_pct_mean'][name]:>6}")


def _evaluations() -> Any:
    """The strategies app's evaluation model, by name (trading does not import strategies; cf. call_command)."""
    return apps.get_model("strategies", "StrategyEvaluation")


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _started_strategy(*, account: dict[str, Any], strategy: dict[str, Any]) -> Strategy:
    """The soak's paper account and its started strategy, made on the first run and reused after (by name, slug)."""
    book = VenueAccount.objects.filter(name=account["name"]).first() or services.account_create(
        data={"venue": "paper", "network": "paper", **account}, by="soak")
    found = Strategy.objects.filter(slug=strategy["slug"]).first() or services.strategy_create(
        data={"account": book, "mode": "paper", **strategy}, by="soak")
    if found.status != Strategy.Status.ACTIVE:
        found = services.strategy_start(strategy=found, by="soak")
    return found
