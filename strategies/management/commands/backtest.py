"""`manage.py backtest --strategy rsi --data FILE.csv [--params JSON] [--json OUT] [--html OUT] ...`: one backtest.

Reads the shared candle CSV, runs `strategies.backtest.run` (the live rules, sizing, fill model and P&L code) and
prints the metrics; --json writes the trades and metrics, --html an offline report (inline SVG charts).
Assumptions and metric formulas: docs/backtesting.md.
"""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from exchanges.paper import DEFAULT_MARKETS
from strategies.backtest import SIZINGS, BacktestConfig, run
from strategies.candles import CsvError, candles_read_csv
from strategies.report import result_to_html, result_to_json
from trading.domain import ExitMode, ExitRule, RiskLimits, SizingMode, SizingRule, StrategyRisk


class Command(BaseCommand):
    help = ("Backtest a strategy rule on a timestamp,open,high,low,close,volume CSV (epoch ms UTC, candle open). "
            "Signals act at the next candle's open; stops and take-profits are checked inside each candle.")

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--strategy", required=True, help="rule name: rsi, macd, bollinger or combo")
        parser.add_argument("--data", required=True, help="candle CSV file")
        parser.add_argument("--params", default="{}", help='rule params as a JSON object, e.g. \'{"period": 14}\'')
        parser.add_argument("--cash", default="10000", help="starting cash in quote (default 10000)")
        parser.add_argument("--fee", default=None,
                            help="taker fee fraction (default 0.001; with --market it replaces the market's fee)")
        parser.add_argument("--slippage-bps", default="0", help="slippage against the taker in bps (default 0)")
        parser.add_argument("--sizing", choices=SIZINGS, default="all-in",
                            help="all-in: whole equity per entry, fee included; risk: --risk-pct of equity at "
                                 "the stop, through the live risk check (needs --stop-loss)")
        parser.add_argument("--risk-pct", default="1", help="risk sizing: %% of equity lost at the stop (default 1)")
        parser.add_argument("--stop-loss", default=None, help="stop-loss, %% below a long entry (above a short)")
        parser.add_argument("--take-profit", default=None, help="take-profit, %% above a long entry (below a short)")
        parser.add_argument("--max-leverage", default=None, help="account leverage cap (default 1)")
        parser.add_argument("--market", default=None, choices=[m.symbol for m in DEFAULT_MARKETS],
                            help="a paper market: its tick and lot rounding and taker fee (default: frictionless)")
        parser.add_argument("--allow-short", action="store_true", help="also take the rule's short entries")
        parser.add_argument("--json", dest="json_out", default=None, help="write trades and metrics as JSON here")
        parser.add_argument("--html", dest="html_out", default=None, help="write an offline HTML report here")
        parser.add_argument("--quiet-progress", action="store_true", help="no progress bar on stderr")

    def handle(self, *args: Any, **options: Any) -> None:
        config = self._config(options)
        try:
            candles = candles_read_csv(options["data"], form="columns")
        except CsvError as exc:
            raise CommandError(str(exc)) from exc
        except OSError as exc:
            raise CommandError(f"cannot read {options['data']}: {exc}") from exc

        progress = None
        if not options["quiet_progress"]:
            from strategies.replay import ProgressBar

            bar = ProgressBar(self.stderr, "backtest")
            progress = lambda share: bar(int(share * 1000), 1000)  # noqa: E731
        try:
            result = run(candles, config, progress=progress)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc

        if options["json_out"]:
            data = {"config": _config_json(config, options), **result_to_json(result)}
            Path(options["json_out"]).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        if options["html_out"]:
            title = f"Backtest: {config.strategy} on {Path(options['data']).name}"
            Path(options["html_out"]).write_text(result_to_html(result, candles, title=title), encoding="utf-8")
        metrics = result_to_json(result)["metrics"]
        width = max(len(k) for k in metrics)
        for key, value in metrics.items():
            self.stdout.write(f"{key:<{width}}  {value}")

    def _config(self, options: dict[str, Any]) -> BacktestConfig:
        try:
            params = json.loads(options["params"])
        except json.JSONDecodeError as exc:
            raise CommandError(f"--params is not valid JSON: {exc}") from exc
        if not isinstance(params, dict):
            raise CommandError("--params must be a JSON object")
        market = None
        if options["market"]:
            market = next(m for m in DEFAULT_MARKETS if m.symbol == options["market"])
        fee = _decimal("--fee", options["fee"]) if options["fee"] is not None else None
        if market is not None and fee is not None:
            from dataclasses import replace

            market = replace(market, taker_fee=fee)
        stop = _exit_rule("--stop-loss", options["stop_loss"])
        take = _exit_rule("--take-profit", options["take_profit"])
        if options["sizing"] == "risk" and stop.mode is ExitMode.NONE:
            raise CommandError("--sizing risk needs --stop-loss (the risk budget is what the stop loses)")
        risk = None
        if options["sizing"] == "risk" or stop.mode is not ExitMode.NONE or take.mode is not ExitMode.NONE:
            risk = StrategyRisk(sizing=SizingRule(SizingMode.RISK, _decimal("--risk-pct", options["risk_pct"])),
                                stop_loss=stop, take_profit=take)
        limits = None
        if options["max_leverage"] is not None:
            limits = RiskLimits(max_leverage=_decimal("--max-leverage", options["max_leverage"]))
        return BacktestConfig(
            strategy=options["strategy"],
            params=params,
            cash=_decimal("--cash", options["cash"]),
            fee=fee if fee is not None else Decimal("0.001"),
            slippage_bps=_decimal("--slippage-bps", options["slippage_bps"]),
            sizing=options["sizing"],
            risk=risk,
            limits=limits,
            market=market,
            allow_short=options["allow_short"],
        )


def _decimal(name: str, text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise CommandError(f"{name} must be a number, got {text!r}") from None
    if not value.is_finite():
        raise CommandError(f"{name} must be finite, got {text!r}")
    return value


def _exit_rule(name: str, text: str | None) -> ExitRule:
    if text is None:
        return ExitRule()
    value = _decimal(name, text)
    if value <= 0:
        raise CommandError(f"{name} must be a positive percentage, got {text!r}")
    return ExitRule(ExitMode.PERCENT, value)


def _config_json(config: BacktestConfig, options: dict[str, Any]) -> dict[str, Any]:
    return {
        "strategy": config.strategy,
        "params": dict(config.params),
        "data": str(options["data"]),
        "cash": str(config.cash),
        "fee": str(config.market.taker_fee if config.market else config.fee),
        "slippage_bps": str(config.slippage_bps),
        "sizing": config.sizing,
        "risk_pct": options["risk_pct"] if config.sizing == "risk" else None,
        "stop_loss_pct": options["stop_loss"],
        "take_profit_pct": options["take_profit"],
        "market": config.market.symbol if config.market else None,
        "allow_short": config.allow_short,
    }
