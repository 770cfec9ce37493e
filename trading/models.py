"""The persistent truth: accounts, strategies, signals, orders, fills, positions, snapshots, audit."""

from __future__ import annotations

from decimal import Decimal

from django.db import models
from django.db.models import Q

from trading.fields import money, money_or_none


class PriceFeed(models.TextChoices):
    """A source of market prices: the bundled demo feed or a venue's public prices (a network other than mainnet
    is part of the name). MarketPrice rows are keyed by it."""

    DEMO = "demo", "Demo feed (bundled candles)"
    HYPERLIQUID = "hyperliquid", "Hyperliquid"
    HYPERLIQUID_TESTNET = "hyperliquid-testnet", "Hyperliquid testnet"
    COINBASE = "coinbase", "Coinbase"
    SYNTHETIX = "synthetix", "Synthetix"
    SYNTHETIX_TESTNET = "synthetix-testnet", "Synthetix testnet"


class VenueAccount(models.Model):
    """An account on one venue, with its risk limits. Credentials are referenced, never stored here."""

    class Venue(models.TextChoices):
        PAPER = "paper", "Paper"
        COINBASE = "coinbase", "Coinbase"
        HYPERLIQUID = "hyperliquid", "Hyperliquid"
        SYNTHETIX = "synthetix", "Synthetix perps"

    class Network(models.TextChoices):
        PAPER = "paper", "Paper"
        TESTNET = "testnet", "Testnet"
        MAINNET = "mainnet", "Mainnet"

    name = models.CharField(max_length=64, unique=True)
    venue = models.CharField(max_length=16, choices=Venue.choices, default=Venue.PAPER)
    network = models.CharField(max_length=16, choices=Network.choices, default=Network.PAPER)
    # Prefix of the environment variables that hold this account's secrets, e.g. COINBASE_MAIN -> COINBASE_MAIN_API_KEY.
    credentials_env = models.CharField(max_length=64, blank=True, default="")
    quote_asset = models.CharField(max_length=16, default="USD")

    # Our book of cash (quote): deposits + realized P&L - fees. Reconciliation compares it with the venue.
    cash = money(default=Decimal("0"))

    max_leverage = money(default=Decimal("1"))
    market_leverage_caps = models.JSONField(default=dict, blank=True)
    max_open_positions = models.PositiveIntegerField(null=True, blank=True)
    max_symbol_exposure = money_or_none()
    max_account_exposure = money_or_none()
    daily_loss_limit = money_or_none()

    paper_initial_cash = money(default=Decimal("10000"))
    paper_slippage_bps = money(default=Decimal("0"))
    paper_max_volume_share = money_or_none()
    # The simulated venue's own state (the paper connector's "exchange side").
    paper_cash = money(default=Decimal("0"))
    paper_sequence = models.BigIntegerField(default=0)

    # Simulated venue latency (ms), split before and after the venue records the order: realistic paper timing.
    paper_latency_ms = models.PositiveIntegerField(default=0)
    # Where a paper account's prices come from: the bundled demo feed, or a venue's live prices (the market-data
    # role streams them). A live account's prices are its own venue's (trading.prices.price_feed_of).
    price_feed = models.CharField(max_length=32, choices=PriceFeed.choices, default=PriceFeed.DEMO,
                                  db_default=PriceFeed.DEMO)  # rows written by other code (a rolling deploy) too
    # Equity at the start of the current UTC day: the daily loss limit counts from here.
    day_start = models.DateField(null=True, blank=True)
    day_start_equity = money_or_none()

    last_reconciled_at = models.DateTimeField(null=True, blank=True)
    last_reconcile_report = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                name="paper_venue_iff_paper_network",
                condition=(Q(venue="paper", network="paper") | (~Q(venue="paper") & ~Q(network="paper"))),
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.venue}/{self.network})"


class Strategy(models.Model):
    """A configured strategy: what it trades, how it sizes and exits, and whether it runs."""

    class Status(models.TextChoices):
        ACTIVE = "active"
        PAUSED = "paused"
        STOPPED = "stopped"
        ERROR = "error"

    class Mode(models.TextChoices):
        PAPER = "paper"
        LIVE = "live"

    class SizingMode(models.TextChoices):
        RISK = "risk", "Risk % of equity to the stop"
        NOTIONAL = "notional", "Fixed notional (quote)"
        QUANTITY = "quantity", "Fixed quantity (base)"

    class ExitMode(models.TextChoices):
        NONE = "none"
        PERCENT = "percent"
        PRICE = "price"
        ATR = "atr"

    class Protection(models.TextChoices):
        AUTO = "auto", "On for live accounts, off for paper"
        ON = "on", "On: stop-loss and take-profit rest on the venue"
        OFF = "off", "Off: the bot's monitor only"

    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=64, unique=True)
    kind = models.CharField(max_length=32, default="webhook")
    symbol = models.CharField(max_length=32)
    timeframe = models.CharField(max_length=8, default="1m")
    params = models.JSONField(default=dict, blank=True)
    account = models.ForeignKey(VenueAccount, on_delete=models.PROTECT, related_name="strategies")
    mode = models.CharField(max_length=8, choices=Mode.choices, default=Mode.PAPER)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.STOPPED)

    sizing_mode = models.CharField(max_length=10, choices=SizingMode.choices, default=SizingMode.NOTIONAL)
    sizing_value = money(default=Decimal("100"))
    stop_loss_mode = models.CharField(max_length=8, choices=ExitMode.choices, default=ExitMode.NONE)
    stop_loss_value = money_or_none()
    take_profit_mode = models.CharField(max_length=8, choices=ExitMode.choices, default=ExitMode.NONE)
    take_profit_value = money_or_none()
    leverage = money(default=Decimal("1"))
    # Protective orders: the position's stop-loss and take-profit placed on the venue as trigger orders (where the
    # venue has them), besides the bot's own monitor.
    protective_orders = models.CharField(max_length=4, choices=Protection.choices, default=Protection.AUTO)
    # Trailing stop: once the price has moved trailing_activation_percent in the position's favour (0: at once), the
    # stop follows the best price seen at trailing_stop_percent behind it, and only ever tightens.
    trailing_stop_percent = money_or_none()
    trailing_activation_percent = money_or_none()

    # SHA-256 hex of the TradingView webhook secret; the secret itself is shown once and never stored.
    webhook_secret_hash = models.CharField(max_length=64, blank=True, default="")
    webhook_secret_set_at = models.DateTimeField(null=True, blank=True)

    last_error = models.TextField(blank=True, default="")
    last_evaluated_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "strategies"

    def __str__(self) -> str:
        return self.slug


class Signal(models.Model):
    """One request to trade, stored before anything else happens, with its decision and stage times."""

    class Source(models.TextChoices):
        WEBHOOK = "webhook"
        STRATEGY = "strategy"
        MANUAL = "manual"
        MONITOR = "monitor"  # stop-loss / take-profit exits fired by the monitor
        KILL_SWITCH = "kill_switch"

    class Status(models.TextChoices):
        RECEIVED = "received"
        ACCEPTED = "accepted"
        REJECTED = "rejected"
        IGNORED = "ignored"  # nothing to do (e.g. close while flat)
        WORKING = "working"  # an exit pursued until the strategy's position is flat
        EXECUTED = "executed"  # its target was reached: every order filled in full, or the exit left it flat
        FAILED = "failed"  # no longer pursued: an order refused, canceled or filled in part (the detail says why)
        REPLACED = "replaced"  # a newer signal of the strategy in the same market took over before it was done

    class Action(models.TextChoices):
        OPEN_LONG = "open_long"
        OPEN_SHORT = "open_short"
        CLOSE = "close"
        REVERSE = "reverse"
        TARGET = "target"

    # No index of its own: (strategy, -received_at) below covers it. Every index costs each intake INSERT.
    strategy = models.ForeignKey(Strategy, on_delete=models.PROTECT, related_name="signals", db_index=False)
    account = models.ForeignKey(VenueAccount, on_delete=models.PROTECT, related_name="signals")
    source = models.CharField(max_length=12, choices=Source.choices)
    idempotency_key = models.CharField(max_length=200)  # unique: the constraint below (no LIKE-pattern index)
    action = models.CharField(max_length=12, choices=Action.choices)
    symbol = models.CharField(max_length=32)
    quantity = money_or_none()
    target = money_or_none()
    order_type = models.CharField(max_length=12, default="market")
    price = money_or_none()
    stop_loss = money_or_none()
    take_profit = money_or_none()
    leverage = money_or_none()
    atr = money_or_none()  # ATR sent with the signal (e.g. by a TradingView alert), for ATR-multiple exits
    payload = models.JSONField(default=dict, blank=True)  # redacted copy of what was received

    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RECEIVED)
    decision_rule = models.CharField(max_length=32, blank=True, default="")
    decision_detail = models.TextField(blank=True, default="")
    attempts = models.PositiveSmallIntegerField(default=0)

    received_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    filled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["status", "received_at"]), models.Index(fields=["strategy", "-received_at"]),
            # The signals still waiting, per strategy in arrival order (the engine decides them in that order):
            # tiny, as only RECEIVED rows are in it, so the check costs the same with a backlog of ten thousand.
            models.Index(fields=["strategy", "received_at"], name="signal_waiting_by_strategy",
                         condition=models.Q(status="received")),
        ]
        constraints = [models.UniqueConstraint(fields=["idempotency_key"], name="signal_idempotency_key_unique")]

    def __str__(self) -> str:
        return f"signal {self.pk} {self.action} {self.symbol}"


class Order(models.Model):
    """An order with our client order id, saved before any call to a venue; status changes only in services."""

    class Status(models.TextChoices):
        NEW = "new"
        SUBMITTING = "submitting"  # may have reached the venue: ask by client id before resending
        OPEN = "open"
        PARTIALLY_FILLED = "partially_filled"
        FILLED = "filled"
        CANCELED = "canceled"
        REJECTED = "rejected"
        UNKNOWN = "unknown"  # an ambiguous failure: the reconciler finds out

    class Side(models.TextChoices):
        BUY = "buy"
        SELL = "sell"

    class Type(models.TextChoices):
        MARKET = "market"
        LIMIT = "limit"
        STOP = "stop"
        TAKE_PROFIT = "take_profit"

    class Purpose(models.TextChoices):
        ENTRY = "entry"
        EXIT = "exit"
        STOP_LOSS = "stop_loss"
        TAKE_PROFIT = "take_profit"
        KILL_SWITCH = "kill_switch"

    FINAL = (Status.FILLED, Status.CANCELED, Status.REJECTED)
    WORKING = (Status.NEW, Status.SUBMITTING, Status.OPEN, Status.PARTIALLY_FILLED, Status.UNKNOWN)

    client_order_id = models.CharField(max_length=64, unique=True)
    account = models.ForeignKey(VenueAccount, on_delete=models.PROTECT, related_name="orders")
    strategy = models.ForeignKey(Strategy, on_delete=models.PROTECT, related_name="orders")
    signal = models.ForeignKey(Signal, on_delete=models.PROTECT, related_name="orders", null=True, blank=True)
    # A protective order (a stop-loss or take-profit resting on the venue) names the position it protects.
    position = models.ForeignKey("Position", on_delete=models.PROTECT, related_name="protective_orders", null=True,
                                 blank=True)
    symbol = models.CharField(max_length=32)
    side = models.CharField(max_length=4, choices=Side.choices)
    type = models.CharField(max_length=12, choices=Type.choices, default=Type.MARKET)
    purpose = models.CharField(max_length=12, choices=Purpose.choices, default=Purpose.ENTRY)
    reduce_only = models.BooleanField(default=False)
    post_only = models.BooleanField(default=False)
    quantity = money()
    price = money_or_none()  # limit price
    reference_price = money_or_none()  # the price risk was checked against
    trigger_price = money_or_none()
    leverage = money_or_none()

    status = models.CharField(max_length=18, choices=Status.choices, default=Status.NEW)
    venue_order_id = models.CharField(max_length=128, blank=True, default="")
    filled_quantity = money(default=Decimal("0"))
    average_fill_price = money_or_none()
    fees = money(default=Decimal("0"))
    reason = models.TextField(blank=True, default="")
    attempts = models.PositiveSmallIntegerField(default=0)

    created_at = models.DateTimeField()
    submitted_at = models.DateTimeField(null=True, blank=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField()

    class Meta:
        indexes = [
            models.Index(fields=["status", "updated_at"]),
            models.Index(fields=["account", "status"]),
            # The engine reads an account's working orders under its lock on every signal: this index holds only
            # them, so the read does not grow with the order history.
            models.Index(fields=["account"],
                         condition=models.Q(status__in=["new", "submitting", "open", "partially_filled", "unknown"]),
                         name="order_working_by_account"),
            models.Index(fields=["strategy", "-created_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.side} {self.quantity} {self.symbol} ({self.client_order_id})"

    @property
    def is_final(self) -> bool:
        return self.status in self.FINAL


class Fill(models.Model):  # noqa: DJ008 - a record row, listed by its columns in the admin
    """One execution reported by the venue; recorded once (unique per order and venue fill id)."""

    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="fills")
    account = models.ForeignKey(VenueAccount, on_delete=models.PROTECT, related_name="fills")
    strategy = models.ForeignKey(Strategy, on_delete=models.PROTECT, related_name="fills")
    symbol = models.CharField(max_length=32)
    side = models.CharField(max_length=4)
    venue_fill_id = models.CharField(max_length=128)
    quantity = money()
    price = money()
    fee = money(default=Decimal("0"))
    fee_currency = models.CharField(max_length=16, default="USD")
    realized_pnl = money(default=Decimal("0"))  # gross P&L this fill realized, before its fee
    time = models.DateTimeField()
    recorded_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["order", "venue_fill_id"], name="fill_once_per_order")]
        indexes = [models.Index(fields=["account", "time"])]


class Position(models.Model):
    """A strategy's net position in one market on one account; kept (flat) after it closes."""

    account = models.ForeignKey(VenueAccount, on_delete=models.PROTECT, related_name="positions")
    strategy = models.ForeignKey(Strategy, on_delete=models.PROTECT, related_name="positions")
    symbol = models.CharField(max_length=32)
    quantity = money(default=Decimal("0"))  # signed: > 0 long, < 0 short
    cost_basis = money(default=Decimal("0"))  # signed sum of qty x price of the open quantity
    average_entry = money_or_none()
    realized_pnl = money(default=Decimal("0"))  # gross, all time
    fees_paid = money(default=Decimal("0"))
    stop_loss = money_or_none()
    take_profit = money_or_none()
    trail_peak = money_or_none()  # best price since the trailing stop activated (None: not active)
    opened_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["account", "strategy", "symbol"], name="one_position_per_strategy_market")
        ]

    def __str__(self) -> str:
        return f"{self.strategy} {self.symbol} {self.quantity}"

    @property
    def net_realized_pnl(self) -> Decimal:
        return self.realized_pnl - self.fees_paid


class EquitySnapshot(models.Model):  # noqa: DJ008 - a record row, listed by its columns in the admin
    """Equity and P&L of an account (or one strategy of it) at a moment."""

    account = models.ForeignKey(VenueAccount, on_delete=models.CASCADE, related_name="snapshots")
    strategy = models.ForeignKey(Strategy, on_delete=models.CASCADE, related_name="snapshots", null=True, blank=True)
    time = models.DateTimeField()
    equity = money()
    cash = money()
    realized_pnl = money()  # net of fees
    unrealized_pnl = money()

    class Meta:
        indexes = [models.Index(fields=["account", "strategy", "time"])]


class MarketPrice(models.Model):  # noqa: DJ008 - a record row, listed by its columns in the admin
    """The latest price of a market from one price feed (the demo feed, or a venue's stream): what the paper venue,
    the monitor, the marks and the webhook's price guard read. Two feeds quoting one symbol never meet."""

    feed = models.CharField(max_length=32, default=PriceFeed.DEMO, db_default=PriceFeed.DEMO)
    symbol = models.CharField(max_length=32)
    price = money()
    volume = money_or_none()  # base volume of the current candle
    time = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["feed", "symbol"], name="market_price_feed_symbol_unique")]


class FeedMarkets(models.Model):  # noqa: DJ008 - a record row, listed by its columns in the admin
    """A price feed's venue markets (tick, lot, minimums, leverage, fees), loaded from its public market data and kept
    here for every process: the markets a paper account on that feed trades (trading/feedmarkets.py)."""

    feed = models.CharField(max_length=32, unique=True)
    markets = models.JSONField()  # [{field: value as text}], as trading.feedmarkets writes them
    loaded_at = models.DateTimeField()

    class Meta:
        verbose_name_plural = "feed markets"


class Funding(models.Model):  # noqa: DJ008 - a record row, listed by its columns in the admin
    """One funding payment on an account's perp position, booked once per (account, market, funding time): into the
    positions' realized P&L and the account's cash (and, on paper, the paper venue's own cash)."""

    class Source(models.TextChoices):
        PAPER = "paper"  # the paper venue charged it, at its feed venue's rate (trading/funding.py)
        VENUE = "venue"  # a live venue reported it (Hyperliquid userFunding)

    account = models.ForeignKey(VenueAccount, on_delete=models.PROTECT, related_name="fundings")
    symbol = models.CharField(max_length=32)
    time = models.DateTimeField()  # the funding time, on the venue's interval grid (the hour on Hyperliquid)
    source = models.CharField(max_length=8, choices=Source.choices)
    rate = money()
    price = money_or_none()  # the price the payment was valued at (None: the venue's own amount)
    quantity = money()  # the account's signed position then, in base
    amount = money()  # signed as the cash moved: > 0 received, < 0 paid
    by_strategy = models.JSONField(default=dict, blank=True)  # strategy id -> its share of `amount` (text)
    venue_ref = models.CharField(max_length=128, blank=True, default="")  # the venue's id of the payment
    recorded_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["account", "symbol", "time"],
                                               name="funding_once_per_account_market_time")]
        indexes = [models.Index(fields=["account", "source", "time"])]


class PaperOrder(models.Model):  # noqa: DJ008 - a record row, listed by its columns in the admin
    """The paper venue's own record of an order (its "exchange side"), kept apart from our Order book."""

    account = models.ForeignKey(VenueAccount, on_delete=models.CASCADE, related_name="paper_orders")
    client_order_id = models.CharField(max_length=64)
    venue_order_id = models.CharField(max_length=64)
    symbol = models.CharField(max_length=32)
    is_open = models.BooleanField(default=True)
    data = models.JSONField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["account", "client_order_id"], name="paper_client_id_unique"),
            models.UniqueConstraint(fields=["account", "venue_order_id"], name="paper_venue_id_unique"),
        ]
        indexes = [models.Index(fields=["account", "is_open"])]


class PaperPosition(models.Model):  # noqa: DJ008 - a record row, listed by its columns in the admin
    """The paper venue's net position per market."""

    account = models.ForeignKey(VenueAccount, on_delete=models.CASCADE, related_name="paper_positions")
    symbol = models.CharField(max_length=32)
    quantity = money(default=Decimal("0"))
    cost = money(default=Decimal("0"))
    # Base quantity filled in the current candle, for the volume-share cap on partial fills.
    volume_candle = models.DateTimeField(null=True, blank=True)
    volume_taken = money(default=Decimal("0"))

    class Meta:
        constraints = [models.UniqueConstraint(fields=["account", "symbol"], name="paper_position_unique")]


class KillSwitch(models.Model):
    """The global halt: one row. Engaged blocks entries, cancels orders, closes positions; released by hand."""

    engaged = models.BooleanField(default=False)
    reason = models.TextField(blank=True, default="")
    changed_at = models.DateTimeField(null=True, blank=True)
    changed_by = models.CharField(max_length=150, blank=True, default="")
    # While engaged: when the venues last said every market was flat (None: not yet), and what was still open then.
    flat_at = models.DateTimeField(null=True, blank=True)
    still_open = models.JSONField(default=list, blank=True)

    class Meta:
        verbose_name_plural = "kill switch"

    def __str__(self) -> str:
        return "ENGAGED" if self.engaged else "released"


class AuditEvent(models.Model):
    """An append-only record of every state change of money or configuration."""

    time = models.DateTimeField()
    actor = models.CharField(max_length=150)
    action = models.CharField(max_length=64)
    entity = models.CharField(max_length=32)
    entity_id = models.CharField(max_length=64)
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        indexes = [models.Index(fields=["entity", "entity_id"]), models.Index(fields=["time"])]

    def __str__(self) -> str:
        return f"{self.time:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.entity}:{self.entity_id}"


class VenueJournalEntry(models.Model):  # noqa: DJ008 - a record row, listed by its columns in the admin
    """Durable key/value state a live connector keeps outside the venue (e.g. a signed transaction before broadcast).

    Written on its own connection, so no foreign-key constraint: the write never waits on, or depends on, a
    transaction that holds the account row.
    """

    account = models.ForeignKey(VenueAccount, on_delete=models.DO_NOTHING, db_constraint=False,
                                related_name="journal_entries")
    key = models.CharField(max_length=200)
    value = models.JSONField()
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["account", "key"], name="venue_journal_key_unique")]
        verbose_name_plural = "venue journal entries"


class VenueHealth(models.Model):
    """The latest circuit-breaker state of an account's venue, as reported by the process that saw it change."""

    class State(models.TextChoices):
        CLOSED = "closed", "Closed"
        OPEN = "open", "Open"
        HALF_OPEN = "half_open", "Half-open"

    account = models.OneToOneField(VenueAccount, on_delete=models.DO_NOTHING, db_constraint=False,
                                   related_name="venue_health")
    state = models.CharField(max_length=10, choices=State.choices, default=State.CLOSED)
    since = models.DateTimeField()
    consecutive_failures = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")  # error class and message, secret-looking values removed
    reporter = models.CharField(max_length=100, blank=True, default="")  # host:pid of the reporting process
    updated_at = models.DateTimeField()
    # The equity snapshot of the account, apart from the breaker: consecutive snapshots that could not value it (0:
    # the last one did), the latest one's error (secret-free) and when it failed. Database defaults, because
    # venue_health_record inserts breaker rows in raw SQL without these columns.
    snapshot_failures = models.PositiveIntegerField(default=0, db_default=0)
    snapshot_error = models.TextField(blank=True, default="", db_default="")
    snapshot_failed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "venue health"

    def __str__(self) -> str:
        return f"{self.account_id}: {self.state}"
