"""Stop crossed -> exit order at the venue: price_arrived against the 5 s monitor tick, in one run.

    python benchmarks/stop_to_exit.py [--rounds 24] [--poll-rounds 10] [--accounts 10] [--markets 10]
                                      [--venue-budget lifted|real]

Creates a throwaway database (`tradesite_bench_stops`, migrated) and flushes a dedicated Redis db (/12), starts the
loopback Hyperliquid (tests/fakes/hyperliquid_venue.py: the venue's wire shapes, signatures checked) in this process
and ONE `celery worker -Q execution,monitoring -c 2 -P prefork`. Each of `--accounts` live Hyperliquid accounts
(its own user and API wallet on the fake; credentials and `<PREFIX>_ENDPOINT` in the environment, as in production)
holds one long position in each of `--markets` markets (10 x 10 = 100 positions), opened through the worker, with a
stop-loss 1 % below the entry and `protective_orders="off"`: only the bot's own monitor guards them, which is the
path measured.

A thread of this process does beat's part for the whole run, as deployed: `positions_monitor_task` every
TRADING_MONITOR_EVERY_SECONDS (5 s, the tick) and `exits_drive_task` every TRADING_EXITS_EVERY_SECONDS (2 s: an exit
the venue refused is tried again), each with the expiry beat gives it. Then rounds, one market at a time in turn,
two kinds interleaved:

* arrival: the market's price is set 2 % lower at the venue (t0, just before the fake's `set_price`), then
  `trading.tasks.price_arrived(symbol, price, feed)` is called at once, as the market-data role does;
* poll: the same crossing after a random pause (uniform over one tick interval, so the crossing falls anywhere
  in the tick's cycle), with no price_arrived: only the tick can see it (the code before price_arrived).

t1 is the moment each position's first exit order request reached the venue: the fake's journal stamp
(`time.monotonic()` of this process, taken when the request's body has been read, before the venue handles it),
matched to its position through our order row's client id. After every position of the
market is flat again (exits filled and recorded), the price goes back and the positions are reopened through the
worker. The first `--warmup-rounds` rounds are not counted (connections, connector caches in both pool processes).

The budget: Hyperliquid counts request weight per IP (900 a minute in VENUE_RATES, one bucket in Redis shared by
every process). Each account's monitor reads the ticker of every market it holds (allMids, weight 2, once per
market), and its exit reads them again for the account's margin view under the account lock (once per market
held), then sends the IOC order (1) and reads its fills (userFillsByTime, 20): about 61 weight for one exit of an
account holding 10 markets, so ten at once need ~610 against a burst of 60 and 15 a second, and the tick alone
(10 accounts x 10 markets x 2 every 5 s) spends more than the budget refills. With `--venue-budget lifted` (the
default) the benchmark's worker starts with Hyperliquid's budget raised out of reach (the fake has no limit), so
the figures are the bot's own path; `--venue-budget real` keeps the published budget in the worker and shows what
it costs. The setup (reconciling the accounts) always runs with the lifted budget in this process, which never
sends an exit.

Everything is bounded in time and cleaned up (worker stopped, database dropped, Redis db flushed, fake stopped) on
success, failure, Ctrl-C or SIGTERM. The last stdout line is JSON. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, UTC
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import signal_to_fill as stf  # noqa: E402  (the database, Redis, worker and deadline helpers)

COINS = ("BTC", "ETH", "SOL", "AVAX", "BNB", "LTC", "XRP", "LINK", "ARB", "DOGE")
QUOTE = "USDC"
STOP_PERCENT = Decimal("1")
DROP = Decimal("0.98")  # the crossing price: 2 % below the entry, 1 % past the stop
TARGET_P99_MS = 250.0
FEED = "hyperliquid-testnet"  # the price feed of the benchmark's testnet accounts (trading.prices.price_feed_of)
LIFTED = 1e9  # weight a second and burst: out of reach

# The worker's launcher with --venue-budget lifted: Hyperliquid's per-IP budget raised before Celery starts (the pool
# processes are forked from it), nothing else changed. The fake it talks to has no limit of its own.
LIFT_BUDGET = (
    "import dataclasses, sys\n"
    "from exchanges import resilience\n"
    "spec = resilience.VENUE_RATES['hyperliquid']\n"
    f"resilience.VENUE_RATES['hyperliquid'] = dataclasses.replace(spec, rate={LIFTED!r}, burst={LIFTED!r}, "
    "source='benchmark: lifted')\n"
    "from celery.__main__ import main\n"
    "sys.argv[0] = 'celery'\n"
    "sys.exit(main())\n"
)


def budget_lift() -> None:
    """Raise Hyperliquid's budget in this process (setup only: this process never sends an exit)."""
    from exchanges import resilience

    spec = resilience.VENUE_RATES["hyperliquid"]
    resilience.VENUE_RATES["hyperliquid"] = dataclasses.replace(spec, rate=LIFTED, burst=LIFTED,
                                                                source="benchmark: lifted")


@dataclass
class Worker(stf.Worker):
    """The execution and monitoring queues in one worker; Hyperliquid's budget lifted or not."""

    lift_budget: bool = True

    def start(self) -> None:
        head = [sys.executable, "-c", LIFT_BUDGET] if self.lift_budget else [sys.executable, "-m", "celery"]
        self.proc = subprocess.Popen(
            [*head, "-A", "tradesite", "worker", "-Q", "execution,monitoring", "-c", str(self.concurrency), "-P",
             self.pool, "-n", f"bench-stops-{os.getpid()}@localhost", "--without-gossip", "--without-mingle",
             "--without-heartbeat", "--loglevel", "WARNING"],
            cwd=ROOT, env={**self.env, "TRADESITE_COMPONENT": "worker"}, stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=stf._pdeathsig,
        )


# --------------------------------------------------------------------------------------------- the venue


@dataclass
class Venue:
    """The loopback Hyperliquid and what the run needs from it."""

    fake: Any  # tests.fakes.hyperliquid_venue.HyperliquidFake
    env: dict[str, str]  # every account's credentials and endpoint
    prefixes: list[str]

    def asset(self, coin: str) -> int:
        return next(i for i, u in enumerate(self.fake.universe) if u["name"] == coin)

    def exits_since(self, start: int, asset: int, end: int) -> list[tuple[float, str]]:
        """(journal time, cloid) of each sell order request for `asset` in journal entries [start, end)."""
        with self.fake.journal_lock:
            new = self.fake.journal[start:end]
        found = []
        for request in new:
            if request.path != "/exchange":
                continue
            action = json.loads(request.body).get("action") or {}
            if action.get("type") != "order":
                continue
            for wire in action.get("orders") or ():
                if int(wire["a"]) == asset and not wire["b"]:
                    found.append((request.at, str(wire.get("c") or "")))
        return found

    def journal_length(self) -> int:
        with self.fake.journal_lock:
            return len(self.fake.journal)


def venue_start(accounts: int, stack: contextlib.ExitStack) -> Venue:
    """Start the fake with one funded user and approved API wallet per account."""
    from eth_account import Account

    from tests.fakes.hyperliquid_venue import HyperliquidFake

    fake = HyperliquidFake(mainnet=False)
    missing = [c for c in COINS if c not in fake.prices]
    if missing:
        raise RuntimeError(f"the fake trades no {missing}")
    env: dict[str, str] = {}
    prefixes = []
    for i in range(accounts):
        owner, agent = Account.create(), Account.create()
        fake.add_user(owner.address, Decimal("1000000"))
        fake.approve_agent(agent.address, owner.address)
        prefix = f"BENCH_HL{i}"
        prefixes.append(prefix)
        env |= {f"{prefix}_SECRET_KEY": "0x" + bytes(agent.key).hex(), f"{prefix}_ACCOUNT_ADDRESS": owner.address,
                f"{prefix}_TIMEOUT": "5", f"{prefix}_ENDPOINT": fake.url}
    fake.start()
    stack.callback(fake.stop)
    return Venue(fake=fake, env=env, prefixes=prefixes)


# --------------------------------------------------------------------------------------------- fixtures


@dataclass
class Book:
    """The accounts and, per market, the strategies holding a position there."""

    accounts: list[Any]
    by_market: dict[str, list[Any]]  # coin -> strategies
    base_price: dict[str, Decimal]


def symbol_of(coin: str) -> str:
    return f"{coin}/{QUOTE}:{QUOTE}"


def fixtures_create(venue: Venue, coins: Sequence[str]) -> Book:
    """Accounts (cash book opened from the venue), and one started live strategy per account and market."""
    from tests.fakes.live import small_quantity
    from trading import reconcile, services
    from trading.connectors import connector_for

    accounts, by_market = [], {coin: [] for coin in coins}
    for i, prefix in enumerate(venue.prefixes):
        account = services.account_create(data={
            "name": f"bench-hl-{i}", "venue": "hyperliquid", "network": "testnet", "credentials_env": prefix,
            "quote_asset": QUOTE, "max_leverage": "5"}, by="benchmark")
        reconcile.account_reconcile(account=account)
        accounts.append(account)
        connector = connector_for(account)
        for coin in coins:
            market = connector.market(symbol_of(coin))
            strategy = services.strategy_create(data={
                "name": f"bench {i} {coin}", "slug": f"bench-{i}-{coin.lower()}", "kind": "webhook",
                "symbol": symbol_of(coin), "account": account, "mode": "live", "sizing_mode": "quantity",
                "sizing_value": str(small_quantity(market, venue.fake.prices[coin])), "leverage": "1",
                "stop_loss_mode": "percent", "stop_loss_value": str(STOP_PERCENT), "protective_orders": "off",
            }, by="benchmark")
            by_market[coin].append(services.strategy_start(strategy=strategy, by="benchmark"))
    return Book(accounts=accounts, by_market=by_market, base_price={c: venue.fake.prices[c] for c in coins})


def wait_until(predicate: Callable[[], bool], *, timeout: float, worker: stf.Worker, what: str,
               every: float = 0.01) -> None:
    """Poll until predicate() holds; raise after `timeout` or if the worker died."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}:\n{worker.log_tail()}")
        if not worker.alive():
            raise RuntimeError(f"worker exited while waiting for {what}:\n{worker.log_tail()}")
        time.sleep(every)


def positions_open(book: Book, coin: str, tag: str, worker: stf.Worker, timeout: float = 120) -> None:
    """Open (again) every position in `coin` through the worker; wait until each holds a stop-loss."""
    from trading.intake import signal_create
    from trading.models import Position, Signal

    strategies = book.by_market[coin]
    ids = [signal_create(strategy=s, source="manual", idempotency_key=f"open:{tag}:{s.pk}",
                                action="open_long", enqueue=True)[0].pk for s in strategies]

    def done() -> bool:
        return not Signal.objects.filter(pk__in=ids).exclude(status__in=stf.FINAL).exists()

    wait_until(done, timeout=timeout, worker=worker, what=f"the {coin} entries", every=0.01)
    failed = list(Signal.objects.filter(pk__in=ids).exclude(status="executed").values_list(
        "status", "decision_rule", "decision_detail"))
    if failed:
        raise RuntimeError(f"{coin} entries not executed: {failed[:3]}")
    held = Position.objects.filter(strategy__in=strategies, symbol=symbol_of(coin), quantity__gt=0,
                                   stop_loss__isnull=False).count()
    if held != len(strategies):
        raise RuntimeError(f"{held} of {len(strategies)} {coin} positions hold a stop-loss after the entries")


# --------------------------------------------------------------------------------------------- beat


class Beat(threading.Thread):
    """Beat's two ticks that move exits, sent as beat sends them (each expiring after its interval): the monitor
    (positions_monitor_task every TRADING_MONITOR_EVERY_SECONDS) and the exit driver (exits_drive_task every
    TRADING_EXITS_EVERY_SECONDS, which tries a refused exit again)."""

    def __init__(self, monitor_every: float, exits_every: float) -> None:
        super().__init__(name="bench-beat", daemon=True)
        self.every = {"monitor": monitor_every, "exits": exits_every}
        self.stop_event = threading.Event()
        self.sent = {"monitor": 0, "exits": 0}
        self.error: BaseException | None = None

    def run(self) -> None:
        from trading.tasks import exits_drive_task, positions_monitor_task

        tasks = {"monitor": positions_monitor_task, "exits": exits_drive_task}
        due = dict.fromkeys(tasks, time.monotonic())
        try:
            while not self.stop_event.wait(max(min(due.values()) - time.monotonic(), 0)):
                for name, task in tasks.items():
                    if due[name] <= time.monotonic():
                        task.apply_async(expires=self.every[name])
                        self.sent[name] += 1
                        due[name] += self.every[name]
        except BaseException as exc:  # noqa: BLE001 - surfaced by the main thread
            self.error = exc

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=10)


# --------------------------------------------------------------------------------------------- rounds


@dataclass
class Round:
    kind: str  # "arrival" | "poll"
    coin: str
    measured: bool
    latencies_ms: list[float] = field(default_factory=list)  # t0 -> each exit's order at the venue
    stages: dict[str, list[float]] = field(default_factory=dict)
    sent_by_arrival: int = 0  # account monitors price_arrived sent
    price_arrived_ms: float = 0.0  # the price_arrived call itself (one read, the enqueues)
    loadavg: float = 0.0


def round_run(book: Book, venue: Venue, worker: stf.Worker, *, kind: str, coin: str, tag: str, every: float,
              measured: bool, timeout: float) -> Round:
    """Cross the stops of every position in `coin`, time each exit to the venue, then reopen the positions."""
    from exchanges.hyperliquid import cloid_for
    from trading.models import Order, Position, Signal
    from trading.tasks import price_arrived

    result = Round(kind=kind, coin=coin, measured=measured, loadavg=os.getloadavg()[0])
    strategies = book.by_market[coin]
    expected = len(strategies)
    asset = venue.asset(coin)
    base = book.base_price[coin]
    crossing = base * DROP
    if kind == "poll":
        time.sleep(random.uniform(0, every))  # anywhere in the tick's cycle
    else:
        time.sleep(random.uniform(0, 0.2))
    start = venue.journal_length()
    wall0 = time.time()
    t0 = time.monotonic()
    venue.fake.set_price(coin, crossing)
    if kind == "arrival":
        # The accounts' price feed (testnet Hyperliquid accounts: "hyperliquid-testnet"), as the market-data role
        # calls it: a price of one feed crosses only the stops of the accounts that feed prices.
        result.sent_by_arrival = price_arrived(symbol_of(coin), crossing, FEED)
        result.price_arrived_ms = (time.monotonic() - t0) * 1000

    since = datetime.fromtimestamp(wall0, tz=UTC)
    ids = [s.pk for s in strategies]
    seen: dict[str, float] = {}  # cloid of each sell order request -> when it reached the venue
    strategy_of: dict[str, int] = {}  # cloid -> strategy (from our order rows, committed before each send)
    first: dict[int, float] = {}  # strategy -> when its first exit order reached the venue
    cursor = [start]

    def all_sent() -> bool:
        end = venue.journal_length()
        for at, cloid in venue.exits_since(cursor[0], asset, end):
            seen.setdefault(cloid, at)
        cursor[0] = end
        if any(c not in strategy_of for c in seen):
            strategy_of.update((cloid_for(client_id), strategy_id) for client_id, strategy_id in Order.objects.filter(
                strategy_id__in=ids, side="sell").values_list("client_order_id", "strategy_id"))
        for cloid, at in seen.items():
            sid = strategy_of.get(cloid)
            if sid is not None and at < first.get(sid, float("inf")):
                first[sid] = at  # a refused exit tried again by the exit driver counts from its first attempt
        return len(first) >= expected

    def state() -> str:
        return repr(list(Signal.objects.filter(strategy_id__in=ids, received_at__gte=since).values_list(
            "source", "status", "decision_detail"))[:5])

    # The poll interval only costs this process's CPU: each exit's time is the journal's stamp.
    try:
        wait_until(all_sent, timeout=timeout, worker=worker, what=f"{expected} {coin} exits at the venue",
                   every=0.01)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\nsignals since the crossing: {state()}") from None
    result.latencies_ms = sorted((at - t0) * 1000 for at in first.values())

    def flat() -> bool:
        return not Position.objects.filter(strategy__in=strategies, symbol=symbol_of(coin)).exclude(
            quantity=0).exists() and not Signal.objects.filter(
            strategy__in=strategies, source="monitor", status__in=("received", "accepted", "working")).exists()

    try:
        wait_until(flat, timeout=timeout, worker=worker, what=f"the {coin} positions flat", every=0.01)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\nsignals since the crossing: {state()}") from None

    # Stages of each position's exit, from the rows (wall clock of each process, one machine): t0 -> the start of the
    # account's monitor that fired it (its exit signals are stamped received_at with the monitor's start) -> its
    # first order marked SUBMITTING (the monitor's price reads, the decision) -> that order's request at the venue.
    offset = wall0 - t0
    signal_of = dict(Order.objects.filter(strategy_id__in=ids, signal__source="monitor").values_list(
        "client_order_id", "signal_id"))
    first_cloid = {cloid: at for cloid, at in seen.items() if first.get(strategy_of.get(cloid, -1)) == at}
    stages: dict[str, list[float]] = {"monitor_start": [], "decide": [], "send": []}
    rows = dict((pk, (received, submitted)) for pk, received, submitted in Signal.objects.filter(
        pk__in=[signal_of[c] for c in signal_of if cloid_for(c) in first_cloid]).values_list(
        "id", "received_at", "submitted_at"))
    for client_id, signal_id in signal_of.items():
        at = first_cloid.get(cloid_for(client_id))
        if at is None or signal_id not in rows:
            continue  # not one of this round's first exit orders
        received_at, submitted_at = rows[signal_id]
        stages["monitor_start"].append((received_at.timestamp() - wall0) * 1000)
        if submitted_at is not None:
            stages["decide"].append((submitted_at - received_at).total_seconds() * 1000)
            stages["send"].append((at + offset - submitted_at.timestamp()) * 1000)
    result.stages = stages

    venue.fake.set_price(coin, base)
    positions_open(book, coin, tag, worker, timeout=max(timeout, 120))
    return result


def schedule(arrival: int, poll: int, warmup: int) -> list[tuple[str, bool]]:
    """(kind, measured) per round: warm-up rounds of both kinds first, then the two kinds evenly interleaved."""
    plan = [("arrival" if i % 2 == 0 else "poll", False) for i in range(warmup)]
    total = arrival + poll
    for i in range(total):
        is_poll = poll and (i + 1) * poll // total > i * poll // total
        plan.append(("poll" if is_poll else "arrival", True))
    return plan


# --------------------------------------------------------------------------------------------- output


def summary(values: Sequence[float]) -> dict[str, float | None]:
    out = stf._summary(values)
    out["p90"] = None if not values else round(stf._pct(values, 90) or 0.0, 2)
    return out


def report(rounds: Sequence[Round]) -> dict[str, Any]:
    """The figures per kind: every exit, the last exit of each round, the stages."""
    figures: dict[str, Any] = {}
    for kind in ("arrival", "poll"):
        mine = [r for r in rounds if r.kind == kind and r.measured]
        if not mine:
            continue
        every_exit = [v for r in mine for v in r.latencies_ms]
        stages = {name: summary([v for r in mine for v in r.stages.get(name, [])])
                  for name in ("monitor_start", "decide", "send")}
        figures[kind] = {
            "rounds": len(mine), "exits": len(every_exit), "latency_ms": summary(every_exit),
            "first_exit_of_round_ms": summary([r.latencies_ms[0] for r in mine]),
            "last_exit_of_round_ms": summary([r.latencies_ms[-1] for r in mine]),
            "stages_ms": stages,
            "loadavg_mean": round(sum(r.loadavg for r in mine) / len(mine), 2),
        }
        if kind == "arrival":
            figures[kind]["price_arrived_call_ms"] = summary([r.price_arrived_ms for r in mine])
            figures[kind]["monitors_sent_per_round"] = sorted({r.sent_by_arrival for r in mine})
    return figures


def report_print(figures: dict[str, Any]) -> None:
    f = stf._f
    print(f"\n{'t0 (price set) -> exit order at the venue, ms':<48}{'n':>6}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}")
    for kind, label in (("arrival", "price_arrived"), ("poll", "5 s monitor tick only")):
        if kind not in figures:
            continue
        k = figures[kind]
        for name, key in ((f"{label}: every exit", "latency_ms"),
                          (f"{label}: first exit of a round", "first_exit_of_round_ms"),
                          (f"{label}: last exit of a round", "last_exit_of_round_ms")):
            s = k[key]
            print(f"{name:<48}{s['n']:>6}{f(s['p50']):>9}{f(s['p90']):>9}{f(s['p99']):>9}{f(s['max']):>9}")
        for stage, what in (("monitor_start", "t0 -> the account's monitor starts"),
                            ("decide", "  -> order SUBMITTING"), ("send", "  -> request at the venue")):
            s = k["stages_ms"][stage]
            print(f"  {what:<46}{s['n']:>6}{f(s['p50']):>9}{f(s['p90']):>9}{f(s['p99']):>9}{f(s['max']):>9}")
    if "arrival" in figures:
        p99 = figures["arrival"]["latency_ms"]["p99"]
        met = p99 is not None and p99 <= TARGET_P99_MS
        figures["arrival"]["target_met"] = met
        print(f"target p99 <= {TARGET_P99_MS:g} ms with price_arrived: {'MET' if met else 'MISSED'} "
              f"(p99 {f(p99)} ms); price_arrived call p50 {f(figures['arrival']['price_arrived_call_ms']['p50'])} ms")


# --------------------------------------------------------------------------------------------- main


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=24, help="measured price_arrived rounds (default 24)")
    p.add_argument("--poll-rounds", type=int, default=10, help="measured tick-only rounds (default 10)")
    p.add_argument("--warmup-rounds", type=int, default=2, help="rounds not counted (default 2)")
    p.add_argument("--accounts", type=int, default=10, help="live accounts, one position per market each (default 10)")
    p.add_argument("--markets", type=int, default=10, help=f"markets (default 10, at most {len(COINS)})")
    p.add_argument("--venue-budget", choices=("lifted", "real"), default="lifted",
                   help="Hyperliquid's per-IP budget in the worker (default lifted: the bot's own path)")
    p.add_argument("--round-timeout", type=float, default=70,
                   help="most seconds for a round's exits to reach the venue and fill (default 70; raise it with "
                        "--venue-budget real)")
    p.add_argument("--concurrency", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--pool", default="prefork", choices=["prefork", "threads", "solo"])
    p.add_argument("--seed", type=int, default=None, help="random pauses (default: not seeded)")
    p.add_argument("--timeout", type=float, default=0, help="abort after this many seconds (default: computed)")
    p.add_argument("--pg-url", default="postgres://postgres@127.0.0.1:5432")
    p.add_argument("--db-name", default="tradesite_bench_stops")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    args = p.parse_args(argv)
    if not re.fullmatch(r"[a-z_][a-z0-9_]*bench[a-z0-9_]*", args.db_name):
        p.error("--db-name must be a plain lower-case name containing 'bench' (it is dropped)")
    if args.redis_url.rstrip("/").endswith(("/0", ":6379")):
        p.error("--redis-url must name a dedicated db index such as /12 (it is flushed)")
    if not 1 <= args.markets <= len(COINS) or args.accounts < 1 or args.rounds < 0 or args.poll_rounds < 0:
        p.error("--markets 1-10, --accounts >= 1, rounds >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    random.seed(args.seed)
    every = float(os.environ.get("TRADING_MONITOR_EVERY_SECONDS", "5"))
    rounds_total = args.rounds + args.poll_rounds + args.warmup_rounds
    budget = args.timeout or (600 + rounds_total * (20 + 3 * every + 2 * args.round_timeout)
                              + args.accounts * args.markets * 5)
    output: dict[str, Any] = {"benchmark": "stop_to_exit", "date": datetime.now().astimezone().isoformat(
        timespec="seconds"), "accounts": args.accounts, "markets": args.markets,
        "positions": args.accounts * args.markets, "venue_budget": args.venue_budget, "monitor_every_s": every}
    rounds: list[Round] = []
    status = 1
    with contextlib.ExitStack() as stack:
        try:
            with stf.deadline(budget):
                _main_body(args, stack, every, rounds, output)
            status = 0
        except KeyboardInterrupt:
            print("interrupted: cleaning up", file=sys.stderr)
            status = 130
        except stf.Timeout as exc:
            print(f"{exc}: cleaning up", file=sys.stderr)
            status = 124
    output["figures"] = report(rounds)
    if output["figures"]:
        report_print(output["figures"])
    output["status"] = status
    print(json.dumps(output, separators=(",", ":"), default=str))
    return status


def _main_body(args: argparse.Namespace, stack: contextlib.ExitStack, every: float, rounds: list[Round],
               output: dict[str, Any]) -> None:
    var_dir = Path(tempfile.mkdtemp(prefix="tradesite-bench-stops-"))
    stack.callback(shutil.rmtree, var_dir, True)
    venue = venue_start(args.accounts, stack)
    env = stf.bench_env(args, var_dir) | venue.env
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
    budget_lift()
    coins = COINS[:args.markets]
    started = time.monotonic()
    book = fixtures_create(venue, coins)
    worker = Worker(env, var_dir / "worker.log", concurrency=args.concurrency, pool=args.pool,
                    lift_budget=args.venue_budget == "lifted")
    worker.start()
    stack.callback(worker.stop)
    for coin in coins:
        positions_open(book, coin, "setup", worker, timeout=max(args.round_timeout, 120) * 5)
    output["setup_s"] = round(time.monotonic() - started, 1)
    output["machine"] = stf.machine_info()
    print(f"stop_to_exit: {args.accounts} Hyperliquid accounts x {len(coins)} markets = "
          f"{args.accounts * len(coins)} positions (stop-loss {STOP_PERCENT} % below entry, protective orders off), "
          f"1 worker -Q execution,monitoring -c {args.concurrency} {args.pool}, budget {args.venue_budget}, "
          f"monitor tick every {every:g} s; setup {output['setup_s']} s; {output['machine']}", flush=True)
    beat = Beat(every, float(os.environ.get("TRADING_EXITS_EVERY_SECONDS", "2")))
    beat.start()
    stack.callback(beat.stop)
    busy0 = stf._machine_cpu()
    for i, (kind, measured) in enumerate(schedule(args.rounds, args.poll_rounds, args.warmup_rounds)):
        coin = coins[i % len(coins)]
        result = round_run(book, venue, worker, kind=kind, coin=coin, tag=f"r{i}", every=every, measured=measured,
                           timeout=args.round_timeout)
        rounds.append(result)
        print(f"round {i:>3} {kind:<8}{'' if measured else ' (warm-up)':<11}{coin:<5} exits "
              f"{len(result.latencies_ms)}: first {result.latencies_ms[0]:.1f} ms, last {result.latencies_ms[-1]:.1f} "
              f"ms; load {result.loadavg:.2f}", flush=True)
        if beat.error is not None:
            raise RuntimeError(f"the beat thread failed: {beat.error!r}")
    busy1 = stf._machine_cpu()
    output["machine"]["loadavg_end"] = os.getloadavg()[0]
    output["machine"]["busy_pct_during_rounds"] = round(100 * (busy1[0] - busy0[0]) / (busy1[1] - busy0[1]), 1)
    output["beat_sent"] = beat.sent
    output["worker_errors_logged"] = worker.errors_logged()
    if output["worker_errors_logged"]:
        print(f"worker logged {output['worker_errors_logged']} error line(s):\n{worker.log_tail()}")


if __name__ == "__main__":
    sys.exit(main())
