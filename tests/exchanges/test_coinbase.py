"""The Coinbase connector through ccxt against the loopback Coinbase fake (real JWTs, real wire format)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any
from decimal import Decimal

import pytest

from exchanges import registry
from exchanges.base import OrderRequest, OrderType, Side, VenueConfig, VenueOrderStatus
from exchanges.coinbase import CoinbaseConnector, build
from exchanges.errors import (
    AuthError,
    InsufficientFundsError,
    InvalidOrderError,
    MarketNotFoundError,
    OrderNotFoundError,
    OrderStatusUnknownError,
    RateLimitError,
    TemporaryError,
    VenueError,
)
from tests.exchanges.contract import ConnectorContract, ContractVenue
from tests.fakes.coinbase_venue import CoinbaseFake, harness
from tests.fakes.faults import Fault
from tests.fakes.venues import VenueHarness
from datetime import UTC

ORDERS = "/api/v3/brokerage/orders"


class TestCoinbaseConnectorContract(ConnectorContract):
    @pytest.fixture(params=["ES256", "EdDSA"])
    def venue(self, request: pytest.FixtureRequest) -> Iterator[ContractVenue]:
        with harness(algorithm=request.param) as h:
            connector = registry.build(venue="coinbase", network=h.network, credentials=h.credentials,
                                       endpoint=h.endpoint, account=f"contract-{uuid.uuid4().hex[:8]}")
            yield ContractVenue(connector=connector, symbol=h.symbol, price=h.price, set_price=h.set_price)


@pytest.fixture
def venue_harness() -> Iterator[VenueHarness]:
    with harness() as h:
        yield h


@pytest.fixture
def fake(venue_harness: VenueHarness) -> CoinbaseFake:
    found = venue_harness.extra["fake"]
    assert isinstance(found, CoinbaseFake)
    return found


def connect(h: VenueHarness, **credentials: str) -> CoinbaseConnector:
    """The bare connector (no retries, no breaker): each test sees the venue's raw answer."""
    connector = build(VenueConfig(venue="coinbase", network=h.network, credentials={**h.credentials, **credentials},
                                  endpoint=h.endpoint))
    assert isinstance(connector, CoinbaseConnector)
    return connector


@pytest.fixture
def coinbase(venue_harness: VenueHarness) -> CoinbaseConnector:
    return connect(venue_harness)


def buy(quantity: str = "0.001", type_: OrderType = OrderType.MARKET, price: str | None = "50000",
        client_order_id: str | None = None, symbol: str = "BTC/USD", **extra: object) -> OrderRequest:
    return OrderRequest(client_order_id=client_order_id or uuid.uuid4().hex, symbol=symbol, side=Side.BUY,
                        type=type_, quantity=Decimal(quantity), price=None if price is None else Decimal(price),
                        **extra)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- wire format


def test_create_body_carries_our_client_order_id(coinbase: CoinbaseConnector, fake: CoinbaseFake) -> None:
    coinbase.create_order(buy(client_order_id="ours-123"))
    (body,) = fake.order_bodies()
    assert body["client_order_id"] == "ours-123"
    assert fake.created_client_ids() == ["ours-123"]


def test_market_buy_sends_quote_size_computed_in_decimal(coinbase: CoinbaseConnector, fake: CoinbaseFake) -> None:
    order = coinbase.create_order(buy("0.00123457", price="50000.01"))
    # 0.00123457 x 50000.01 = 61.7285123457 -> rounded down to the quote increment 0.01
    assert fake.order_bodies()[0]["order_configuration"] == {"market_market_ioc": {"quote_size": "61.72"}}
    assert order.status is VenueOrderStatus.FILLED
    assert order.filled_quantity == sum(f.quantity for f in order.fills) == Decimal("0.0012344")


def test_market_buy_without_a_price_sizes_from_the_ticker(coinbase: CoinbaseConnector, fake: CoinbaseFake) -> None:
    coinbase.create_order(buy("0.0002", price=None))
    assert fake.order_bodies()[0]["order_configuration"] == {"market_market_ioc": {"quote_size": "10"}}


def test_limit_post_only_and_stop_bodies(coinbase: CoinbaseConnector, fake: CoinbaseFake) -> None:
    coinbase.create_order(buy("0.001", OrderType.LIMIT, "40000.5", post_only=True))
    fake.fund("BTC", "1")
    coinbase.create_order(OrderRequest("sl-1", "BTC/USD", Side.SELL, OrderType.STOP, Decimal("0.001"),
                                       trigger_price=Decimal("45000")))
    coinbase.create_order(OrderRequest("tp-1", "BTC/USD", Side.SELL, OrderType.TAKE_PROFIT, Decimal("0.001"),
                                       trigger_price=Decimal("55000")))
    limit, stop, take = (b["order_configuration"] for b in fake.order_bodies())
    assert limit == {"limit_limit_gtc": {"base_size": "0.001", "limit_price": "40000.5", "post_only": True}}
    assert stop == {"stop_limit_stop_limit_gtc": {"base_size": "0.001", "limit_price": "44550", "stop_price": "45000",
                                                  "stop_direction": "STOP_DIRECTION_STOP_DOWN"}}
    assert take == {"stop_limit_stop_limit_gtc": {"base_size": "0.001", "limit_price": "54450", "stop_price": "55000",
                                                  "stop_direction": "STOP_DIRECTION_STOP_UP"}}
    kinds = {o.client_order_id: (o.type, o.trigger_price) for o in coinbase.open_orders("BTC/USD")}
    assert kinds["sl-1"] == (OrderType.STOP, Decimal("45000"))
    assert kinds["tp-1"] == (OrderType.TAKE_PROFIT, Decimal("55000"))


def test_stop_triggers_and_fills_when_the_price_falls(coinbase: CoinbaseConnector, fake: CoinbaseFake) -> None:
    fake.fund("BTC", "1")
    placed = coinbase.create_order(OrderRequest("sl-2", "BTC/USD", Side.SELL, OrderType.STOP, Decimal("0.01"),
                                                trigger_price=Decimal("45000")))
    assert placed.status is VenueOrderStatus.OPEN
    fake.set_price("BTC/USD", Decimal("44990"))
    filled = coinbase.fetch_order("BTC/USD", placed.venue_order_id)
    assert filled.status is VenueOrderStatus.FILLED and filled.fills[0].price == Decimal("44990")


def test_crossing_post_only_is_refused(coinbase: CoinbaseConnector) -> None:
    with pytest.raises(InvalidOrderError, match="INVALID_LIMIT_PRICE_POST_ONLY"):
        coinbase.create_order(buy("0.001", OrderType.LIMIT, "50001", post_only=True))


def test_tiny_prices_survive_the_round_trip_exactly(coinbase: CoinbaseConnector, fake: CoinbaseFake) -> None:
    fake.fund("BTC", "1")
    market = coinbase.market("XLM/BTC")
    assert (market.tick_size, market.lot_size) == (Decimal("0.00000001"), Decimal("1"))
    assert coinbase.ticker("XLM/BTC").price == Decimal("0.00000271")
    placed = coinbase.create_order(buy("12345", OrderType.LIMIT, "0.00000105", symbol="XLM/BTC"))
    assert fake.order_bodies()[0]["order_configuration"]["limit_limit_gtc"]["limit_price"] == "0.00000105"
    assert coinbase.fetch_order("XLM/BTC", placed.venue_order_id).price == Decimal("0.00000105")
    fake.set_price("XLM/BTC", Decimal("0.00000001"))
    filled = coinbase.fetch_order("XLM/BTC", placed.venue_order_id)
    assert (filled.fills[0].price, filled.fills[0].quantity) == (Decimal("0.00000105"), Decimal("12345"))
    assert filled.fills[0].fee == Decimal("12345") * Decimal("0.00000105") * Decimal("0.004")


# --------------------------------------------------------------------------------------------- account data


def test_balances_show_free_and_held_funds(coinbase: CoinbaseConnector, fake: CoinbaseFake) -> None:
    fake.fund("ETH", "1.234567890123456789")
    coinbase.create_order(buy("0.01", OrderType.LIMIT, "40000"))
    balances = {b.asset: b for b in coinbase.balances()}
    assert balances["ETH"].free == balances["ETH"].total == Decimal("1.234567890123456789")
    assert balances["USD"].total == Decimal("100000")
    assert balances["USD"].free == Decimal("100000") - Decimal("400") * Decimal("1.004")


def test_balances_follow_cursor_pages(coinbase: CoinbaseConnector, fake: CoinbaseFake) -> None:
    for i in range(300):
        fake.fund(f"T{i:03d}", str(i))
    balances = coinbase.balances()
    assert len(balances) == 302 and {b.asset for b in balances} >= {"T000", "T299", "USD"}


def test_candles_are_oldest_first_decimal_and_start_at_since(coinbase: CoinbaseConnector,
                                                             fake: CoinbaseFake) -> None:
    from datetime import datetime

    fake.candle_rows["BTC-USD"] = [
        {"start": str(1700000000 + 60 * i), "low": "49000.01", "high": "51000.99", "open": f"5000{i}.5",
         "close": f"5000{i}.25", "volume": "1.23456789"} for i in range(5)
    ]
    since = datetime.fromtimestamp(1700000120, tz=UTC)
    candles = coinbase.candles("BTC/USD", "1m", since=since, limit=10)
    assert [c.open_time.timestamp() for c in candles] == [1700000120, 1700000180, 1700000240]
    assert (candles[0].open, candles[0].close, candles[0].volume) == (Decimal("50002.5"), Decimal("50002.25"),
                                                                     Decimal("1.23456789"))
    query = fake.requests(lambda r: "/candles" in r.path)[-1].path
    assert "granularity=ONE_MINUTE" in query and "start=1700000100" in query
    with pytest.raises(VenueError, match="no 4h candles"):
        coinbase.candles("BTC/USD", "4h")


def test_spot_has_no_positions_and_no_leverage(coinbase: CoinbaseConnector) -> None:
    coinbase.create_order(buy())
    assert coinbase.positions() == []
    coinbase.set_leverage("BTC/USD", Decimal("1"))
    with pytest.raises(InvalidOrderError, match="without leverage"):
        coinbase.set_leverage("BTC/USD", Decimal("3"))
    assert not coinbase.capabilities.leverage and not coinbase.capabilities.positions


# --------------------------------------------------------------------------------------------- partial fills, lag


def test_partial_fill_then_the_rest_when_the_price_crosses(coinbase: CoinbaseConnector, fake: CoinbaseFake) -> None:
    fake.partial_fills(1, Decimal("0.4"))
    placed = coinbase.create_order(buy("0.01", OrderType.LIMIT, "50010"))
    assert (placed.status, placed.filled_quantity) == (VenueOrderStatus.PARTIALLY_FILLED, Decimal("0.004"))
    assert [o.venue_order_id for o in coinbase.open_orders()] == [placed.venue_order_id]
    fake.set_price("BTC/USD", Decimal("50000"))
    done = coinbase.fetch_order("BTC/USD", placed.venue_order_id)
    assert (done.status, done.filled_quantity, len(done.fills)) == (VenueOrderStatus.FILLED, Decimal("0.01"), 2)


def test_partial_market_fill_ends_canceled_with_its_fills(coinbase: CoinbaseConnector, fake: CoinbaseFake) -> None:
    fake.fund("BTC", "1")
    fake.partial_fills(1, Decimal("0.5"))
    order = coinbase.create_order(OrderRequest("s-1", "BTC/USD", Side.SELL, OrderType.MARKET, Decimal("0.01")))
    assert (order.status, order.quantity, order.filled_quantity) == (VenueOrderStatus.CANCELED, Decimal("0.01"),
                                                                    Decimal("0.005"))


def test_status_lag_after_create_reports_the_order_working(coinbase: CoinbaseConnector, fake: CoinbaseFake) -> None:
    fake.lag(1)
    placed = coinbase.create_order(buy(client_order_id="lagging"))
    assert (placed.status, placed.client_order_id) == (VenueOrderStatus.OPEN, "lagging")
    assert coinbase.fetch_order("BTC/USD", placed.venue_order_id).status is VenueOrderStatus.FILLED


def test_order_found_by_client_id_from_the_listing(venue_harness: VenueHarness) -> None:
    placed = connect(venue_harness).create_order(buy(client_order_id="from-another-process"))
    fresh = connect(venue_harness)  # knows nothing of the order: it must search the venue's listing
    assert fresh.fetch_order_by_client_id("BTC/USD", "from-another-process") == placed
    assert fresh.fetch_order_by_client_id("BTC/USD", "never-sent") is None


def test_cancel_that_lost_to_a_fill_returns_the_filled_order(coinbase: CoinbaseConnector) -> None:
    filled = coinbase.create_order(buy())
    assert coinbase.cancel_order("BTC/USD", filled.venue_order_id) == filled
    with pytest.raises(OrderNotFoundError):
        coinbase.cancel_order("BTC/USD", "no-such-order")


# --------------------------------------------------------------------------------------------- errors


def test_jwt_from_a_key_the_venue_does_not_know_is_an_auth_error(venue_harness: VenueHarness,
                                                                 fake: CoinbaseFake) -> None:
    stranger = connect(venue_harness, **fake.add_key(register=False))
    with pytest.raises(AuthError, match="HTTP 401") as caught:
        stranger.balances()
    assert fake.auth_failures == ["unknown key"]
    assert stranger.key.secret not in str(caught.value)


def test_jwt_signed_by_the_wrong_private_key_is_an_auth_error(venue_harness: VenueHarness,
                                                              fake: CoinbaseFake) -> None:
    other = fake.add_key(register=False)
    forged = connect(venue_harness, api_secret=other["api_secret"])  # our key name, someone else's private key
    with pytest.raises(AuthError):
        forged.balances()
    assert fake.auth_failures == ["bad signature"]


def test_expired_jwt_is_an_auth_error(coinbase: CoinbaseConnector, fake: CoinbaseFake) -> None:
    fake.clock_offset = 300  # the venue's clock is 5 minutes ahead: our 2-minute JWTs arrive expired
    with pytest.raises(AuthError):
        coinbase.balances()
    assert fake.auth_failures == ["expired or not yet valid"]


def test_uri_claim_is_checked(coinbase: CoinbaseConnector, fake: CoinbaseFake) -> None:
    coinbase.balances()
    request = fake.requests(lambda r: r.path.startswith("/api/v3/brokerage/accounts"))[-1]
    original = fake.route

    def replayed(_: object) -> object:  # the same token presented for another path must be refused
        from tests.fakes.faults import Request

        return original(Request("GET", "/api/v3/brokerage/key_permissions", request.headers, b"", request.at))

    assert replayed(None).status == 401  # type: ignore[attr-defined]
    assert fake.auth_failures[-1].startswith("uri claim")


@pytest.mark.parametrize("error, preview, expected, words", [
    ("INSUFFICIENT_FUND", "PREVIEW_INSUFFICIENT_FUND", InsufficientFundsError, "PREVIEW_INSUFFICIENT_FUND"),
    ("UNKNOWN_FAILURE_REASON", "PREVIEW_INVALID_BASE_SIZE_TOO_SMALL", InvalidOrderError, "BASE_SIZE_TOO_SMALL"),
    ("INVALID_SIZE_PRECISION", "", InvalidOrderError, "INVALID_SIZE_PRECISION"),
    ("UNSUPPORTED_ORDER_CONFIGURATION", "", InvalidOrderError, "UNSUPPORTED_ORDER_CONFIGURATION"),
    ("INVALID_PRODUCT_ID", "", MarketNotFoundError, "INVALID_PRODUCT_ID"),
])
def test_order_refusals_in_a_200_map_to_our_errors(coinbase: CoinbaseConnector, fake: CoinbaseFake, error: str,
                                                   preview: str, expected: type[Exception], words: str) -> None:
    fake.reject_next(error, "the venue's words", preview=preview)
    with pytest.raises(expected, match=words) as caught:
        coinbase.create_order(buy(client_order_id="refused-1"))
    assert type(caught.value) is expected and "refused-1" in str(caught.value)
    assert fake.created_client_ids() == []


def test_real_insufficient_funds_refusal(coinbase: CoinbaseConnector) -> None:
    with pytest.raises(InsufficientFundsError, match="INSUFFICIENT_FUND"):
        coinbase.create_order(buy("10", price="50000"))


def test_rate_limit_carries_retry_after(coinbase: CoinbaseConnector, fake: CoinbaseFake) -> None:
    fake.plan.next(1, Fault.RATE_LIMIT, retry_after=2.5)
    with pytest.raises(RateLimitError, match="retry after 2.5s") as caught:
        coinbase.balances()
    assert caught.value.retry_after == 2.5
    fake.plan.next(1, Fault.RATE_LIMIT, retry_after=1, match=lambda r: r.path == ORDERS)
    with pytest.raises(RateLimitError):
        coinbase.create_order(buy())
    assert fake.created_client_ids() == []


@pytest.mark.parametrize("fault", [Fault.SERVER_ERROR, Fault.DROP, Fault.ACCEPT_THEN_DROP, Fault.TIMEOUT])
def test_ambiguous_create_is_unknown_and_recovered_by_client_id(venue_harness: VenueHarness, fake: CoinbaseFake,
                                                                fault: Fault) -> None:
    coinbase = connect(venue_harness, timeout="0.3")
    coinbase.markets()
    fake.plan.next(1, fault, match=lambda r: r.path == ORDERS, hold=1.0)
    request = buy(client_order_id=f"ambiguous-{fault.name}")
    with pytest.raises(OrderStatusUnknownError, match="ask by client order id"):
        coinbase.create_order(request)
    found = coinbase.fetch_order_by_client_id("BTC/USD", request.client_order_id)
    if found is None:  # the venue never took it: sending again is safe
        coinbase.create_order(request)
    coinbase.create_order(request)  # a resend of a known id returns the same venue order
    assert fake.created_client_ids() == [request.client_order_id]


@pytest.mark.parametrize("fault", [Fault.SERVER_ERROR, Fault.DROP])
def test_ambiguous_cancel_is_unknown(coinbase: CoinbaseConnector, fake: CoinbaseFake, fault: Fault) -> None:
    placed = coinbase.create_order(buy("0.001", OrderType.LIMIT, "40000"))
    fake.plan.next(1, fault, match=lambda r: r.path.endswith("batch_cancel"))
    with pytest.raises(OrderStatusUnknownError):
        coinbase.cancel_order("BTC/USD", placed.venue_order_id)


@pytest.mark.parametrize("fault", [Fault.SERVER_ERROR, Fault.DROP])
def test_failed_reads_are_temporary(coinbase: CoinbaseConnector, fake: CoinbaseFake, fault: Fault) -> None:
    fake.plan.next(1, fault)
    with pytest.raises(TemporaryError) as caught:
        coinbase.balances()
    assert not isinstance(caught.value, RateLimitError)


def test_malformed_reply_is_temporary(coinbase: CoinbaseConnector, fake: CoinbaseFake,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.fakes.faults import Reply

    monkeypatch.setattr(fake, "_accounts", lambda query: Reply(200, b"{\"accounts\": [", {}))
    with pytest.raises(TemporaryError, match="malformed"):
        coinbase.balances()


def test_unknown_order_and_unknown_market(coinbase: CoinbaseConnector) -> None:
    with pytest.raises(OrderNotFoundError, match="no such order"):
        coinbase.fetch_order("BTC/USD", "00000000-0000-0000-0000-000000000000")
    with pytest.raises(MarketNotFoundError):
        coinbase.ticker("NOPE/USD")
    with pytest.raises(InvalidOrderError, match="below the minimum"):
        coinbase.create_order(buy("0.00000001", price="50000"))


# --------------------------------------------------------------------------------------------- verify, credentials


def test_verify_accepts_a_trade_only_key(coinbase: CoinbaseConnector) -> None:
    items = {item.name: item for item in coinbase.verify()}
    assert all(item.ok for item in items.values()), items
    assert set(items) == {"key format", "server time", "signature accepted", "permissions"}


@pytest.mark.parametrize("permissions, words", [
    ({"can_transfer": True}, "can transfer funds"),
    ({"can_trade": False}, "cannot trade"),
])
def test_verify_refuses_a_key_that_can_transfer_or_cannot_trade(venue_harness: VenueHarness, fake: CoinbaseFake,
                                                               permissions: dict[str, bool], words: str) -> None:
    connector = connect(venue_harness, **fake.add_key("EdDSA", **permissions))
    items = {item.name: item for item in connector.verify()}
    assert items["signature accepted"].ok
    assert not items["permissions"].ok and words in items["permissions"].detail


def test_verify_reports_a_refused_signature_and_a_skewed_clock(venue_harness: VenueHarness,
                                                               fake: CoinbaseFake) -> None:
    fake.clock_offset = 300
    items = {item.name: item for item in connect(venue_harness).verify()}
    assert not items["server time"].ok and "+300" in items["server time"].detail.replace("+299", "+300")
    assert not items["signature accepted"].ok and "AuthError" in items["signature accepted"].detail


@pytest.mark.parametrize("credentials, words", [
    ({}, "API_KEY and <PREFIX>_API_SECRET"),
    ({"api_key": "organizations/o/apiKeys/k", "api_secret": "-----BEGIN EC PRIVATE KEY-----\nnope\n"},
     "not a readable PEM"),
    ({"api_key": "k", "api_secret": "c2hvcnQ="}, "neither a PEM EC private key nor a base64 Ed25519"),
])
def test_missing_or_malformed_credentials_are_refused_at_build(credentials: dict[str, str], words: str) -> None:
    with pytest.raises(AuthError, match=words) as caught:
        build(VenueConfig(venue="coinbase", network="mainnet", credentials=credentials, endpoint="http://127.0.0.1:9"))
    for secret in credentials.values():
        assert secret not in str(caught.value) or secret == "k"


def test_ec_key_needs_a_cdp_key_name(fake: CoinbaseFake) -> None:
    credentials = fake.add_key()
    with pytest.raises(AuthError, match="organizations/"):
        build(VenueConfig(venue="coinbase", network="mainnet",
                          credentials={**credentials, "api_key": "not-a-cdp-name"}, endpoint="http://127.0.0.1:9"))


def test_pem_with_escaped_newlines_from_an_env_file_works(venue_harness: VenueHarness) -> None:
    one_line = venue_harness.credentials["api_secret"].replace("\n", "\\n")
    assert connect(venue_harness, api_secret=one_line).balances()


def test_testnet_without_an_endpoint_is_refused_clearly() -> None:
    with pytest.raises(VenueError, match="no test network"):
        registry.build(venue="coinbase", network="testnet", credentials={})


def test_secrets_never_reach_reprs_logs_or_errors(venue_harness: VenueHarness, fake: CoinbaseFake,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    coinbase = connect(venue_harness)
    secret = venue_harness.credentials["api_secret"]
    coinbase.create_order(buy())
    fake.plan.next(1, Fault.SERVER_ERROR)
    with pytest.raises(TemporaryError) as caught:
        coinbase.balances()
    fake.clock_offset = 300
    with pytest.raises(AuthError) as refused:
        coinbase.balances()
    text = "\n".join([repr(coinbase), repr(coinbase.key), str(caught.value), str(refused.value), caplog.text])
    secret_lines = [line for line in secret.splitlines() if len(line) > 12]
    assert not any(line in text for line in secret_lines) and secret not in text
    assert "Bearer" not in caplog.text and "authorization" not in caplog.text.lower()
    assert coinbase.client.verbose is False and coinbase.client.enableRateLimit is False


def test_registry_build_reaches_the_fake(venue_harness: VenueHarness) -> None:
    connector = registry.build(venue="coinbase", network="mainnet", credentials=venue_harness.credentials,
                               endpoint=venue_harness.endpoint, account="registry-test")
    assert connector.ticker("BTC/USD").price == Decimal("50000")
    assert connector.capabilities.venue == "coinbase"


def test_fills_lagging_the_order_keep_it_working(coinbase: CoinbaseConnector, fake: CoinbaseFake,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.fakes.faults import Reply

    placed = coinbase.create_order(buy("0.001", OrderType.LIMIT, "40000"))
    fake.set_price("BTC/USD", Decimal("39000"))
    monkeypatch.setattr(fake, "_fills", lambda query: Reply(200, {"fills": [], "cursor": ""}))
    lagging = coinbase.fetch_order("BTC/USD", placed.venue_order_id)
    assert (lagging.status, lagging.filled_quantity, lagging.reason) == (
        VenueOrderStatus.PARTIALLY_FILLED, Decimal("0"), "fills still arriving")
    monkeypatch.undo()
    done = coinbase.fetch_order("BTC/USD", placed.venue_order_id)
    assert (done.status, done.filled_quantity) == (VenueOrderStatus.FILLED, Decimal("0.001"))


def test_pkcs8_pem_is_accepted(venue_harness: VenueHarness) -> None:
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
        load_pem_private_key,
    )

    key = load_pem_private_key(venue_harness.credentials["api_secret"].encode(), password=None)
    pkcs8 = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
    assert pkcs8.startswith("-----BEGIN PRIVATE KEY-----")
    assert connect(venue_harness, api_secret=pkcs8).balances()


def test_an_account_reaches_the_fake_through_its_environment(venue_harness: VenueHarness, make_account: Any,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from trading.connectors import connector_for

    for name, value in venue_harness.env("CB_TEST").items():
        monkeypatch.setenv(name, value)
    account = make_account(name="coinbase-env", venue="coinbase", network="mainnet", credentials_env="CB_TEST")
    connector = connector_for(account)
    assert {b.asset: b.free for b in connector.balances()}["USD"] == Decimal("100000")
    assert [item.name for item in connector.verify() if not item.ok] == []


def test_a_create_reply_that_neither_refuses_nor_names_the_order_is_unknown(coinbase: CoinbaseConnector,
                                                                           fake: CoinbaseFake,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.fakes.faults import Reply

    coinbase.markets()
    monkeypatch.setattr(fake, "_create", lambda request: Reply(200, {"order_configuration": None}))
    with pytest.raises(OrderStatusUnknownError, match="ask by client order id"):
        coinbase.create_order(buy())


def test_a_malformed_or_disabled_product_is_skipped_not_fatal(coinbase: CoinbaseConnector, fake: CoinbaseFake) -> None:
    from tests.fakes.coinbase_venue import product

    fake.products["BAD-USD"] = dict(product("BAD-USD", base_increment="", price_increment="0.01",
                                            quote_increment="0.01", base_min_size="1", quote_min_size="1"))
    fake.products["ZERO-USD"] = product("ZERO-USD", base_increment="0", price_increment="0.01",
                                        quote_increment="0.01", base_min_size="1", quote_min_size="1")
    fake.products["OFF-USD"] = dict(product("OFF-USD", base_increment="1", price_increment="0.01",
                                            quote_increment="0.01", base_min_size="1", quote_min_size="1"),
                                    trading_disabled=True)
    for product_id in ("BAD-USD", "ZERO-USD", "OFF-USD"):
        fake.prices[product_id] = Decimal("1")
    assert {m.symbol for m in coinbase.markets()} == {"BTC/USD", "ETH/USD", "XLM/BTC"}


def test_a_fill_reported_in_quote_is_never_recorded_as_more_base_than_the_venue_filled() -> None:
    """Coinbase may report a fill's size in quote (size_in_quote): its base amount is floored to the lot, as the
    venue fills it; rounding half-even recorded 0.00333256 BTC for 100.00 USD at 30007 where 0.00333255 filled."""
    with harness() as h:
        cb = build(VenueConfig(venue="coinbase", network=h.network, credentials=h.credentials, endpoint=h.endpoint))
        cb._fills = lambda order_id: [{  # type: ignore[method-assign]
            "trade_id": "t1", "price": "30007.00", "size": "100.00", "size_in_quote": True, "commission": "0.6",
            "trade_time": "2025-01-01T00:00:00Z", "liquidity_indicator": "TAKER"}]
        order = cb._parse_order({
            "order_id": "o1", "product_id": "BTC-USD", "side": "BUY", "status": "FILLED", "client_order_id": "c1",
            "order_configuration": {"market_market_ioc": {"quote_size": "100.00"}}, "filled_size": "0.00333255"})
    assert order.fills[0].quantity == Decimal("0.00333255")


def test_an_accepted_order_is_never_refused_by_a_failed_follow_up_read(coinbase: CoinbaseConnector, fake: CoinbaseFake,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The venue took the order; the read of its state that follows fails (here a 401 after a key rotation): the
    order is reported working with its venue id, never as a refusal (which the engine would record as REJECTED)."""
    def refused(symbol: str, order_id: str) -> Any:
        raise AuthError("HTTP 401 on the follow-up read", venue="coinbase")

    monkeypatch.setattr(coinbase, "fetch_order", refused)
    placed = coinbase.create_order(buy(client_order_id="after-accept-1"))
    assert placed.status is VenueOrderStatus.OPEN and placed.venue_order_id
    assert fake.created_client_ids() == ["after-accept-1"]


def test_a_cancel_message_reaches_the_reason_past_the_venues_placeholder(coinbase: CoinbaseConnector,
                                                                         fake: CoinbaseFake) -> None:
    """The venue sends reject_reason "REJECT_REASON_UNSPECIFIED" on every order (as recorded): it must not hide
    the cancel_message of an order the venue canceled."""
    fake.fund("BTC", "1")
    fake.partial_fills(1, Decimal("0.5"))
    fake.cancel_message = "Order canceled: insufficient liquidity for the rest"
    order = coinbase.create_order(OrderRequest("s-cm", "BTC/USD", Side.SELL, OrderType.MARKET, Decimal("0.01")))
    assert order.status is VenueOrderStatus.CANCELED
    assert coinbase.fetch_order("BTC/USD", order.venue_order_id).reason == fake.cancel_message


def test_fills_reported_in_quote_add_up_to_the_orders_filled_size(coinbase: CoinbaseConnector,
                                                                  fake: CoinbaseFake) -> None:
    """Fills sized in quote, each floored to the lot on its own, lost base size: a filled order waited for "fills
    still arriving" for ever. The fills now add up to the venue's filled_size exactly and the order is FILLED."""
    fake.report_fills_in_quote(3)
    fake.set_price("BTC/USD", Decimal("30007"))
    order = coinbase.create_order(buy("0.0033", price="30007"))
    found = coinbase.fetch_order("BTC/USD", order.venue_order_id)
    venue = fake.orders[order.venue_order_id]
    assert found.status is VenueOrderStatus.FILLED, found.reason
    assert len(found.fills) == 3
    assert sum((f.quantity for f in found.fills), Decimal(0)) == found.filled_quantity == venue.filled
    assert all(f.quantity > 0 for f in found.fills)


def test_a_filled_orders_cancel_message_is_no_reason(coinbase: CoinbaseConnector, fake: CoinbaseFake) -> None:
    """ccxt quotes a FILLED quote-sized market buy whose cancel_message is "Internal error": the connector gave a
    filled order that text as its reason (the engine then says of a buy that came short "the venue filled ... and
    closed it: Internal error"). A filled order has no refusal or cancel reason."""
    fake.filled_market_cancel_message = "Internal error"
    order = coinbase.create_order(buy("0.001"))
    assert order.status is VenueOrderStatus.FILLED
    assert fake.orders[order.venue_order_id].status == "FILLED"
    assert order.reason == ""
