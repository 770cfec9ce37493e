"""Ingest rate of the Hyperliquid market-data stream: messages per second and CPU per 1,000 messages.

    .venv/bin/python benchmarks/stream_ingest.py [--markets 50] [--mids 100000] [--candle-every 10]
                                                [--loop asyncio|uvloop] [--no-compression] [--json OUT]

The loopback venue (tests/fakes/hyperliquid_ws.py) runs in a child process, so that its CPU is not counted: it
pre-encodes `--mids` allMids frames of `--markets` coins (every coin's price moves in every frame) and one candle
update every `--candle-every` frames (coins in turn, ten updates per coin per minute, so candles close as they
go), then sends them back to back on one connection. This process runs `exchanges.streams.hyperliquid.
HyperliquidStream` following every coin's price and 1m candles, with a sink that counts what it gets (the stream's
JSON parsing, Decimal prices, tick batches and candle closing are all in the figure; a real sink's work is not).
Timed from the flood's start to the stream having received its last frame: wall time (messages/s) and this
process's CPU (`time.process_time`, CPU ms per 1,000 messages, and the messages/s that CPU allows on one core).
`fake_send_s` and `fake_cpu_s` are the child's sending time and CPU: the socket pushes back, so the sending time
follows the stream's pace, but a `fake_cpu_s` close to `seconds` means the fake (or the machine) set the pace and
`messages_per_s` is a lower bound; the CPU figures are this process's alone. A warm-up flood (`--warmup`) runs
first, untimed. The last stdout line is JSON; the load average is recorded before and after (the machine may be
shared). Results: docs/benchmarks.md, "stream_ingest".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import sys
import time
from collections.abc import Callable, Coroutine
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

T0 = 1_700_000_040_000  # a minute boundary, epoch ms
MINUTE = 60_000


def coins(markets: int) -> list[str]:
    return [f"C{i:03d}" for i in range(markets)]


def frames(markets: int, mids: int, candle_every: int, start: int) -> list[str]:
    """The flood: allMids frames with a candle update after every `candle_every` of them."""
    from tests.fakes.hyperliquid_ws import candle_data, candle_frame, mids_frame

    names = coins(markets)
    out: list[str] = []
    updates = start // candle_every
    for k in range(start, start + mids):
        out.append(mids_frame({name: f"{(i + 1) * 10 + (k % 1000) / 1000:.3f}" for i, name in enumerate(names)}))
        if (k + 1) % candle_every == 0:
            coin = names[updates % markets]
            minute = updates // (markets * 10)
            px = f"{100 + updates % 7}.5"
            out.append(candle_frame(candle_data(coin, "1m", T0 + minute * MINUTE, o=px, h=px, l=px, c=px, v="1.25",
                                                n=updates)))
            updates += 1
    return out


def venue(pipe: Connection, markets: int, compression: str | None) -> None:
    """The child process: the fake venue, driven by (command, ...) tuples from the pipe."""
    from tests.fakes.hyperliquid_ws import FakeHyperliquidWs

    fake = FakeHyperliquidWs(compression=compression).start()
    pipe.send(fake.base_url)
    expected = {("allMids",)} | {("candle", coin, "1m") for coin in coins(markets)}
    prepared: list[str] = []
    while True:
        command, *args = pipe.recv()
        if command == "subscribed":
            deadline = time.monotonic() + 30
            while fake.subscriptions() != [expected] and time.monotonic() < deadline:
                time.sleep(0.01)
            pipe.send(fake.subscriptions() == [expected])
        elif command == "prepare":
            prepared = frames(markets, *args)
            pipe.send(len(prepared))
        elif command == "flood":
            started, cpu = time.perf_counter(), time.process_time()
            sent = fake.flood(prepared)
            pipe.send((sent, time.perf_counter() - started, time.process_time() - cpu))
        elif command == "stop":
            fake.stop()
            pipe.send(None)
            return


class CountingSink:
    def __init__(self) -> None:
        self.ticks_seen = 0
        self.batches = 0
        self.candles = 0
        self.states: list[str] = []

    def ticks(self, ticks: list[Any]) -> None:
        self.batches += 1
        self.ticks_seen += len(ticks)

    def candle(self, candle: Any) -> None:
        self.candles += 1

    def state(self, state: Any) -> None:
        self.states.append(f"{state.connected} {state.detail}")

    def reconnected(self) -> None:
        pass


async def measure(args: argparse.Namespace, pipe: Connection, base_url: str) -> dict[str, Any]:
    from exchanges.streams.hyperliquid import HyperliquidStream

    names = coins(args.markets)
    symbols = {f"{name}/USDC:USDC" for name in names}
    stream = HyperliquidStream(base_url=base_url, stale_after=120.0)
    stream.set_subscriptions(symbols, {(symbol, "1m") for symbol in symbols})
    sink = CountingSink()
    task = asyncio.create_task(stream.run(sink))

    async def ask(*command: Any) -> Any:
        pipe.send(command)
        while not pipe.poll():
            await asyncio.sleep(0.002)
        return pipe.recv()

    try:
        if not await ask("subscribed"):
            raise SystemExit(f"the stream did not subscribe: {sink.states}")

        async def flood(count: int, start: int) -> tuple[int, float, float, float, float]:
            total = await ask("prepare", count, args.candle_every, start)
            target = stream.messages + total
            wall, cpu = time.perf_counter(), time.process_time()
            pipe.send(("flood",))
            while stream.messages < target:
                await asyncio.sleep(0.005)
                if task.done():
                    task.result()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            while not pipe.poll():
                await asyncio.sleep(0.002)
            sent, send_s, send_cpu = pipe.recv()
            if sent != total:
                raise SystemExit(f"the fake sent {sent} of {total} frames")
            return total, wall, cpu, send_s, send_cpu

        if args.warmup:
            await flood(args.warmup, 0)
        ticks_before, candles_before = sink.ticks_seen, sink.candles
        total, wall, cpu, send_s, send_cpu = await flood(args.mids, args.warmup)
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
    return {
        "messages": total,
        "allmids_frames": args.mids,
        "candle_frames": total - args.mids,
        "ticks": sink.ticks_seen - ticks_before,
        "closed_candles": sink.candles - candles_before,
        "seconds": round(wall, 3),
        "messages_per_s": round(total / wall),
        "cpu_s": round(cpu, 3),
        "cpu_ms_per_1000": round(cpu / total * 1000 * 1000, 2),
        "cpu_bound_messages_per_s": round(total / cpu) if cpu else None,
        "fake_send_s": round(send_s, 3),
        "fake_cpu_s": round(send_cpu, 3),
        "skipped": stream.skipped,
        "connections": stream.connections,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--markets", type=int, default=50)
    parser.add_argument("--mids", type=int, default=100_000, help="allMids frames in the timed flood")
    parser.add_argument("--candle-every", type=int, default=10, help="one candle update after this many allMids")
    parser.add_argument("--warmup", type=int, default=5_000, help="allMids frames in the untimed warm-up")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--no-compression", action="store_true", help="no permessage-deflate on the socket")
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args()

    load_before = os.getloadavg()
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    compression = None if args.no_compression else "deflate"
    process = context.Process(target=venue, args=(child, args.markets, compression), daemon=True)
    process.start()
    try:
        base_url = parent.recv()
        runner: Callable[[Coroutine[Any, Any, dict[str, Any]]], dict[str, Any]] = asyncio.run
        if args.loop == "uvloop":
            import uvloop

            runner = uvloop.run
        result = runner(measure(args, parent, base_url))
        parent.send(("stop",))
        parent.recv()
    finally:
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
    report = {"benchmark": "stream_ingest", "markets": args.markets, "candle_every": args.candle_every,
              "loop": args.loop, "compression": compression or "none", **result,
              "cpus": os.cpu_count(), "python": platform.python_version(),
              "load_before": [round(x, 2) for x in load_before],
              "load_after": [round(x, 2) for x in os.getloadavg()]}
    line = json.dumps(report)
    if args.json:
        Path(args.json).write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
