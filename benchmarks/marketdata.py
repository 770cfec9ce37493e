"""The market-data role (issue 18) end to end: tick -> price visible, candle close -> signal stored, the role's memory.

    .venv/bin/python benchmarks/marketdata.py ticks   [--markets 50] [--rate 1000] [--flush 0.25,0.05,0.02]
                                                      [--seconds 60] [--warmup 5]
    .venv/bin/python benchmarks/marketdata.py candles [--strategies 100] [--markets 10] [--rounds 20] [--history 5000]
    .venv/bin/python benchmarks/marketdata.py memory  [--minutes 3] [--rate 1000] [--markets 50]
    .venv/bin/python benchmarks/marketdata.py all     # the three in turn, each with its own database

Every mode creates a throwaway database (`tradesite_bench_marketdata`, migrated, dropped after) and flushes a
dedicated Redis db (/10), runs the loopback Hyperliquid websocket (tests/fakes/hyperliquid_ws.py) in a child process
and the real role, `manage.py marketdata`, as a process of its own, pointed at the fake by
HYPERLIQUID_PUBLIC_ENDPOINT (what a deployment sets for a mirror). Paper accounts price from the `hyperliquid` feed
and their started strategies are what the role follows. The paper venue still lists six fixed markets (issue 18's
"markets from the venue" is not built yet), so this script gives it the benchmark's Hyperliquid perps
(`paper_markets_extend`) in this process and in the worker before they start; the role reads only the rows.

How a moment is observed without the observer dominating: in its own database only, the script adds row triggers
that `pg_notify` each MarketPrice upsert, candle, strategy evaluation and signal insert. PostgreSQL delivers a
notification when its transaction COMMITS, so the moment a listening connection of this process receives it (a
thread blocked on the socket, stamping `time.time()`) is the moment another connection can read the row: no
polling. Per row the trigger costs a few microseconds in the role's own transaction. The fake stamps `time.time()`
just before handing each frame to its socket (one machine, one clock).

ticks: the fake sends allMids at `--rate` price changes per second over `--markets` markets: `--rate / --per-frame`
frames a second (default 1,000), each frame carrying every market (as the venue's allMids carries every coin) with
`--per-frame` of them (default 1, in turn) at a new price. Every price is distinct and increasing (1,000,000 + the
tick's number), so a notified price names its tick. A tick is visible when its price or a later one of the same
market is committed (the role coalesces: most ticks are overwritten before a flush and never written themselves);
its latency is that commit's notification minus the fake's send. Run once per `--flush` value (the role's
`--flush-seconds`, MARKETDATA_FLUSH_SECONDS; 0.25 by default), `--warmup` seconds not counted. Reported with it:
the role's flush interval seen from the notifications (the same-run reference: coalescing puts a tick anywhere in
that interval, so p99 cannot be below ~0.99 of it), where the time of the written ticks goes (fake -> the role's
stream, stamped by it in MarketPrice.time with ms resolution; -> the row written by the flush; -> committed and
seen), the time from one flush's commit to the next flush's statement, one flush's two parts timed in this process
just before the run (the upsert; `price_arrived` for every market), and the CPU of the role, of its PostgreSQL
backend, of the fake and of this process. `--role-variant no-stop-reads` runs, as a what-if, a role whose flush
leaves out `price_arrived`'s stop read per market written (everything else as is).

candles: `--strategies` RSI strategies (1m) on `--markets` markets, one per market in each of strategies/markets
paper accounts, with a real `celery worker -Q strategies,execution -c 2 -P prefork`. RSI(2) with oversold 40 /
overbought 60 and shorts allowed, over a store warmed with `--history` candles per market whose closes alternate
100 / 101: RSI(2) then alternates ~33 / ~67, so every closed bar crosses a level and every strategy emits a signal
whatever its position (up: open_long, or close a short; down: close a long, or open_short). A round: the fake
sends, for every market, the first update of the next 1m bar (what closes the forming one on the venue's stream);
latency from that send (per market) to each strategy's Signal row committed; also the candle stored (the role's
part), the evaluation task's start and the evaluation row. The next round starts once every signal of the round
is executed (or otherwise final), after a random pause. Allmids keep flowing (`--mids-rate` frames a second) so
that prices stay fresh for the fills.

memory: the role at `--rate` for `--minutes` (after `--idle-seconds` at one tick a second, the same-run
reference; with no message at all its stale detector would recycle the socket every 10 s), its RSS
(/proc/PID/status VmRSS) sampled every `--sample-every` seconds: idle, start, end, max, least-squares slope after
the first minute, and the residual noise around that line. The latency of the run's ticks is reported as well.

Everything is bounded in time and cleaned up (role, worker, fake stopped; database dropped; Redis db flushed) on
success, failure, Ctrl-C or SIGTERM. Load averages are recorded (the machine may be shared). The last stdout line
is JSON. Results: docs/benchmarks.md, "marketdata".
"""

from __future__ import annotations

import argparse
import array
import contextlib
import json
import math
import multiprocessing
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
for _path in (ROOT, BENCH):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import signal_to_fill as stf  # noqa: E402  (database, Redis, worker, CPU and deadline helpers)

FEED = "hyperliquid"
QUOTE = "USDC"
PRICE0 = 1_000_000  # a tick's price is PRICE0 + its number
NAMED = ("BTC", "ETH", "SOL", "AVAX", "BNB", "LTC", "XRP", "LINK", "ARB", "DOGE")
MINUTE_MS = 60_000
CHANNEL = "bench_md"
ROLE_APP = "bench-marketdata-role"  # PGAPPNAME of the role: its backend is found in pg_stat_activity
TICK_TARGET_P99_MS = 50.0
CANDLE_TARGET_P99_MS = 1000.0
RSI_PARAMS = {"period": 2, "oversold": 40, "overbought": 60, "allow_short": True}
LOW, HIGH = Decimal("100"), Decimal("101")  # the alternating closes of the candles

# Row triggers of the benchmark database only: each notification is delivered when its transaction commits.
PROBES_SQL = f"""
CREATE FUNCTION bench_md_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE now_s text := extract(epoch from clock_timestamp())::text;
BEGIN
    IF TG_TABLE_NAME = 'trading_marketprice' THEN
        PERFORM pg_notify('{CHANNEL}', concat_ws(' ', 'P', NEW.symbol, NEW.price, extract(epoch from NEW.time), now_s,
                                                txid_current()));
    ELSIF TG_TABLE_NAME = 'strategies_candle' THEN
        PERFORM pg_notify('{CHANNEL}', concat_ws(' ', 'C', NEW.symbol, extract(epoch from NEW.open_time), now_s));
    ELSIF TG_TABLE_NAME = 'strategies_strategyevaluation' THEN
        PERFORM pg_notify('{CHANNEL}', concat_ws(' ', 'E', NEW.strategy_id, extract(epoch from NEW.candle_open_time),
                                                extract(epoch from NEW.created_at), now_s));
    ELSE
        PERFORM pg_notify('{CHANNEL}', concat_ws(' ', 'S', NEW.id, NEW.strategy_id, NEW.action, NEW.idempotency_key,
                                                now_s));
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER bench_md AFTER INSERT OR UPDATE ON trading_marketprice FOR EACH ROW
    WHEN (NEW.feed = '{FEED}') EXECUTE FUNCTION bench_md_notify();
CREATE TRIGGER bench_md AFTER INSERT ON strategies_candle FOR EACH ROW
    WHEN (NEW.venue = '{FEED}') EXECUTE FUNCTION bench_md_notify();
CREATE TRIGGER bench_md AFTER INSERT ON strategies_strategyevaluation FOR EACH ROW EXECUTE FUNCTION bench_md_notify();
CREATE TRIGGER bench_md AFTER INSERT ON trading_signal FOR EACH ROW
    WHEN (NEW.source = 'strategy') EXECUTE FUNCTION bench_md_notify();
"""

# The worker's launcher: the paper venue gets the benchmark's markets before Celery starts (the pool processes are
# forked from it), nothing else changed.
WORKER_LAUNCHER = (
    "import sys\n"
    "sys.path[:0] = [{root!r}, {bench!r}]\n"
    "import marketdata\n"
    "marketdata.paper_markets_extend({names!r})\n"
    "from celery.__main__ import main\n"
    "sys.argv[0] = 'celery'\n"
    "sys.exit(main())\n"
)


# `--role-variant no-stop-reads` (a what-if, never the recorded default): the role with price_arrived's stop reads
# left out of its flush, i.e. one upsert per flush and nothing after it; what a flush costs if those reads were one
# query for all markets, or left the flush's thread.
ROLE_LAUNCHER_NO_STOP_READS = (
    "import os, sys\n"
    "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'tradesite.settings')\n"
    "import django\n"
    "django.setup()\n"
    "from strategies import feeds\n"
    "from trading.prices import prices_store\n"
    "def prices_write(feed, ticks):\n"
    "    prices_store(feed, [(t.symbol, t.price, t.time) for t in ticks])\n"
    "    return 0\n"
    "feeds.prices_write = prices_write\n"
    "from django.core.management import call_command\n"
    "call_command('marketdata', *sys.argv[1:])\n"
)


def coins(count: int) -> list[str]:
    """The benchmark's market names: ten of the venue's, then made-up ones."""
    return list(NAMED[:count]) + [f"X{i:03d}" for i in range(max(0, count - len(NAMED)))]


def symbol_of(coin: str) -> str:
    return f"{coin}/{QUOTE}:{QUOTE}"


def paper_markets_extend(names: Sequence[str]) -> None:
    """Let the paper venue trade these Hyperliquid perps (quoted in USDC), as a paper account on a venue's feed will
    once it takes that venue's markets (issue 18); today it lists six fixed markets."""
    from exchanges import paper
    from exchanges.base import Market

    known = {m.symbol for m in paper.DEFAULT_MARKETS}
    extra = tuple(
        Market(symbol=symbol_of(c), base=c, quote=QUOTE, tick_size=Decimal("0.0001"), lot_size=Decimal("0.001"),
               min_qty=Decimal("0.001"), min_notional=Decimal("1"), max_leverage=Decimal("10"), kind="perp",
               maker_fee=Decimal("0.00015"), taker_fee=Decimal("0.00045"))
        for c in names if symbol_of(c) not in known)
    paper.DEFAULT_MARKETS = paper.DEFAULT_MARKETS + extra
    connectors = sys.modules.get("trading.connectors")
    if connectors is not None:
        connectors.DEFAULT_MARKETS = paper.DEFAULT_MARKETS  # type: ignore[attr-defined]


def markets_provide(names: Sequence[str]) -> str:
    """Make the benchmark's markets tradable on paper accounts on the hyperliquid feed; say how.

    Where paper accounts on a venue's feed trade the markets stored for that feed (trading/feedmarkets.py), they are
    stored for it (the websocket fake has no REST side to load them from); where the paper venue lists its fixed
    markets, `paper_markets_extend` (here before the accounts are made, and in the worker's launcher)."""
    try:
        from trading.feedmarkets import feed_markets_store
    except ImportError:
        return "paper venue's fixed markets extended"
    from django.utils import timezone

    from exchanges import paper

    paper_markets_extend(names)
    added = [m for m in paper.DEFAULT_MARKETS if m.symbol in {symbol_of(c) for c in names}]
    feed_markets_store(FEED, added, now=timezone.now())
    return "stored as the hyperliquid feed's markets"


def summary(values: Sequence[float]) -> dict[str, float | None]:
    out = stf._summary(values)
    out["p90"] = None if not values else round(stf._pct(values, 90) or 0.0, 2)
    out["mean"] = None if not values else round(sum(values) / len(values), 2)
    return out


# --------------------------------------------------------------------------------------------- the fake venue


def venue_main(pipe: Connection, compression: str | None) -> None:
    """The child process: the loopback venue, driven by (command, ...) tuples from the pipe."""
    import logging

    logging.getLogger("websockets").setLevel(logging.CRITICAL)  # the role's REST backfill knocks on the ws port
    from tests.fakes.hyperliquid_ws import FakeHyperliquidWs, candle_frame

    fake = FakeHyperliquidWs(compression=compression).start()
    pipe.send(fake.base_url)
    background: tuple[threading.Thread, threading.Event] | None = None

    def background_stop() -> None:
        nonlocal background
        if background is not None:
            background[1].set()
            background[0].join(timeout=5)
            background = None

    while True:
        command, *args = pipe.recv()
        if command == "subscribed":
            wanted, timeout = set(args[0]), args[1]
            deadline = time.monotonic() + timeout
            while not any(wanted <= subs for subs in fake.subscriptions()) and time.monotonic() < deadline:
                time.sleep(0.02)
            pipe.send(any(wanted <= subs for subs in fake.subscriptions()))
        elif command == "pace":
            pipe.send(_pace(fake, *args))
        elif command == "background":
            background_stop()
            names, rate = args
            if rate:
                stop = threading.Event()
                thread = threading.Thread(target=_background, args=(fake, names, rate, stop), daemon=True)
                thread.start()
                background = (thread, stop)
            pipe.send(None)
        elif command == "candles":
            stamps, sent = [], 0
            for coin, data in args[0]:
                text = candle_frame(data)
                stamps.append(time.time())
                sent += fake.flood([text], to=("candle", coin, "1m"))
            pipe.send((stamps, sent))
        elif command == "stop":
            background_stop()
            fake.stop()
            pipe.send(None)
            return


def _pace(fake: Any, names: list[str], rate: float, per_frame: int, seconds: float, start: int) -> dict[str, Any]:
    """Send allMids frames on a fixed schedule: frame f moves `per_frame` markets (in turn) to new prices; the send
    stamp of each frame, its lag behind the schedule, and frames that reached no connection."""
    from tests.fakes.hyperliquid_ws import mids_frame

    count = round(seconds * rate / per_frame)
    interval = per_frame / rate
    m = len(names)
    mids = {name: str(PRICE0 + start - m + i) for i, name in enumerate(names)}  # older than this run's ticks
    stamps = array.array("d")
    lags: list[float] = []
    unsent = 0
    begin = time.perf_counter() + 0.02
    for f in range(count):
        due = begin + f * interval
        wait = due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        base = start + f * per_frame
        for j in range(per_frame):
            mids[names[(base + j) % m]] = str(PRICE0 + base + j)
        frame = mids_frame(mids)
        lags.append((time.perf_counter() - due) * 1000)
        stamps.append(time.time())
        if fake.flood([frame]) == 0:
            unsent += 1
    elapsed = time.perf_counter() - begin
    return {"stamps": stamps.tobytes(), "lag_ms": summary(lags), "unsent": unsent, "frames": count,
            "seconds": round(elapsed, 3)}


def _background(fake: Any, names: list[str], rate: float, stop: threading.Event) -> None:
    """allMids at `rate` frames a second around the candles' prices, until stopped (keeps the prices fresh)."""
    n = 0
    while not stop.wait(1 / rate):
        n += 1
        fake.push_mids({name: f"100.{(n + i) % 10}5" for i, name in enumerate(names)})


class Venue:
    """The fake venue's child process, seen from here."""

    def __init__(self, compression: str | None = "deflate") -> None:
        context = multiprocessing.get_context("spawn")
        self.pipe, child = context.Pipe()
        self.proc = context.Process(target=venue_main, args=(child, compression), daemon=True)
        self.proc.start()
        if not self.pipe.poll(60):
            raise RuntimeError("the fake venue did not start in 60 s")
        self.base_url: str = self.pipe.recv()

    def ask(self, *command: Any, timeout: float = 60, meanwhile: Callable[[], None] | None = None) -> Any:
        self.pipe.send(command)
        deadline = time.monotonic() + timeout
        while not self.pipe.poll(0.2):
            if meanwhile is not None:
                meanwhile()
            if not self.proc.is_alive():
                raise RuntimeError("the fake venue died")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the fake venue did not answer {command[0]!r} in {timeout:g} s")
        return self.pipe.recv()

    def subscribed(self, subs: set[tuple[str, ...]], timeout: float = 60) -> None:
        if not self.ask("subscribed", sorted(subs), timeout, timeout=timeout + 10):
            raise RuntimeError(f"the role did not subscribe {len(subs)} channel(s) in {timeout:g} s")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.ask("stop", timeout=20)
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.kill()


# --------------------------------------------------------------------------------------------- the role


@dataclass
class Role:
    """`manage.py marketdata` as its own process (what `make run` and compose start)."""

    env: dict[str, str]
    log_path: Path
    flush: float | None = None  # None: MARKETDATA_FLUSH_SECONDS
    variant: str = "as-is"
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.variant == "no-stop-reads":
            command = [sys.executable, "-c", ROLE_LAUNCHER_NO_STOP_READS]
        else:
            command = [sys.executable, "manage.py", "marketdata"]
        if self.flush is not None:
            command += ["--flush-seconds", f"{self.flush:g}"]
        self.proc = subprocess.Popen(
            command, cwd=ROOT, env={**self.env, "TRADESITE_COMPONENT": "marketdata", "PGAPPNAME": ROLE_APP},
            stdout=self.log_path.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=stf._pdeathsig)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def cpu_s(self) -> float:
        got = stf._cpu_of(self.pid)
        return got[1] if got else 0.0

    def stop(self) -> None:
        """SIGTERM (the role writes what is pending and stops), SIGKILL after 20 s."""
        if self.proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self.proc = None

    def log_count(self, needle: str) -> int:
        if not self.log_path.exists():
            return 0
        return self.log_path.read_text(errors="replace").count(needle)

    def errors_logged(self) -> int:
        """ERROR lines in the role's log, the start's failed REST backfills (expected here) left out."""
        return _errors_in(self.log_path, skip="backfill of")


_ERROR_LINE = re.compile(r'"level": "ERROR"|^\S+ ERROR |^\[[^]]*ERROR')


def _errors_in(path: Path, skip: str | None = None) -> int:
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text(errors="replace").splitlines()
               if _ERROR_LINE.search(line) and (skip is None or skip not in line))


@dataclass
class Worker(stf.Worker):
    """The strategies and execution queues in one worker; the paper venue with the benchmark's markets."""

    names: tuple[str, ...] = ()
    queues: str = "strategies,execution"

    def start(self) -> None:
        launcher = WORKER_LAUNCHER.format(root=str(ROOT), bench=str(BENCH), names=list(self.names))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", launcher, "-A", "tradesite", "worker", "-Q", self.queues, "-c",
             str(self.concurrency), "-P", self.pool, "-n", f"bench-md-{self.queues.replace(',', '-')}-{os.getpid()}"
             "@localhost", "--without-gossip",
             "--without-mingle", "--without-heartbeat", "--loglevel", "WARNING"],
            cwd=ROOT, env={**self.env, "TRADESITE_COMPONENT": "worker"}, stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=stf._pdeathsig,
        )

    def errors_logged(self) -> int:
        return _errors_in(self.log_path)

    def cpu_s(self) -> float:
        """CPU seconds of the worker's process group so far."""
        if self.proc is None:
            return 0.0
        total = 0.0
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                got = stf._cpu_of(int(entry.name))
                if got is not None and got[0] == self.proc.pid:
                    total += got[1]
        return total


# --------------------------------------------------------------------------------------------- observation


class Listener(threading.Thread):
    """LISTENs on the probes' channel and stamps each notification as it arrives (after its transaction commits)."""

    def __init__(self, dsn: str) -> None:
        super().__init__(name="bench-md-listener", daemon=True)
        self.dsn = dsn
        self.rows: list[tuple[float, str]] = []
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self.backend_pid = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        import psycopg

        try:
            with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
                conn.execute(f"LISTEN {CHANNEL}")
                self.backend_pid = conn.info.backend_pid
                self.ready.set()
                append, clock = self.rows.append, time.time
                while not self.stopping.is_set():
                    for note in conn.notifies(timeout=0.5):
                        append((clock(), note.payload))
        except BaseException as exc:  # noqa: BLE001 - surfaced by the main thread
            self.error = exc
            self.ready.set()

    def start_listening(self) -> None:
        self.start()
        self.ready.wait(30)
        if self.error is not None or not self.backend_pid:
            raise RuntimeError(f"the listener did not start: {self.error!r}")

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)


class BackendCpu:
    """CPU seconds of the PostgreSQL backends of one application name (looked up as connections come and go)."""

    def __init__(self, dsn: str, app: str) -> None:
        import psycopg

        self.conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
        self.app = app
        self.seen: dict[int, float] = {}

    def sample(self) -> float:
        for (pid,) in self.conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", [self.app]):
            got = stf._cpu_of(int(pid))
            if got is not None:
                self.seen[int(pid)] = got[1]
        return sum(self.seen.values())

    def close(self) -> None:
        self.conn.close()


@dataclass
class Usage:
    """CPU and load at one moment: the role, its backend, the machine."""

    at: float
    role: float
    backend: float
    fake: float
    bench: float
    busy: float
    total: float
    load: tuple[float, float, float]

    @classmethod
    def take(cls, role: Role, backend: BackendCpu, venue: Venue) -> Usage:
        busy, total = stf._machine_cpu()
        fake = stf._cpu_of(venue.proc.pid) if venue.proc.pid else None
        own = stf._cpu_of(os.getpid())
        return cls(time.monotonic(), role.cpu_s(), backend.sample(), fake[1] if fake else 0.0,
                   own[1] if own else 0.0, busy, total, os.getloadavg())


def usage_between(a: Usage, b: Usage) -> dict[str, Any]:
    wall = max(b.at - a.at, 1e-9)
    return {"role_cpu_cores": round((b.role - a.role) / wall, 3),
            "role_backend_cpu_cores": round((b.backend - a.backend) / wall, 3),
            "fake_cpu_cores": round((b.fake - a.fake) / wall, 3),
            "bench_process_cpu_cores": round((b.bench - a.bench) / wall, 3),
            "machine_busy_pct": round(100 * (b.busy - a.busy) / max(b.total - a.total, 1e-9), 1),
            "load_before": [round(x, 2) for x in a.load], "load_after": [round(x, 2) for x in b.load]}


# --------------------------------------------------------------------------------------------- set-up


@dataclass
class Context:
    """One mode's database, Redis db, fake venue, listener and logs; everything undone by `stack`."""

    args: argparse.Namespace
    stack: contextlib.ExitStack
    var_dir: Path
    env: dict[str, str]
    venue: Venue
    listener: Listener
    dsn: str


def context_open(args: argparse.Namespace, stack: contextlib.ExitStack, build: Callable[[], None]) -> Context:
    """A fresh database (migrated, fixtures built by `build`, probes installed), Redis flushed, the fake and the
    listener started."""
    var_dir = Path(tempfile.mkdtemp(prefix="tradesite-bench-md-"))
    stack.callback(shutil.rmtree, var_dir, True)
    if args.keep_logs:  # the role's and workers' logs, copied before the directory goes
        keep = Path(args.keep_logs)
        keep.mkdir(parents=True, exist_ok=True)
        stack.callback(lambda: [shutil.copy(log, keep / log.name) for log in var_dir.glob("*.log")])
    venue = Venue(compression=None if args.no_compression else "deflate")
    stack.callback(venue.stop)
    env = stf.bench_env(args, var_dir) | {
        "HYPERLIQUID_PUBLIC_ENDPOINT": venue.base_url, "DEBUG": "0", "TRADESITE_NETWORK_GUARD": "loopback",
        "PYTHONPATH": str(ROOT)}
    os.environ.update(env)
    stf.db_create(args)
    stack.callback(stf.db_drop, args)
    stf.migrate(env)
    stf.redis_flush(args.redis_url)
    stack.callback(stf.redis_flush, args.redis_url)

    import django

    django.setup()
    from django.db import connections

    stack.callback(connections.close_all)
    build()
    connections.close_all()
    dsn = f"{args.pg_url.rstrip('/')}/{args.db_name}"
    import psycopg

    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute(PROBES_SQL)  # type: ignore[arg-type]
    listener = Listener(dsn)
    listener.start_listening()
    stack.callback(listener.stop)
    return Context(args=args, stack=stack, var_dir=var_dir, env=env, venue=venue, listener=listener, dsn=dsn)


def accounts_create(count: int) -> list[Any]:
    from trading import services

    return [services.account_create(data={
        "name": f"bench-md-{i}", "venue": "paper", "network": "paper", "price_feed": FEED,
        "paper_initial_cash": "1000000000", "max_leverage": "5"}, by="benchmark") for i in range(count)]


def strategy_make(account: Any, coin: str, *, kind: str, slug: str) -> Any:
    from trading import services

    data: dict[str, Any] = {"name": slug, "slug": slug, "kind": kind, "symbol": symbol_of(coin), "account": account,
                            "mode": "paper", "sizing_mode": "quantity", "sizing_value": "0.1"}
    if kind == "rsi":
        data |= {"timeframe": "1m", "params": dict(RSI_PARAMS)}
    return services.strategy_start(strategy=services.strategy_create(data=data, by="benchmark"), by="benchmark")


def ticks_fixtures(names: Sequence[str], accounts: int) -> None:
    """Paper accounts on the hyperliquid feed, one started webhook strategy per market, markets dealt in turn."""
    print(f"markets: {markets_provide(names)}", flush=True)
    made = accounts_create(accounts)
    for i, coin in enumerate(names):
        strategy_make(made[i % accounts], coin, kind="webhook", slug=f"bench-md-{coin.lower()}")


# --------------------------------------------------------------------------------------------- ticks


def flush_reference(names: Sequence[str], reps: int = 7) -> dict[str, Any]:
    """What one flush of every market costs, timed in this process against the same database while the role is
    stopped: the upsert (`prices_store`, written under another feed so that the probes stay quiet) and the stop
    reads after it (`price_arrived` per market, as `strategies.feeds.prices_write` calls it). Medians of `reps`, wall
    and this thread's CPU, in ms."""
    from django.db import connection
    from django.utils import timezone

    from trading.prices import prices_store
    from trading.tasks import price_arrived

    parts: dict[str, list[tuple[float, float]]] = {"upsert": [], "stop_reads": []}
    for rep in range(reps + 1):
        now = timezone.now()
        rows = [(symbol_of(c), Decimal(PRICE0 + rep), now) for c in names]
        wall, cpu = time.perf_counter(), time.thread_time()
        prices_store("hyperliquid-testnet", rows)
        upsert = ((time.perf_counter() - wall) * 1000, (time.thread_time() - cpu) * 1000)
        wall, cpu = time.perf_counter(), time.thread_time()
        for symbol, price, _ in rows:
            price_arrived(symbol, price, FEED)
        reads = ((time.perf_counter() - wall) * 1000, (time.thread_time() - cpu) * 1000)
        if rep:  # the first builds the connection and the statements' caches
            parts["upsert"].append(upsert)
            parts["stop_reads"].append(reads)
    connection.close()
    return {name: {"wall_ms": round(stf._pct([w for w, _ in v], 50) or 0.0, 2),
                   "cpu_ms": round(stf._pct([c for _, c in v], 50) or 0.0, 2)} for name, v in parts.items()} | {
        "markets": len(names)}


def ticks_run(ctx: Context, names: list[str], *, flush: float | None, rate: float, seconds: float, warmup: float,
              start: int, label: str, idle_seconds: float = 0.0,
              sample_every: float = 0.0) -> tuple[dict[str, Any], int]:
    """Start the role, pace ticks, stop it; the figures and the next free tick number."""
    args = ctx.args
    reference = flush_reference(names)
    role = Role(ctx.env, ctx.var_dir / "role.log", flush=flush, variant=args.role_variant)
    backend = BackendCpu(ctx.dsn, ROLE_APP)
    role.start()
    try:
        ctx.venue.subscribed({("allMids",)})
        samples: list[tuple[float, int]] = []  # (seconds since the load started, RSS kB)
        idle: list[int] = []
        idle_result: dict[str, Any] | None = None
        if idle_seconds:
            next_at = [time.monotonic()]

            def idle_sample() -> None:
                if time.monotonic() >= next_at[0]:
                    idle.append(role.rss_kb())
                    next_at[0] += sample_every

            idle_result = ctx.venue.ask("pace", names, 1.0, 1, idle_seconds, start, timeout=idle_seconds + 60,
                                        meanwhile=idle_sample)
            idle.append(role.rss_kb())
            start += idle_result["frames"] + len(names)
        rows_from = len(ctx.listener.rows)
        before = Usage.take(role, backend, ctx.venue)
        load_started = time.monotonic()
        next_sample = [load_started]

        def sample() -> None:
            if not role.alive():
                raise RuntimeError(f"the role died:\n{role.log_path.read_text(errors='replace')[-3000:]}")
            if time.monotonic() >= next_sample[0]:
                backend.sample()  # the role's connection is replaced every CONN_MAX_AGE (600 s): keep its CPU
                if sample_every:
                    samples.append((round(time.monotonic() - load_started, 2), role.rss_kb()))
                next_sample[0] += sample_every or 5.0

        sent = ctx.venue.ask("pace", names, rate, args.per_frame, warmup + seconds, start,
                             timeout=(warmup + seconds) * 1.5 + 60, meanwhile=sample)
        after = Usage.take(role, backend, ctx.venue)
        if sample_every:
            samples.append((round(time.monotonic() - load_started, 2), role.rss_kb()))
        time.sleep(max(2.0, 4 * (flush if flush is not None else 0.25)))  # the last flushes commit
        rows = ctx.listener.rows[rows_from:]
    finally:
        role.stop()
        backend.close()
    result = ticks_analyse(sent, rows, names, per_frame=args.per_frame, start=start,
                           warm_ticks=round(warmup * rate))
    result = {"label": label, "role_variant": args.role_variant,
              "flush_seconds": flush if flush is not None else "default (0.25)",
              "rate_per_s": rate, "markets": len(names), "per_frame": args.per_frame,
              "frames_per_s": round(rate / args.per_frame, 1), "seconds": seconds, "warmup_s": warmup,
              "sent_frames": sent["frames"], "send_seconds": sent["seconds"], "unsent_frames": sent["unsent"],
              "sender_lag_ms": sent["lag_ms"], **result, "flush_reference_in_process": reference,
              **usage_between(before, after),
              "role_errors_logged": role.errors_logged()}
    if sample_every:
        result["rss"] = rss_analyse(samples, idle)
    next_start = start + sent["frames"] * args.per_frame + 2 * len(names)
    return result, next_start


def ticks_analyse(sent: dict[str, Any], rows: Sequence[tuple[float, str]], names: Sequence[str], *, per_frame: int,
                  start: int, warm_ticks: int) -> dict[str, Any]:
    """Per tick: the first committed price of its market at least as new as it, minus its send stamp."""
    send = array.array("d")
    send.frombytes(sent["stamps"])
    m = len(names)
    index = {symbol_of(n): i for i, n in enumerate(names)}
    count = len(send) * per_frame
    notes: list[list[tuple[float, int]]] = [[] for _ in range(m)]  # per market: (seen, tick) in arrival order
    # Per flush (txid), over its measured rows: first seen, its statement's time, the role's stamp (the receipt
    # time of the last frame its stream had read: every row of a flush carries it), the newest tick written (the
    # one that last frame moved) and the rows.
    flushes: dict[str, list[float]] = {}
    for seen, payload in rows:
        parts = payload.split(" ")
        if parts[0] != "P":
            continue
        _, symbol, price, role_at, db_at, txid = parts
        i = index.get(symbol)
        if i is None:
            continue
        tick = int(Decimal(price)) - PRICE0 - start
        notes[i].append((seen, tick))
        if warm_ticks <= tick < count:
            got = flushes.setdefault(txid, [seen, float(db_at), float(role_at), tick, 0])
            got[0], got[1], got[3] = min(got[0], seen), min(got[1], float(db_at)), max(got[3], tick)
            got[4] += 1
    latencies: list[float] = []
    per_second: dict[int, list[float]] = {}
    missing = 0
    for i in range(m):
        mine, p = notes[i], 0
        first = (i - start) % m
        for tick in range(first, count, m):
            while p < len(mine) and mine[p][1] < tick:
                p += 1
            if tick < warm_ticks:
                continue
            if p == len(mine):
                missing += 1
                continue
            sent_at = send[tick // per_frame]
            latency = (mine[p][0] - sent_at) * 1000
            latencies.append(latency)
            per_second.setdefault(int(sent_at), []).append(latency)
    ordered = sorted(flushes.values())
    stages: dict[str, list[float]] = {
        # the fake's send of the last frame the role read before the flush -> the role's stream parsed it (ms)
        "last_frame_to_role_stream": [(f[2] - send[int(f[3]) // per_frame]) * 1000 for f in ordered],
        # -> the flush's statement wrote the rows (the rest of the flush period, then the statement)
        "to_row_written": [(f[1] - f[2]) * 1000 for f in ordered],
        # -> committed and its notification received here
        "to_committed_seen": [(f[0] - f[1]) * 1000 for f in ordered],
    }
    starts = [f[0] for f in ordered]
    intervals = [(b - a) * 1000 for a, b in zip(starts, starts[1:])]
    # From one flush's commit (seen) to the next flush's statement: the role's work after a commit (price_arrived:
    # one stop read per market written), its sleep of --flush-seconds, and the next write's preparation.
    gaps = [(b[1] - a[0]) * 1000 for a, b in zip(ordered, ordered[1:])]
    worst_seconds = sorted(((max(v), k) for k, v in per_second.items()), reverse=True)[:3]
    return {
        "ticks_measured": len(latencies), "not_visible": missing,
        "latency_ms": summary(latencies),
        "flushes": len(starts), "flush_interval_ms": summary(intervals),
        "commit_to_next_write_ms": summary(gaps),
        "markets_per_flush": round(sum(f[4] for f in ordered) / len(ordered), 1) if ordered else None,
        "flush_stages_ms": {k: summary(v) for k, v in stages.items()},
        "worst_seconds": [{"at": datetime.fromtimestamp(k, tz=UTC).isoformat(timespec="seconds"),
                           "max_ms": round(v, 1)} for v, k in worst_seconds],
        "p99_per_minute_ms": _per_minute(per_second),
    }


def _per_minute(per_second: dict[int, list[float]]) -> list[float]:
    if not per_second:
        return []
    first = min(per_second)
    minutes: dict[int, list[float]] = {}
    for second, values in per_second.items():
        minutes.setdefault((second - first) // 60, []).extend(values)
    return [round(stf._pct(minutes[k], 99) or 0.0, 1) for k in sorted(minutes)]


def rss_analyse(samples: Sequence[tuple[float, int]], idle: Sequence[int]) -> dict[str, Any]:
    """Start, end, max, slope after the first minute (least squares) and the noise around that line."""
    later = [(t, kb) for t, kb in samples if t >= 60] or list(samples)
    slope = stf._slope(later)  # kB per second
    mx = sum(t for t, _ in later) / len(later)
    my = sum(kb for _, kb in later) / len(later)
    residuals = [kb - (my + slope * (t - mx)) for t, kb in later]
    noise = math.sqrt(sum(r * r for r in residuals) / max(len(residuals) - 2, 1))
    span_min = (later[-1][0] - later[0][0]) / 60 if len(later) > 1 else 0.0
    half = [(t, kb) for t, kb in samples if t >= samples[-1][0] / 2] if samples else []
    return {
        "samples": len(samples), "idle_kb": idle[-1] if idle else None,
        "idle_samples_kb": list(idle),
        "start_kb": samples[0][1] if samples else None,
        "after_1min_kb": later[0][1] if later else None,
        "end_kb": samples[-1][1] if samples else None, "max_kb": max(kb for _, kb in samples) if samples else None,
        "min_kb": min(kb for _, kb in samples) if samples else None,
        "slope_kb_per_min_after_1min": round(slope * 60, 2), "fit_span_min": round(span_min, 2),
        "growth_on_fit_kb": round(slope * 60 * span_min, 1), "residual_noise_kb": round(noise, 1),
        "slope_kb_per_min_second_half": round(stf._slope(half) * 60, 2),
        "second_half_kb": [min(kb for _, kb in half), max(kb for _, kb in half)] if half else None,
        "series": [[t, kb] for t, kb in samples],
    }


def mode_ticks(args: argparse.Namespace, stack: contextlib.ExitStack) -> dict[str, Any]:
    names = coins(args.markets)
    paper_markets_extend(names)
    ctx = context_open(args, stack, lambda: ticks_fixtures(names, args.accounts))
    runs = []
    start = 0
    flushes = [float(f) for f in args.flush.split(",")]
    for repeat in range(args.repeat):
        for flush in (flushes if repeat % 2 == 0 else flushes[::-1]):
            label = f"flush {flush:g} s" + ("" if args.role_variant == "as-is" else f" ({args.role_variant})")
            result, start = ticks_run(ctx, names, flush=flush, rate=args.rate, seconds=args.seconds,
                                      warmup=args.warmup, start=start, label=label)
            runs.append(result)
            ticks_print(result)
    return {"mode": "ticks", "accounts": args.accounts, "runs": runs}


def ticks_print(r: dict[str, Any]) -> None:
    f = stf._f
    lat, fl, st = r["latency_ms"], r["flush_interval_ms"], r["flush_stages_ms"]
    met = lat["p99"] is not None and lat["p99"] <= TICK_TARGET_P99_MS
    r["target_met"] = met
    print(f"{r['label']}: {r['ticks_measured']} ticks ({r['rate_per_s']:g}/s over {r['markets']} markets), "
          f"tick -> visible p50 {f(lat['p50'])} / p90 {f(lat['p90'])} / p99 {f(lat['p99'])} / max {f(lat['max'])} ms "
          f"({'MET' if met else 'MISSED'}: p99 <= {TICK_TARGET_P99_MS:g} ms); not visible {r['not_visible']}; "
          f"flush interval p50 {f(fl['p50'])} / p99 {f(fl['p99'])} ms, {r['markets_per_flush']} markets per flush, "
          f"commit -> next write p50 {f(r['commit_to_next_write_ms']['p50'])} ms (in this process: upsert "
          f"{r['flush_reference_in_process']['upsert']['wall_ms']} ms, stop reads "
          f"{r['flush_reference_in_process']['stop_reads']['wall_ms']} ms); "
          f"a flush: its last frame -> role's stream p50 {f(st['last_frame_to_role_stream']['p50'])} ms, -> rows "
          f"written p50 "
          f"{f(st['to_row_written']['p50'])}, -> committed and seen p50 {f(st['to_committed_seen']['p50'])} / p99 "
          f"{f(st['to_committed_seen']['p99'])} ms; role {r['role_cpu_cores']} cores, its backend "
          f"{r['role_backend_cpu_cores']} (the fake {r['fake_cpu_cores']}, this process "
          f"{r['bench_process_cpu_cores']}); machine {r['machine_busy_pct']} % busy, load {r['load_before'][0]} -> "
          f"{r['load_after'][0]}; sender lag p99 {f(r['sender_lag_ms']['p99'])} ms", flush=True)


# --------------------------------------------------------------------------------------------- candles


def bar(coin: str, open_ms: int) -> dict[str, Any]:
    """The candle opening at `open_ms`: closes alternate LOW / HIGH by minute, each bar opening at the last close."""
    from tests.fakes.hyperliquid_ws import candle_data

    close = HIGH if (open_ms // MINUTE_MS) % 2 else LOW
    before = LOW if close == HIGH else HIGH
    return candle_data(coin, "1m", open_ms, o=str(before), h=str(max(before, close)), l=str(min(before, close)),
                       c=str(close), v="1.5", n=3)


def candles_fixtures(names: Sequence[str], per_market: int, history: int, last_ms: int) -> dict[int, str]:
    """Paper accounts on the hyperliquid feed, each with one started RSI strategy per market; `history` closed
    candles per market up to `last_ms` in the store. The strategies' markets by id."""
    from exchanges.base import VenueCandle, ms_to_datetime
    from strategies.services import candles_import

    print(f"markets: {markets_provide(names)}", flush=True)
    markets: dict[int, str] = {}
    for account in accounts_create(per_market):
        for coin in names:
            strategy = strategy_make(account, coin, kind="rsi", slug=f"bench-md-{account.pk}-{coin.lower()}")
            markets[strategy.pk] = coin
    for coin in names:
        rows = []
        for k in range(history - 1, -1, -1):
            b = bar(coin, last_ms - k * MINUTE_MS)
            rows.append(VenueCandle(open_time=ms_to_datetime(b["t"]), open=Decimal(b["o"]), high=Decimal(b["h"]),
                                    low=Decimal(b["l"]), close=Decimal(b["c"]), volume=Decimal(b["v"])))
        candles_import(venue=FEED, symbol=symbol_of(coin), timeframe="1m", rows=rows, by="benchmark")
    return markets


def evaluation_reference(strategy_ids: Sequence[int], open_ms: int) -> dict[str, Any]:
    """One strategy's evaluation of a stored bar, timed in this process (wall and CPU, ms): what a worker process
    does per task, minus Celery. Each is run again inside a transaction that is rolled back (its evaluation row
    deleted first; its signal exists already, so signal_create finds it instead of inserting)."""
    from django.db import connection, transaction

    from exchanges.base import ms_to_datetime
    from strategies.models import StrategyEvaluation
    from strategies.services import strategy_evaluate

    from strategies.library import RULES
    from strategies.selectors import candle_venue, candles_read
    from strategies.services import EVALUATION_WINDOW
    from trading.models import Strategy

    when = ms_to_datetime(open_ms)
    walls, cpus, reads = [], [], []
    for strategy in Strategy.objects.filter(pk__in=strategy_ids).select_related("account"):
        # The evaluation's candle read alone, as strategy_evaluate sizes it.
        limit = max(EVALUATION_WINDOW, 10 * RULES[strategy.kind].warmup(strategy.params))
        cpu = time.thread_time()
        candles = candles_read(candle_venue(strategy.account), strategy.symbol, strategy.timeframe, until=when,
                               limit=limit)
        reads.append(((time.thread_time() - cpu) * 1000, len(candles)))
    for strategy_id in strategy_ids:
        with transaction.atomic():
            StrategyEvaluation.objects.filter(strategy_id=strategy_id, candle_open_time=when).delete()
            wall, cpu = time.perf_counter(), time.thread_time()
            done = strategy_evaluate(strategy_id=strategy_id, candle_open_time=when, enqueue=False)
            walls.append((time.perf_counter() - wall) * 1000)
            cpus.append((time.thread_time() - cpu) * 1000)
            transaction.set_rollback(True)
        if done is None:
            raise RuntimeError(f"strategy {strategy_id} did not evaluate the bar at {open_ms} in the reference")
    connection.close()
    return {"evaluations": len(walls), "wall_ms": summary(walls[1:]), "cpu_ms": summary(cpus[1:]),
            "candle_read_cpu_ms": summary([c for c, _ in reads[1:]]), "candles_read": reads[0][1] if reads else 0}


@dataclass
class CandleRound:
    closing_ms: int
    measured: bool
    sent_at: dict[str, float] = field(default_factory=dict)  # market -> the closing update's send stamp
    signal_ms: list[float] = field(default_factory=list)
    evaluation_ms: list[float] = field(default_factory=list)
    task_start_ms: list[float] = field(default_factory=list)
    candle_ms: list[float] = field(default_factory=list)
    signals: int = 0
    evaluations: int = 0
    actions: dict[str, int] = field(default_factory=dict)
    load: float = 0.0


def mode_candles(args: argparse.Namespace, stack: contextlib.ExitStack) -> dict[str, Any]:
    names = coins(args.markets)
    if args.strategies % args.markets:
        raise SystemExit("--strategies must be a multiple of --markets (one strategy per market and account)")
    per_market = args.strategies // args.markets
    paper_markets_extend(names)
    now_ms = int(time.time() * 1000)
    last_ms = now_ms - now_ms % MINUTE_MS - 2 * MINUTE_MS  # the store's newest closed candle
    markets: dict[int, str] = {}

    def build() -> None:
        started = time.monotonic()
        markets.update(candles_fixtures(names, per_market, args.history, last_ms))
        print(f"candles: {len(markets)} RSI strategies on {len(names)} markets, {args.history} candles per market "
              f"stored in {time.monotonic() - started:.1f} s", flush=True)

    ctx = context_open(args, stack, build)
    worker = Worker(ctx.env, ctx.var_dir / "worker.log", concurrency=args.concurrency, pool=args.pool,
                    names=tuple(names), queues=args.queues)
    worker.start()
    stack.callback(worker.stop)
    workers = [worker]
    if args.execution_worker:  # compose's layout: executions on a worker of their own
        executor = Worker(ctx.env, ctx.var_dir / "worker-execution.log", concurrency=args.concurrency,
                          pool=args.pool, names=tuple(names), queues="execution")
        executor.start()
        stack.callback(executor.stop)
        workers.append(executor)
    role = Role(ctx.env, ctx.var_dir / "role.log", flush=None)
    role.start()
    stack.callback(role.stop)
    subs = {("allMids",)} | {("candle", c, "1m") for c in names}
    ctx.venue.subscribed(subs)
    ctx.venue.ask("background", names, args.mids_rate)
    # The role backfills every candle series at start over REST; the websocket fake has no REST side, so each
    # attempt fails (quickly, then the public breaker opens). Wait for them to be done: they share its database
    # thread with what is measured.
    deadline = time.monotonic() + 90
    while role.log_count("backfill of") < len(names) and time.monotonic() < deadline:
        time.sleep(0.5)
    from django.db.models import Count

    from trading.models import MarketPrice, Signal

    deadline = time.monotonic() + 30
    while MarketPrice.objects.filter(feed=FEED).count() < len(names):
        if time.monotonic() > deadline:
            raise RuntimeError("the role wrote no prices for the candles' markets")
        time.sleep(0.2)
    ctx.venue.ask("candles", [(c, bar(c, last_ms + MINUTE_MS)) for c in names])  # the first forming bar
    time.sleep(1.0)
    rounds: list[CandleRound] = []
    cpu0, busy0, wall0 = sum(w.cpu_s() for w in workers), stf._machine_cpu(), time.monotonic()
    for r in range(args.warmup_rounds + args.rounds):
        result = candle_round(ctx, worker, markets, names, closing_ms=last_ms + (r + 1) * MINUTE_MS,
                              measured=r >= args.warmup_rounds, timeout=args.round_timeout)
        rounds.append(result)
        print(f"round {r:>3}{'' if result.measured else ' (warm-up)':<11} signals {result.signals}/{len(markets)}: "
              f"p50 {stf._f(stf._pct(result.signal_ms, 50))}, max {stf._f(max(result.signal_ms, default=None))} ms; "
              f"load {result.load:.2f}", flush=True)
        time.sleep(random.uniform(0.3, 0.8))
    cpu1, busy1, wall1 = sum(w.cpu_s() for w in workers), stf._machine_cpu(), time.monotonic()
    ctx.venue.ask("background", names, 0)
    reference = evaluation_reference(sorted(markets)[:10], last_ms + len(rounds) * MINUTE_MS)
    measured = [r for r in rounds if r.measured]
    statuses = dict.fromkeys(("executed", "rejected", "ignored", "failed"), 0)
    for status, n in Signal.objects.filter(source="strategy").values_list("status").annotate(n=Count("id")):
        statuses[status] = n
    rules = list(Signal.objects.filter(source="strategy", status="rejected").values_list(
        "decision_rule", flat=True).distinct())
    signal_ms = [v for r in measured for v in r.signal_ms]
    out = {
        "mode": "candles", "strategies": len(markets), "markets": len(names), "accounts": per_market,
        "history_candles": args.history, "rsi_params": RSI_PARAMS, "rounds": len(measured),
        "warmup_rounds": args.warmup_rounds,
        "worker": f"-Q {args.queues} -c {args.concurrency} {args.pool}"
                  + (f" + -Q execution -c {args.concurrency} {args.pool}" if args.execution_worker else ""),
        "mids_frames_per_s": args.mids_rate,
        "signals": sum(r.signals for r in measured), "evaluations": sum(r.evaluations for r in measured),
        "expected": len(markets) * len(measured),
        "actions": _merge([r.actions for r in measured]),
        "close_to_signal_ms": summary(signal_ms),
        "close_to_evaluation_ms": summary([v for r in measured for v in r.evaluation_ms]),
        "close_to_candle_stored_ms": summary([v for r in measured for v in r.candle_ms]),
        "close_to_task_start_ms": summary([v for r in measured for v in r.task_start_ms]),
        "last_signal_of_round_ms": summary([max(r.signal_ms) for r in measured if r.signal_ms]),
        "first_signal_of_round_ms": summary([min(r.signal_ms) for r in measured if r.signal_ms]),
        "signal_statuses_all_rounds": statuses, "rejected_rules": rules,
        "worker_cpu_ms_per_strategy_round": round((cpu1 - cpu0) * 1000 / max(len(rounds) * len(markets), 1), 1),
        "machine_busy_pct": round(100 * (busy1[0] - busy0[0]) / max(busy1[1] - busy0[1], 1e-9), 1),
        "rounds_wall_s": round(wall1 - wall0, 1),
        "loadavg_mean": round(sum(r.load for r in measured) / max(len(measured), 1), 2),
        "evaluation_reference_in_process": reference,
        "worker_errors_logged": sum(w.errors_logged() for w in workers),
        "role_errors_logged": role.errors_logged(),
        "role_backfill_failures_at_start": role.log_count("backfill of"),
    }
    p99 = out["close_to_signal_ms"]["p99"]
    out["target_met"] = p99 is not None and p99 <= CANDLE_TARGET_P99_MS and out["signals"] == out["expected"]
    candles_print(out)
    return out


def _merge(counts: Sequence[dict[str, int]]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for c in counts:
        for k, v in c.items():
            merged[k] = merged.get(k, 0) + v
    return merged


def candle_round(ctx: Context, worker: Worker, markets: dict[int, str], names: Sequence[str], *, closing_ms: int,
                 measured: bool, timeout: float) -> CandleRound:
    """Close one bar on every market; collect each strategy's evaluation and signal; wait until they are final."""
    from trading.models import Signal

    result = CandleRound(closing_ms=closing_ms, measured=measured, load=os.getloadavg()[0])
    rows_from = len(ctx.listener.rows)
    frames = [(c, bar(c, closing_ms + MINUTE_MS)) for c in names]
    stamps, sent = ctx.venue.ask("candles", frames)
    if sent != len(names):
        raise RuntimeError(f"the closing updates reached {sent} of {len(names)} candle subscriptions")
    result.sent_at = dict(zip(names, stamps))
    key_suffix = f":{closing_ms}"
    closing_s = closing_ms / 1000
    evaluations: dict[int, tuple[float, float]] = {}  # strategy -> (seen, task started)
    signals: dict[int, tuple[float, str]] = {}  # strategy -> (seen, action)
    candles: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    cursor = rows_from
    while len(evaluations) < len(markets):
        rows = ctx.listener.rows
        for seen, payload in rows[cursor:]:
            parts = payload.split(" ")
            if parts[0] == "E" and abs(float(parts[2]) - closing_s) < 0.5:
                evaluations[int(parts[1])] = (seen, float(parts[3]))
            elif parts[0] == "S" and parts[4].endswith(key_suffix):
                signals[int(parts[2])] = (seen, parts[3])
            elif parts[0] == "C" and abs(float(parts[2]) - closing_s) < 0.5:
                candles[parts[1]] = seen
        cursor = len(rows)
        if time.monotonic() > deadline:
            import redis

            client = redis.Redis.from_url(ctx.args.redis_url)
            queued = {q: client.llen(q) for q in ("strategies", "execution")}
            client.close()
            missing = sorted(f"{sid} ({markets[sid]})" for sid in markets if sid not in evaluations)
            raise RuntimeError(f"{len(evaluations)} of {len(markets)} evaluations of the bar at {closing_ms} in "
                               f"{timeout:g} s; missing {missing}; candles stored {sorted(candles)}; queued "
                               f"{queued}:\n{worker.log_tail()}")
        if not worker.alive():
            raise RuntimeError(f"the worker died:\n{worker.log_tail()}")
        time.sleep(0.02)
    time.sleep(0.2)  # a signal's notification comes with its evaluation's commit
    for seen, payload in ctx.listener.rows[cursor:]:
        parts = payload.split(" ")
        if parts[0] == "S" and parts[4].endswith(key_suffix):
            signals[int(parts[2])] = (seen, parts[3])
    for strategy_id, (seen, started) in evaluations.items():
        t0 = result.sent_at[markets[strategy_id]]
        result.evaluation_ms.append((seen - t0) * 1000)
        result.task_start_ms.append((started - t0) * 1000)
    for strategy_id, (seen, action) in signals.items():
        result.signal_ms.append((seen - result.sent_at[markets[strategy_id]]) * 1000)
        result.actions[action] = result.actions.get(action, 0) + 1
    for symbol, seen in candles.items():
        result.candle_ms.append((seen - result.sent_at[symbol.split("/")[0]]) * 1000)
    result.signals, result.evaluations = len(signals), len(evaluations)

    def unsettled() -> int:
        return Signal.objects.filter(source="strategy", idempotency_key__endswith=key_suffix).exclude(
            status__in=stf.FINAL).count()

    if not stf.wait_until(lambda: unsettled() == 0, timeout=timeout, worker=worker, what="the round's signals"):
        raise RuntimeError(f"{unsettled()} signals of the bar at {closing_ms} not final in {timeout:g} s:\n"
                           f"{worker.log_tail()}")
    return result


def candles_print(o: dict[str, Any]) -> None:
    f = stf._f
    print(f"\n{'candle close (the next bar sent) -> ..., ms':<44}{'n':>6}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}")
    for label, key in (("the candle stored (role)", "close_to_candle_stored_ms"),
                       ("the evaluation task starts", "close_to_task_start_ms"),
                       ("the evaluation committed", "close_to_evaluation_ms"),
                       ("the Signal row committed", "close_to_signal_ms"),
                       ("  first signal of a round", "first_signal_of_round_ms"),
                       ("  last signal of a round", "last_signal_of_round_ms")):
        s = o[key]
        print(f"{label:<44}{s['n']:>6}{f(s['p50']):>9}{f(s['p90']):>9}{f(s['p99']):>9}{f(s['max']):>9}")
    print(f"signals {o['signals']} of {o['expected']} expected ({o['actions']}); statuses "
          f"{o['signal_statuses_all_rounds']} {o['rejected_rules'] or ''}; worker CPU "
          f"{o['worker_cpu_ms_per_strategy_round']} ms per strategy and round"
          f" (evaluation + execution); machine {o['machine_busy_pct']} % busy, load {o['loadavg_mean']}")
    ref = o["evaluation_reference_in_process"]
    print(f"one evaluation in this process (the worker's task minus Celery): p50 {f(ref['wall_ms']['p50'])} ms wall, "
          f"{f(ref['cpu_ms']['p50'])} ms CPU, of which reading its {ref['candles_read']} candles "
          f"{f(ref['candle_read_cpu_ms']['p50'])} ms")
    print(f"target p99 <= {CANDLE_TARGET_P99_MS:g} ms: {'MET' if o['target_met'] else 'MISSED'}", flush=True)


# --------------------------------------------------------------------------------------------- memory


def mode_memory(args: argparse.Namespace, stack: contextlib.ExitStack) -> dict[str, Any]:
    names = coins(args.markets)
    paper_markets_extend(names)
    ctx = context_open(args, stack, lambda: ticks_fixtures(names, args.accounts))
    flush = None if args.memory_flush is None else float(args.memory_flush)
    warmup = min(60.0, args.minutes * 20)  # latency counted after it; the RSS slope is fitted after the first minute
    result, _ = ticks_run(ctx, names, flush=flush, rate=args.rate, seconds=args.minutes * 60 - warmup, warmup=warmup,
                          start=0,
                          label=f"memory {args.minutes:g} min", idle_seconds=args.idle_seconds,
                          sample_every=args.sample_every)
    rss = result["rss"]
    print(f"memory: {args.minutes:g} min at {args.rate:g} ticks/s over {len(names)} markets (flush "
          f"{result['flush_seconds']}): RSS idle {rss['idle_kb']} kB, start {rss['start_kb']} kB, "
          f"after 1 min {rss['after_1min_kb']}, end {rss['end_kb']}, max {rss['max_kb']} kB; slope after the first "
          f"minute {rss['slope_kb_per_min_after_1min']} kB/min ({rss['growth_on_fit_kb']} kB over "
          f"{rss['fit_span_min']} min) against residual noise {rss['residual_noise_kb']} kB; second half "
          f"{rss['second_half_kb']} kB, slope {rss['slope_kb_per_min_second_half']} kB/min; role "
          f"{result['role_cpu_cores']} cores; tick -> visible p99 per minute {result['p99_per_minute_ms']}",
          flush=True)
    return {"mode": "memory", "minutes": args.minutes, "idle_seconds": args.idle_seconds, **result}


# --------------------------------------------------------------------------------------------- main


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("ticks", "candles", "memory", "all"))
    p.add_argument("--markets", type=int, default=None, help="markets (ticks, memory: 50; candles: 10)")
    p.add_argument("--rate", type=float, default=1000, help="price changes per second (default 1000)")
    p.add_argument("--per-frame", type=int, default=1, help="markets moved by each allMids frame (default 1)")
    p.add_argument("--accounts", type=int, default=5, help="paper accounts sharing the markets (ticks, memory)")
    p.add_argument("--flush", default="0.25,0.05,0.02", help="the role's --flush-seconds, one run each (ticks)")
    p.add_argument("--seconds", type=float, default=60, help="measured seconds per flush value (ticks)")
    p.add_argument("--warmup", type=float, default=5, help="seconds sent before measuring (ticks)")
    p.add_argument("--repeat", type=int, default=1, help="runs of the flush list, every other one reversed (ticks)")
    p.add_argument("--strategies", type=int, default=100, help="RSI strategies (candles)")
    p.add_argument("--rounds", type=int, default=20, help="measured candle closes (candles)")
    p.add_argument("--warmup-rounds", type=int, default=2)
    p.add_argument("--history", type=int, default=5000,
                   help="stored candles per market (candles; 5000 = what an evaluation reads at most)")
    p.add_argument("--mids-rate", type=float, default=20, help="allMids frames per second during candles")
    p.add_argument("--round-timeout", type=float, default=120)
    p.add_argument("--concurrency", type=int, default=2, help="worker processes (candles)")
    p.add_argument("--queues", default="strategies,execution", help="the worker's queues (candles)")
    p.add_argument("--execution-worker", action="store_true",
                   help="a second worker for -Q execution (compose's layout; use with --queues strategies)")
    p.add_argument("--pool", default="prefork", choices=["prefork", "threads", "solo"])
    p.add_argument("--minutes", type=float, default=3, help="minutes at --rate (memory)")
    p.add_argument("--idle-seconds", type=float, default=30, help="the idle reference before the load (memory)")
    p.add_argument("--sample-every", type=float, default=5, help="RSS sampling period, seconds (memory)")
    p.add_argument("--memory-flush", default=None, help="the role's --flush-seconds in memory (default: its own)")
    p.add_argument("--no-compression", action="store_true", help="no permessage-deflate on the socket")
    p.add_argument("--role-variant", choices=("as-is", "no-stop-reads"), default="as-is",
                   help="no-stop-reads: a what-if role whose flush leaves out price_arrived's per-market stop reads "
                        "(ticks, memory)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--timeout", type=float, default=0, help="abort after this many seconds (default: computed)")
    p.add_argument("--json", help="also write the result to this file")
    p.add_argument("--keep-logs", help="copy the role's and the workers' logs into this directory at the end")
    p.add_argument("--pg-url", default="postgres://postgres@127.0.0.1:5432")
    p.add_argument("--db-name", default="tradesite_bench_marketdata")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/10")
    args = p.parse_args(argv)
    if not re.fullmatch(r"[a-z_][a-z0-9_]*bench[a-z0-9_]*", args.db_name):
        p.error("--db-name must be a plain lower-case name containing 'bench' (it is dropped)")
    if re.search(r"/0?$", args.redis_url) or args.redis_url.rstrip("/").endswith(":6379"):
        p.error("--redis-url must name a dedicated db index such as /10 (it is flushed)")
    if args.rate <= 0 or args.per_frame < 1 or args.accounts < 1:
        p.error("--rate must be positive, --per-frame and --accounts at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    random.seed(args.seed)
    modes = ["ticks", "candles", "memory"] if args.mode == "all" else [args.mode]
    flushes = len(args.flush.split(",")) * args.repeat
    budget = args.timeout or sum({
        "ticks": 400 + flushes * (args.warmup + args.seconds) * 1.5 + flushes * 60,
        "candles": 600 + (args.rounds + args.warmup_rounds) * (args.round_timeout + 5) * 0.5,
        "memory": 400 + args.idle_seconds * 2 + args.minutes * 60 * 1.5 + 60,
    }[m] for m in modes)
    output: dict[str, Any] = {"benchmark": "marketdata", "mode": args.mode,
                              "date": datetime.now().astimezone().isoformat(timespec="seconds"),
                              "loadavg_start": [round(x, 2) for x in os.getloadavg()], "results": []}
    status = 1
    try:
        with stf.deadline(budget):
            for mode in modes:
                with contextlib.ExitStack() as stack:
                    mode_args = argparse.Namespace(**vars(args))
                    if mode_args.markets is None:
                        mode_args.markets = 10 if mode == "candles" else 50
                    print(f"== marketdata {mode} (load {os.getloadavg()[0]:.2f})", flush=True)
                    result = {"ticks": mode_ticks, "candles": mode_candles, "memory": mode_memory}[mode](
                        mode_args, stack)
                    if "machine" not in output:
                        output["machine"] = stf.machine_info()
                    output["results"].append(result)
        status = 0
    except KeyboardInterrupt:
        print("interrupted: cleaned up", file=sys.stderr)
        status = 130
    except stf.Timeout as exc:
        print(f"{exc}: cleaned up", file=sys.stderr)
        status = 124
    output["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    output["status"] = status
    line = json.dumps(output, separators=(",", ":"), default=str)
    if args.json:
        Path(args.json).write_text(line + "\n")
    print(line)
    return status


if __name__ == "__main__":
    sys.exit(main())
