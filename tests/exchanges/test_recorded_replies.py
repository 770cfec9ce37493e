"""The real connectors' read methods on real recorded venue replies (tests/fixtures/venues, sources in its README).

A loopback server replays each recorded body, byte for byte, for the request it answers; the connector goes through
its real client library (the Hyperliquid SDK, ccxt) and every value below is read off the recording.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import datetime, UTC
from decimal import Decimal
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from exchanges.base import OrderType, Side, VenueOrderStatus
from exchanges.coinbase import CoinbaseConnector, parse_key
from exchanges.hyperliquid import HyperliquidConnector, cloid_for
from tests.fakes.faults import Reply, Request
from tests.fakes.replay import ReplayVenue, body, get, info_type, query, recorded_json

D = Decimal


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# ------------------------------------------------------------------------------------------- Hyperliquid

HL_USER = "0x5e9ee1089755c3435139848e47e6635505d5a13a"  # the account of the recorded clearinghouseState


def _hl_fills_by_time(request: Request) -> Reply:
    """userFillsByTime over the recorded fills: the venue's own time filter, newest first."""
    payload = request.json()
    start, end = int(payload.get("startTime") or 0), payload.get("endTime")
    rows = [r for r in recorded_json("hyperliquid/user_fills.json")
            if int(r["time"]) >= start and (end is None or int(r["time"]) <= int(end))]
    return Reply(200, sorted(rows, key=lambda r: -int(r["time"])))


def _hl_order_status(request: Request) -> Reply:
    """orderStatus answered from the recorded historicalOrders entries (the entry is orderStatus's `order`)."""
    key = request.json().get("oid")
    entries = recorded_json("hyperliquid/historical_orders.json")
    for entry in entries:
        if entry["order"]["oid"] == key:
            return Reply(200, {"status": "order", "order": entry})
    if isinstance(key, str):  # a cloid: the recorded orders were placed without one, so the DYDX entry stands in
        return Reply(200, {"status": "order", "order": entries[3]})
    return Reply(200, {"status": "unknownOid"})


@pytest.fixture
def hl() -> Iterator[tuple[HyperliquidConnector, ReplayVenue]]:
    venue = ReplayVenue([
        (info_type("meta"), body("hyperliquid/meta.json")),
        (info_type("clearinghouseState"), body("hyperliquid/clearinghouse_state.json")),
        (info_type("frontendOpenOrders"), body("hyperliquid/frontend_open_orders.json")),
        (info_type("candleSnapshot"), body("hyperliquid/candle_snapshot.json")),
        (info_type("allMids"), body("hyperliquid/all_mids.json")),
        (info_type("userFillsByTime"), _hl_fills_by_time),
        (info_type("orderStatus"), _hl_order_status),
    ])
    with venue:
        connector = HyperliquidConnector(network="mainnet", secret_key="0x" + secrets.token_hex(32),
                                         account_address=HL_USER, base_url=venue.url, timeout=5)
        yield connector, venue
    assert not venue.unmatched, [r.path + " " + r.body.decode() for r in venue.unmatched]


def test_hyperliquid_markets_from_the_recorded_meta(hl: tuple[HyperliquidConnector, ReplayVenue]) -> None:
    connector, _ = hl
    markets = {m.symbol: m for m in connector.markets()}
    assert len(markets) == 28
    btc = markets["BTC/USDC:USDC"]
    assert (btc.lot_size, btc.min_qty, btc.tick_size, btc.max_leverage, btc.kind) == (
        D("0.00001"), D("0.00001"), D("0.1"), D("50"), "perp")
    pepe = markets["kPEPE/USDC:USDC"]
    assert (pepe.base, pepe.lot_size, pepe.tick_size) == ("kPEPE", D("1"), D("0.000001"))


def test_hyperliquid_balances_and_positions_from_the_recorded_clearinghouse_state(
        hl: tuple[HyperliquidConnector, ReplayVenue]) -> None:
    """The recorded positions carry maxTradeSzs and a null liquidationPx on some; the balance is USDC."""
    connector, _ = hl
    (balance,) = connector.balances()
    assert (balance.asset, balance.free, balance.total) == ("USDC", D("1010.57173"), D("1182.312496"))
    positions = {p.symbol: p for p in connector.positions()}
    assert len(positions) == 12
    assert (positions["BTC/USDC:USDC"].quantity, positions["BTC/USDC:USDC"].entry_price) == (D("-0.00785"),
                                                                                             D("26951.0"))
    assert (positions["ETH/USDC:USDC"].quantity, positions["ETH/USDC:USDC"].entry_price) == (D("0.1334"),
                                                                                             D("1705.82"))
    assert (positions["DYDX/USDC:USDC"].quantity, positions["DYDX/USDC:USDC"].entry_price) == (D("-121.2"),
                                                                                               D("2.36808"))


def test_hyperliquid_open_orders_with_nested_children_are_each_read_once(
        hl: tuple[HyperliquidConnector, ReplayVenue]) -> None:
    """The recorded reply lists a limit buy whose take-profit and stop ride as its `children`, and lists those two
    again at the top level: three orders, each once, with their trigger prices."""
    connector, _ = hl
    orders = connector.open_orders()
    assert [o.venue_order_id for o in orders] == ["3184595905", "3184595906", "3184595907"]
    parent, stop, take = orders
    assert (parent.symbol, parent.side, parent.type, parent.quantity, parent.price, parent.trigger_price,
            parent.reduce_only, parent.status) == (
        "INJ/USDC:USDC", Side.BUY, OrderType.LIMIT, D("12.5"), D("10.0"), None, False, VenueOrderStatus.OPEN)
    assert (stop.side, stop.type, stop.trigger_price, stop.price, stop.reduce_only) == (
        Side.SELL, OrderType.STOP, D("9.995"), D("9.1954"), True)
    assert (take.side, take.type, take.trigger_price, take.price, take.reduce_only) == (
        Side.SELL, OrderType.TAKE_PROFIT, D("10.004"), D("9.2037"), True)
    assert all(o.client_order_id == "" and o.filled_quantity == 0 for o in orders)  # placed without a cloid
    assert connector.open_orders("BTC/USDC:USDC") == []


def test_hyperliquid_order_and_order_by_client_id_from_recorded_order_history(
        hl: tuple[HyperliquidConnector, ReplayVenue]) -> None:
    """An ALO limit the venue canceled with nothing filled (recorded historicalOrders, served as orderStatus)."""
    connector, venue = hl
    order = connector.fetch_order("DYDX/USDC:USDC", "141682147400")
    assert (order.symbol, order.side, order.type, order.status, order.quantity, order.filled_quantity,
            order.price, order.trigger_price, order.reason) == (
        "DYDX/USDC:USDC", Side.BUY, OrderType.LIMIT, VenueOrderStatus.CANCELED, D("1500.3"), D("0"),
        D("0.62613"), None, "")
    ours = "d1" * 16
    by_client = connector.fetch_order_by_client_id("DYDX/USDC:USDC", ours)
    assert by_client is not None
    assert (by_client.client_order_id, by_client.venue_order_id, by_client.status) == (
        ours, "141682147400", VenueOrderStatus.CANCELED)
    asked = [r.json()["oid"] for r in venue.requests(info_type("orderStatus"))]
    assert asked == [141682147400, cloid_for(ours)]
    with pytest.raises(Exception, match="does not know"):
        connector.fetch_order("DYDX/USDC:USDC", "1")


def test_hyperliquid_fills_from_the_recorded_fill_history(hl: tuple[HyperliquidConnector, ReplayVenue]) -> None:
    """Order 189324432 closed a 4623.5 SUI long in three fills of one transaction (no trade id in these replies)."""
    connector, _ = hl
    by_oid = connector._fills(1683245555699)
    fills = by_oid[189324432]
    # One millisecond: the venue's order within it is not the execution order (see the README), so compare as a set.
    assert {(f.quantity, f.price) for f in fills} == {(D("142.7"), D("1.3189")), (D("3749.1"), D("1.3167")),
                                                      (D("731.7"), D("1.3093"))}
    assert sum(f.quantity for f in fills) == D("4623.5")  # the position the newest fill started from
    assert {(f.fee, f.fee_currency, f.liquidity, f.time) for f in fills} == {
        (D("0.0"), "USDC", "taker", datetime(2023, 5, 5, 0, 18, 4, 863000, tzinfo=UTC))}
    assert len({f.fill_id for f in fills}) == 3
    assert sum(len(f) for f in by_oid.values()) == 500


def test_hyperliquid_candles_and_ticker_from_recorded_replies(hl: tuple[HyperliquidConnector, ReplayVenue]) -> None:
    connector, _ = hl
    since = datetime.fromtimestamp(1684702007, tz=UTC)
    candles = connector.candles("kPEPE/USDC:USDC", "1h", since=since, limit=100)
    assert len(candles) == 24
    first, last = candles[0], candles[-1]
    assert (first.open_time, first.open, first.high, first.low, first.close, first.volume) == (
        datetime(2023, 5, 21, 20, tzinfo=UTC), D("0.001601"), D("0.001616"), D("0.001601"),
        D("0.001604"), D("520665683.0"))
    assert (last.open_time, last.close) == (datetime(2023, 5, 22, 19, tzinfo=UTC), D("0.00154"))
    assert connector.ticker("BTC/USDC:USDC").price == D("30135.0")


# ------------------------------------------------------------------------------------------- Coinbase

ADA_ORDER = "01b6e467-b659-432f-9490-c7cefe949564"


def _cb_fills(request: Request) -> Reply:
    """The recorded fills page, then the end of the list (the recording's cursor points past its last fill)."""
    if query(request).get("cursor"):
        return Reply(200, {"fills": [], "cursor": ""})
    return body("coinbase/fills.json")


def _cb_open_orders(request: Request) -> Reply:
    """The quoted OPEN order in the list reply's envelope."""
    return Reply(200, {"orders": [recorded_json("coinbase/quoted/order_open.json")["order"]], "sequence": "0",
                       "has_next": False, "cursor": ""})


@pytest.fixture
def cb() -> Iterator[tuple[CoinbaseConnector, ReplayVenue]]:
    api = "/api/v3/brokerage/"
    venue = ReplayVenue([
        (get(api + "market/products"), body("coinbase/products.json")),
        # No recording of the fee tier: a key that may not read it (the connector then uses the lowest tier).
        (get(api + "transaction_summary"), Reply(401, b"Unauthorized\n", {"Content-Type": "text/plain"})),
        (get(api + "orders/historical/batch", order_status="OPEN"), _cb_open_orders),
        (get(api + "orders/historical/batch", product_ids="ADA-USDT"), body("coinbase/orders_batch.json")),
        (get(api + "orders/historical/fills", order_ids=ADA_ORDER), _cb_fills),
        (get(api + "accounts"), body("coinbase/quoted/accounts.json")),
        (get(api + "market/products/BTC-USD/candles"), body("coinbase/quoted/candles.json")),
        (get(api + "market/products/BTC-USDC/ticker"), body("coinbase/ticker.json")),
    ])
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(Encoding.PEM, PrivateFormat.TraditionalOpenSSL, NoEncryption()).decode()
    key = parse_key({"api_key": "organizations/recorded/apiKeys/replay", "api_secret": pem})
    with venue:
        yield CoinbaseConnector(key=key, base_url=venue.url, timeout=5), venue
    assert not venue.unmatched, [r.path for r in venue.unmatched]


def test_coinbase_markets_from_recorded_products(cb: tuple[CoinbaseConnector, ReplayVenue]) -> None:
    """Spot products become markets; the INTX perpetual in the same reply (empty base_currency_id) does not."""
    connector, _ = cb
    markets = {m.symbol: m for m in connector.markets()}
    assert sorted(markets) == ["ADA/USDT", "BTC/USD", "BTC/USDC", "XRP/USDT"]
    ada = markets["ADA/USDT"]
    assert (ada.base, ada.quote, ada.tick_size, ada.lot_size, ada.min_qty, ada.min_notional) == (
        "ADA", "USDT", D("0.0001"), D("0.01"), D("0.01"), D("1"))
    assert (markets["BTC/USD"].lot_size, markets["BTC/USD"].tick_size) == (D("0.00000001"), D("0.01"))
    assert (ada.maker_fee, ada.taker_fee) == (D("0.006"), D("0.012"))  # the lowest tier: the key could not say


def test_coinbase_order_by_client_id_and_its_fills_from_recorded_replies(
        cb: tuple[CoinbaseConnector, ReplayVenue]) -> None:
    """A market sell of 10 ADA filled in one fill; the venue's placeholder reject_reason is no reason."""
    connector, venue = cb
    order = connector.fetch_order_by_client_id("ADA/USDT", "a0f970a2-05fa-4e1f-9517-f6702c33cfd1")
    assert order is not None
    assert (order.venue_order_id, order.symbol, order.side, order.type, order.status, order.quantity,
            order.filled_quantity, order.price, order.reason) == (
        ADA_ORDER, "ADA/USDT", Side.SELL, OrderType.MARKET, VenueOrderStatus.FILLED, D("10"), D("10"), None, "")
    (fill,) = order.fills
    assert (fill.fill_id, fill.quantity, fill.price, fill.fee, fill.fee_currency, fill.liquidity, fill.time) == (
        "19fc7eee-f4b4-40a7-8104-033da1db5311", D("10"), D("0.392"), D("0.03136"), "USDT", "taker",
        _utc("2023-11-26T10:19:47.504Z"))
    assert len(venue.requests(get("/api/v3/brokerage/orders/historical/batch"))) == 1  # found on the first page


def test_coinbase_open_orders_from_a_quoted_reply(cb: tuple[CoinbaseConnector, ReplayVenue]) -> None:
    connector, _ = cb
    (order,) = connector.open_orders()
    assert (order.venue_order_id, order.client_order_id, order.symbol, order.side, order.type, order.status,
            order.quantity, order.price, order.filled_quantity, order.fills, order.reason) == (
        "9bc1eb3b-5b46-4b71-9628-ae2ed0cca75b", "e5fe8482-05bb-428f-ad4d-dbc8ce39239c", "LTC/BTC", Side.SELL,
        OrderType.LIMIT, VenueOrderStatus.OPEN, D("0.2"), D("0.006"), D("0"), (), "")


def test_coinbase_balances_candles_and_ticker_from_recorded_and_quoted_replies(
        cb: tuple[CoinbaseConnector, ReplayVenue]) -> None:
    """Balances come as 16-decimal zeros ("0.0000000000000000"); candles as epoch-second strings."""
    connector, _ = cb
    assert [(b.asset, b.free, b.total) for b in connector.balances()] == [("USDC", D("0"), D("0"))]
    since = datetime.fromtimestamp(1673391780, tz=UTC)
    (candle,) = connector.candles("BTC/USD", "1m", since=since, limit=10)
    assert (candle.open_time, candle.open, candle.high, candle.low, candle.close, candle.volume) == (
        since, D("17417.74"), D("17417.99"), D("17414.36"), D("17417.38"), D("1.87780853"))
    ticker = connector.ticker("BTC/USDC")
    assert (ticker.price, ticker.time) == (D("66363.03"), _utc("2024-04-24T09:56:38.063595Z"))


def test_every_recorded_reply_is_json() -> None:
    """The fixtures parse (a truncated copy would fail here before it confused a connector test)."""
    for name in ("hyperliquid/meta.json", "hyperliquid/clearinghouse_state.json",
                 "hyperliquid/frontend_open_orders.json", "hyperliquid/historical_orders.json",
                 "hyperliquid/candle_snapshot.json", "hyperliquid/all_mids.json", "hyperliquid/user_fills.json",
                 "coinbase/products.json", "coinbase/orders_batch.json", "coinbase/fills.json", "coinbase/ticker.json",
                 "coinbase/quoted/accounts.json", "coinbase/quoted/candles.json", "coinbase/quoted/order_open.json"):
        assert recorded_json(name) is not None, name


# ------------------------------------------------------------------------------------------- the fakes' fields


def _keys(rows: Any) -> set[str]:
    """Every key of a reply's rows (a dict or a list of dicts)."""
    return set(rows) if isinstance(rows, dict) else set().union(*(set(r) for r in rows))


def test_the_hyperliquid_fake_sends_every_field_of_the_recorded_replies() -> None:
    """The fake's replies carry every field the recorded ones do (README: what each adds and why)."""
    import requests

    from tests.fakes.hyperliquid_venue import harness

    def info(url: str, **payload: Any) -> Any:
        return requests.post(url + "/info", json=payload, timeout=5).json()

    with harness() as h:
        fake, owner = h.extra["fake"], h.extra["owner"].address.lower()
        connector = HyperliquidConnector(network="testnet", secret_key=h.credentials["secret_key"],
                                         account_address=owner, base_url=h.endpoint, timeout=5)
        from exchanges.base import OrderRequest
        connector.create_order(OrderRequest("ab" * 16, "BTC/USDC:USDC", Side.BUY, OrderType.MARKET, D("0.01")))
        connector.create_order(OrderRequest("cd" * 16, "BTC/USDC:USDC", Side.BUY, OrderType.LIMIT, D("0.01"),
                                            price=D("40000")))
        state = info(h.endpoint, type="clearinghouseState", user=owner)
        recorded_state = recorded_json("hyperliquid/clearinghouse_state.json")
        assert _keys(recorded_state) <= _keys(state)
        position = state["assetPositions"][0]["position"]
        assert {"maxTradeSzs", "cumFunding", "maxLeverage"} <= set(position)
        assert _keys([p["position"] for p in recorded_state["assetPositions"]]) <= set(position)
        assert position["maxLeverage"] == 40 and position["leverage"]["value"] == 20  # the asset's, not the position's
        assert {"allTime", "sinceOpen", "sinceChange"} == set(position["cumFunding"])
        assert len(position["maxTradeSzs"]) == 2

        # The 2023 recording has no `cloid` key on orders placed without one; the 2025 one has "cloid": null.
        assert _keys(recorded_json("hyperliquid/frontend_open_orders.json")) | {"cloid"} == _keys(
            info(h.endpoint, type="frontendOpenOrders", user=owner))
        history = info(h.endpoint, type="historicalOrders", user=owner)
        recorded_history = recorded_json("hyperliquid/historical_orders.json")
        assert _keys(recorded_history) == _keys(history)
        assert _keys([e["order"] for e in recorded_history]) == _keys([e["order"] for e in history])
        assert [e["status"] for e in history] == ["open", "filled"]  # newest first
        fills = info(h.endpoint, type="userFillsByTime", user=owner, startTime=0)
        assert _keys(recorded_json("hyperliquid/user_fills.json")) <= _keys(fills)
        candles = info(h.endpoint, type="candleSnapshot",
                       req={"coin": "BTC", "interval": "1h", "startTime": 0, "endTime": 7_200_000})
        assert _keys(recorded_json("hyperliquid/candle_snapshot.json")) == _keys(candles)
        meta = info(h.endpoint, type="meta")
        assert _keys(recorded_json("hyperliquid/meta.json")["universe"]) <= _keys(meta["universe"])
        assert "marginTables" in meta and all("marginTableId" in u for u in meta["universe"])
        assert fake.fills_page == 2000


def test_the_hyperliquid_fake_nests_children_as_the_venue_does_and_they_are_read_once() -> None:
    """A parent with its take-profit and stop as `children`, listed again at the top level, as recorded."""
    import requests

    from exchanges.base import OrderRequest
    from tests.fakes.hyperliquid_venue import harness

    with harness() as h:
        fake, owner = h.extra["fake"], h.extra["owner"].address.lower()
        connector = HyperliquidConnector(network="testnet", secret_key=h.credentials["secret_key"],
                                         account_address=owner, base_url=h.endpoint, timeout=5)
        btc = "BTC/USDC:USDC"
        parent = connector.create_order(OrderRequest("a1" * 16, btc, Side.BUY, OrderType.LIMIT, D("0.01"),
                                                     price=D("40000")))
        stop = connector.create_order(OrderRequest("a2" * 16, btc, Side.SELL, OrderType.STOP, D("0.01"),
                                                   trigger_price=D("39000")))
        take = connector.create_order(OrderRequest("a3" * 16, btc, Side.SELL, OrderType.TAKE_PROFIT, D("0.01"),
                                                   trigger_price=D("45000")))
        fake.nest(int(parent.venue_order_id), [int(stop.venue_order_id), int(take.venue_order_id)])
        rows = requests.post(h.endpoint + "/info", json={"type": "frontendOpenOrders", "user": owner}, timeout=5).json()
        assert len(rows) == 3
        (top,) = [r for r in rows if r["children"]]
        assert [c["oid"] for c in top["children"]] == [int(stop.venue_order_id), int(take.venue_order_id)]
        orders = connector.open_orders()
        assert sorted(o.venue_order_id for o in orders) == sorted(
            [parent.venue_order_id, stop.venue_order_id, take.venue_order_id])
        assert {o.type for o in orders} == {OrderType.LIMIT, OrderType.STOP, OrderType.TAKE_PROFIT}


def test_the_coinbase_fake_sends_every_field_of_the_recorded_replies() -> None:
    import requests

    from exchanges import registry
    from exchanges.base import OrderRequest
    from tests.fakes.coinbase_venue import harness

    with harness() as h:
        fake = h.extra["fake"]
        fake.fund("BTC", "1")
        connector = registry.build(venue="coinbase", network=h.network, credentials=h.credentials,
                                   endpoint=h.endpoint)
        order = connector.create_order(OrderRequest("cb-shape-1", "BTC/USD", Side.SELL, OrderType.MARKET, D("0.01")))
        products = requests.get(h.endpoint + "/api/v3/brokerage/market/products", timeout=5).json()["products"]
        recorded_products = recorded_json("coinbase/products.json")["products"]
        assert _keys([p for p in recorded_products if p["product_type"] == "SPOT"]) <= _keys(products)
        wire_order = fake._wire(fake.orders[order.venue_order_id])
        listed = fake._list({})
        assert _keys(recorded_json("coinbase/orders_batch.json")["orders"]) <= _keys(listed.body["orders"])
        assert set(recorded_json("coinbase/orders_batch.json")) <= set(listed.body)
        assert set(recorded_json("coinbase/quoted/order_open.json")["order"]) <= set(wire_order)
        assert (wire_order["reject_reason"], wire_order["margin_type"], wire_order["edit_history"]) == (
            "REJECT_REASON_UNSPECIFIED", "UNKNOWN_MARGIN_TYPE", [])
        fills = fake._fills({"order_ids": [order.venue_order_id]}).body
        assert _keys(recorded_json("coinbase/fills.json")["fills"]) <= _keys(fills["fills"])
        accounts = fake._accounts({}).body
        assert _keys(recorded_json("coinbase/quoted/accounts.json")["accounts"]) <= _keys(accounts["accounts"])
        assert {a["hold"]["value"] for a in accounts["accounts"]} == {"0.0000000000000000"}
        candles = requests.get(h.endpoint + "/api/v3/brokerage/market/products/BTC-USD/candles",
                               params={"granularity": "ONE_MINUTE", "start": "0", "end": "120"}, timeout=5).json()
        assert _keys(recorded_json("coinbase/quoted/candles.json")["candles"]) == _keys(candles["candles"])
        ticker = requests.get(h.endpoint + "/api/v3/brokerage/market/products/BTC-USD/ticker", timeout=5).json()
        assert set(recorded_json("coinbase/ticker.json")) <= set(ticker)
        assert _keys(recorded_json("coinbase/ticker.json")["trades"]) <= _keys(ticker["trades"])
