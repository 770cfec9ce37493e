# pragma version 0.4.3
"""
@title A small stand-in for Synthetix v3's PerpsMarketProxy, for the connector's offline tests.
@notice Every external function that is not prefixed `fake_` has the selector of the real PerpsMarketProxy
        (exchanges/abi/PerpsMarketProxy.json), and failures revert with the real custom errors' selectors and
        argument types. Orders are asynchronous as on the real market: commitOrder stores one pending order per
        account, and a keeper (the test harness) calls settleOrder, which fills at the oracle price set through
        fake_set_price. No funding, interest, skew premium or liquidations.
"""

from ethereum.ercs import IERC20

interface IPythWrapper:
    def fresh_at(feed: bytes32) -> uint256: view

struct OrderCommitmentRequest:
    marketId: uint128
    accountId: uint128
    sizeDelta: int128
    settlementStrategyId: uint128
    acceptablePrice: uint256
    trackingCode: bytes32
    referrer: address

struct AsyncOrderData:
    commitmentTime: uint256
    request: OrderCommitmentRequest

struct MarketSummary:
    skew: int256
    size: uint256
    maxOpenInterest: uint256
    currentFundingRate: int256
    currentFundingVelocity: int256
    indexPrice: uint256

struct SettlementStrategyData:
    strategyType: uint8
    settlementDelay: uint256
    settlementWindowDuration: uint256
    priceVerificationContract: address
    feedId: bytes32
    settlementReward: uint256
    disabled: bool
    commitmentPriceDelay: uint256

event AccountCreated:
    accountId: indexed(uint128)
    owner: indexed(address)

event CollateralModified:
    accountId: indexed(uint128)
    collateralId: indexed(uint128)
    amountDelta: int256
    sender: indexed(address)

event OrderCommitted:
    marketId: indexed(uint128)
    accountId: indexed(uint128)
    orderType: uint8
    sizeDelta: int128
    acceptablePrice: uint256
    commitmentTime: uint256
    expectedPriceTime: uint256
    settlementTime: uint256
    expirationTime: uint256
    trackingCode: indexed(bytes32)
    sender: address

event PreviousOrderExpired:
    marketId: indexed(uint128)
    accountId: indexed(uint128)
    sizeDelta: int128
    acceptablePrice: uint256
    commitmentTime: uint256
    trackingCode: indexed(bytes32)

event OrderSettled:
    marketId: indexed(uint128)
    accountId: indexed(uint128)
    fillPrice: uint256
    pnl: int256
    accruedFunding: int256
    sizeDelta: int128
    newSize: int128
    totalFees: uint256
    referralFees: uint256
    collectedFees: uint256
    settlementReward: uint256
    trackingCode: indexed(bytes32)
    settler: address

event OrderCancelled:
    marketId: indexed(uint128)
    accountId: indexed(uint128)
    desiredPrice: uint256
    fillPrice: uint256
    sizeDelta: int128
    settlementReward: uint256
    trackingCode: indexed(bytes32)
    settler: address

UNIT: constant(uint256) = 10**18
MAX_MARKETS: constant(uint256) = 16
MAX_PENDING: constant(uint256) = 64
COMMIT_PERMISSION: constant(bytes32) = 0x50455250535f434f4d4d49545f4153594e435f4f524445520000000000000000

usd: IERC20
forwarder: address  # the trusted ERC-2771 multicall forwarder: it appends the original sender
oracle: IPythWrapper
staleness: uint256  # seconds a price stays usable for a commit; 0 = always fresh (no ERC-7412 round)
feed_id: HashMap[uint128, bytes32]
market_ids: DynArray[uint256, MAX_MARKETS]
market_name: HashMap[uint128, String[32]]
market_symbol: HashMap[uint128, String[16]]
price: HashMap[uint128, uint256]
maker_fee: HashMap[uint128, uint256]
taker_fee: HashMap[uint128, uint256]
min_imr: HashMap[uint128, uint256]
min_position_margin: HashMap[uint128, uint256]
settlement_delay: uint256
settlement_window: uint256

next_account_id: uint128
owner_of: HashMap[uint128, address]
collateral: HashMap[uint128, uint256]  # snxUSD (collateral id 0) deposited, in USD
realized: HashMap[uint128, int256]  # realized pnl minus fees, in USD
size_of: HashMap[uint128, HashMap[uint128, int128]]
last_price: HashMap[uint128, HashMap[uint128, uint256]]
orders: HashMap[uint128, AsyncOrderData]
pending: DynArray[uint128, MAX_PENDING]


@deploy
def __init__(usd: address, forwarder: address, oracle: address):
    self.usd = IERC20(usd)
    self.forwarder = forwarder
    self.oracle = IPythWrapper(oracle)
    self.next_account_id = 170141183460469231731687303715884105728
    self.settlement_window = 60


# ---- test knobs (not part of the real ABI) ----

@external
def fake_create_market(market_id: uint128, name: String[32], symbol: String[16], price: uint256,
                       maker_fee: uint256, taker_fee: uint256, min_imr: uint256, min_position_margin: uint256):
    self.market_ids.append(convert(market_id, uint256))
    self.market_name[market_id] = name
    self.market_symbol[market_id] = symbol
    self.price[market_id] = price
    self.maker_fee[market_id] = maker_fee
    self.taker_fee[market_id] = taker_fee
    self.min_imr[market_id] = min_imr
    self.min_position_margin[market_id] = min_position_margin
    self.feed_id[market_id] = keccak256(symbol)


@external
def fake_set_price(market_id: uint128, price: uint256):
    self.price[market_id] = price


@external
def fake_set_staleness(seconds: uint256):
    self.staleness = seconds


@external
def fake_set_settlement(delay: uint256, window: uint256):
    self.settlement_delay = delay
    self.settlement_window = window


@view
@external
def fake_pending() -> DynArray[uint128, MAX_PENDING]:
    return self.pending


# ---- internals ----

@view
@internal
def _sender() -> address:
    """ERC-2771: behind the trusted forwarder the original sender is the calldata's last 20 bytes."""
    if msg.sender == self.forwarder and len(msg.data) >= 24:
        return convert(convert(slice(msg.data, len(msg.data) - 20, 20), bytes20), address)
    return msg.sender


@view
@internal
def _require_fresh_price(market_id: uint128):
    """ERC-7412: a price older than the staleness tolerance must be pushed in the same transaction."""
    if self.staleness == 0:
        return
    feed: bytes32 = self.feed_id[market_id]
    if staticcall self.oracle.fresh_at(feed) + self.staleness < block.timestamp:
        feeds: DynArray[bytes32, 1] = [feed]
        raw_revert(concat(method_id("OracleDataRequired(address,bytes)"),
                          abi_encode(self.oracle.address, abi_encode(convert(1, uint8),
                                                                     convert(self.staleness, uint64), feeds))))

@pure
@internal
def _abs(x: int256) -> uint256:
    if x < 0:
        return convert(-x, uint256)
    return convert(x, uint256)


@view
@internal
def _unrealized(account_id: uint128) -> int256:
    total: int256 = 0
    for m: uint256 in self.market_ids:
        market_id: uint128 = convert(m, uint128)
        size: int256 = convert(self.size_of[account_id][market_id], int256)
        if size != 0:
            diff: int256 = convert(self.price[market_id], int256) - convert(self.last_price[account_id][market_id], int256)
            total += size * diff // convert(UNIT, int256)
    return total


@view
@internal
def _available(account_id: uint128) -> int256:
    return convert(self.collateral[account_id], int256) + self.realized[account_id] + self._unrealized(account_id)


@view
@internal
def _required(account_id: uint128, market_id: uint128, size_delta: int128) -> uint256:
    """Initial margin of every position once size_delta is applied to market_id, plus that order's fee."""
    total: uint256 = 0
    for m: uint256 in self.market_ids:
        mid: uint128 = convert(m, uint128)
        size: int256 = convert(self.size_of[account_id][mid], int256)
        if mid == market_id:
            size += convert(size_delta, int256)
        if size != 0:
            notional: uint256 = self._abs(size) * self.price[mid] // UNIT
            total += notional * self.min_imr[mid] // UNIT + self.min_position_margin[mid]
    fee: uint256 = self._abs(convert(size_delta, int256)) * self.price[market_id] // UNIT * self.taker_fee[market_id] // UNIT
    return total + fee


@internal
def _check_account(account_id: uint128):
    if self.owner_of[account_id] == empty(address):
        raw_revert(concat(method_id("AccountNotFound(uint128)"), abi_encode(account_id)))
    if self.owner_of[account_id] != self._sender():
        raw_revert(concat(method_id("PermissionDenied(uint128,bytes32,address)"),
                          abi_encode(account_id, COMMIT_PERMISSION, self._sender())))


@internal
def _check_market(market_id: uint128):
    if self.price[market_id] == 0:
        raw_revert(concat(method_id("InvalidMarket(uint128)"), abi_encode(market_id)))


@view
@internal
def _fill_ok(size_delta: int128, fill: uint256, acceptable: uint256) -> bool:
    if size_delta > 0:
        return fill <= acceptable
    return fill >= acceptable


@internal
def _drop_pending(account_id: uint128):
    kept: DynArray[uint128, MAX_PENDING] = []
    for a: uint128 in self.pending:
        if a != account_id:
            kept.append(a)
    self.pending = kept


# ---- accounts and collateral ----

@external
def createAccount() -> uint128:
    account_id: uint128 = self.next_account_id
    self.next_account_id = account_id + 1
    self.owner_of[account_id] = self._sender()
    log AccountCreated(accountId=account_id, owner=self._sender())
    return account_id


@view
@external
def getAccountOwner(accountId: uint128) -> address:
    return self.owner_of[accountId]


@external
def modifyCollateral(accountId: uint128, collateralId: uint128, amountDelta: int256):
    self._check_account(accountId)
    if collateralId != 0:
        raw_revert(concat(method_id("SynthNotEnabledForCollateral(uint128)"), abi_encode(collateralId)))
    if amountDelta == 0:
        raw_revert(concat(method_id("InvalidAmountDelta(int256)"), abi_encode(amountDelta)))
    if amountDelta > 0:
        amount: uint256 = convert(amountDelta, uint256)
        assert extcall self.usd.transferFrom(self._sender(), self, amount)
        self.collateral[accountId] += amount
    else:
        amount: uint256 = convert(-amountDelta, uint256)
        withdrawable: int256 = self._available(accountId) - convert(self._required(accountId, 0, 0), int256)
        if withdrawable < convert(amount, int256) or amount > self.collateral[accountId]:
            raw_revert(concat(method_id("InsufficientCollateralAvailableForWithdraw(int256,uint256)"),
                              abi_encode(withdrawable, amount)))
        self.collateral[accountId] -= amount
        assert extcall self.usd.transfer(self._sender(), amount)
    log CollateralModified(accountId=accountId, collateralId=collateralId, amountDelta=amountDelta, sender=self._sender())


@view
@external
def getCollateralAmount(accountId: uint128, collateralId: uint128) -> uint256:
    if collateralId != 0:
        return 0
    return self.collateral[accountId]


@view
@external
def totalCollateralValue(accountId: uint128) -> uint256:
    return self.collateral[accountId]


@view
@external
def getAvailableMargin(accountId: uint128) -> int256:
    return self._available(accountId)


@view
@external
def getWithdrawableMargin(accountId: uint128) -> int256:
    return self._available(accountId) - convert(self._required(accountId, 0, 0), int256)


@view
@external
def getAccountOpenPositions(accountId: uint128) -> DynArray[uint256, MAX_MARKETS]:
    out: DynArray[uint256, MAX_MARKETS] = []
    for m: uint256 in self.market_ids:
        if self.size_of[accountId][convert(m, uint128)] != 0:
            out.append(m)
    return out


@view
@external
def getOpenPosition(accountId: uint128, marketId: uint128) -> (int256, int256, int128, uint256):
    size: int128 = self.size_of[accountId][marketId]
    pnl: int256 = 0
    if size != 0:
        diff: int256 = convert(self.price[marketId], int256) - convert(self.last_price[accountId][marketId], int256)
        pnl = convert(size, int256) * diff // convert(UNIT, int256)
    return pnl, 0, size, 0


@view
@external
def getOpenPositionSize(accountId: uint128, marketId: uint128) -> int128:
    return self.size_of[accountId][marketId]


# ---- markets ----

@view
@external
def getMarkets() -> DynArray[uint256, MAX_MARKETS]:
    return self.market_ids


@view
@external
def metadata(marketId: uint128) -> (String[32], String[16]):
    return self.market_name[marketId], self.market_symbol[marketId]


@view
@external
def indexPrice(marketId: uint128) -> uint256:
    return self.price[marketId]


@view
@external
def getMarketSummary(marketId: uint128) -> MarketSummary:
    return MarketSummary(skew=0, size=0, maxOpenInterest=convert(max_value(uint128), uint256), currentFundingRate=0,
                         currentFundingVelocity=0, indexPrice=self.price[marketId])


@view
@external
def getOrderFees(marketId: uint128) -> (uint256, uint256):
    return self.maker_fee[marketId], self.taker_fee[marketId]


@view
@external
def getLiquidationParameters(marketId: uint128) -> (uint256, uint256, uint256, uint256, uint256):
    return self.min_imr[marketId], self.min_imr[marketId], UNIT // 2, 0, self.min_position_margin[marketId]


@view
@external
def getSettlementStrategy(marketId: uint128, strategyId: uint256) -> SettlementStrategyData:
    return SettlementStrategyData(strategyType=0, settlementDelay=self.settlement_delay,
                                  settlementWindowDuration=self.settlement_window,
                                  priceVerificationContract=empty(address), feedId=empty(bytes32),
                                  settlementReward=0, disabled=False, commitmentPriceDelay=0)


@view
@external
def computeOrderFees(marketId: uint128, sizeDelta: int128) -> (uint256, uint256):
    fill: uint256 = self.price[marketId]
    return self._abs(convert(sizeDelta, int256)) * fill // UNIT * self.taker_fee[marketId] // UNIT, fill


@view
@external
def requiredMarginForOrder(accountId: uint128, marketId: uint128, sizeDelta: int128) -> uint256:
    return self._required(accountId, marketId, sizeDelta)


# ---- async orders ----

@external
def commitOrder(commitment: OrderCommitmentRequest) -> (AsyncOrderData, uint256):
    account_id: uint128 = commitment.accountId
    market_id: uint128 = commitment.marketId
    self._check_account(account_id)
    self._check_market(market_id)
    self._require_fresh_price(market_id)
    if commitment.settlementStrategyId != 0:
        raw_revert(concat(method_id("InvalidSettlementStrategy(uint256)"),
                          abi_encode(convert(commitment.settlementStrategyId, uint256))))
    if commitment.sizeDelta == 0:
        raw_revert(method_id("ZeroSizeOrder()"))
    previous: AsyncOrderData = self.orders[account_id]
    if previous.commitmentTime != 0:
        if block.timestamp <= previous.commitmentTime + self.settlement_delay + self.settlement_window:
            raw_revert(method_id("PendingOrderExists()"))
        log PreviousOrderExpired(marketId=previous.request.marketId, accountId=account_id,
                                 sizeDelta=previous.request.sizeDelta,
                                 acceptablePrice=previous.request.acceptablePrice,
                                 commitmentTime=previous.commitmentTime, trackingCode=previous.request.trackingCode)
    fill: uint256 = self.price[market_id]
    if not self._fill_ok(commitment.sizeDelta, fill, commitment.acceptablePrice):
        raw_revert(concat(method_id("AcceptablePriceExceeded(uint256,uint256)"),
                          abi_encode(fill, commitment.acceptablePrice)))
    available: int256 = self._available(account_id)
    required: uint256 = self._required(account_id, market_id, commitment.sizeDelta)
    if available < convert(required, int256):
        raw_revert(concat(method_id("InsufficientMargin(int256,uint256)"), abi_encode(available, required)))
    order: AsyncOrderData = AsyncOrderData(commitmentTime=block.timestamp, request=commitment)
    self.orders[account_id] = order
    self._drop_pending(account_id)
    self.pending.append(account_id)
    settle_at: uint256 = block.timestamp + self.settlement_delay
    log OrderCommitted(marketId=market_id, accountId=account_id, orderType=0, sizeDelta=commitment.sizeDelta,
                       acceptablePrice=commitment.acceptablePrice, commitmentTime=block.timestamp,
                       expectedPriceTime=settle_at, settlementTime=settle_at,
                       expirationTime=settle_at + self.settlement_window, trackingCode=commitment.trackingCode,
                       sender=self._sender())
    fee: uint256 = self._abs(convert(commitment.sizeDelta, int256)) * fill // UNIT * self.taker_fee[market_id] // UNIT
    return order, fee


@view
@external
def getOrder(accountId: uint128) -> AsyncOrderData:
    return self.orders[accountId]


@external
def settleOrder(accountId: uint128):
    order: AsyncOrderData = self.orders[accountId]
    if order.commitmentTime == 0:
        raw_revert(method_id("OrderNotValid()"))
    settle_at: uint256 = order.commitmentTime + self.settlement_delay
    if block.timestamp < settle_at:
        raw_revert(concat(method_id("SettlementWindowNotOpen(uint256,uint256)"), abi_encode(block.timestamp, settle_at)))
    if block.timestamp > settle_at + self.settlement_window:
        raw_revert(concat(method_id("SettlementWindowExpired(uint256,uint256,uint256)"),
                          abi_encode(block.timestamp, settle_at, settle_at + self.settlement_window)))
    request: OrderCommitmentRequest = order.request
    market_id: uint128 = request.marketId
    fill: uint256 = self.price[market_id]
    if not self._fill_ok(request.sizeDelta, fill, request.acceptablePrice):
        raw_revert(concat(method_id("AcceptablePriceExceeded(uint256,uint256)"), abi_encode(fill, request.acceptablePrice)))
    available: int256 = self._available(accountId)
    required: uint256 = self._required(accountId, market_id, request.sizeDelta)
    if available < convert(required, int256):
        raw_revert(concat(method_id("InsufficientMargin(int256,uint256)"), abi_encode(available, required)))
    old: int128 = self.size_of[accountId][market_id]
    pnl: int256 = 0
    if old != 0:
        diff: int256 = convert(fill, int256) - convert(self.last_price[accountId][market_id], int256)
        pnl = convert(old, int256) * diff // convert(UNIT, int256)
    fees: uint256 = self._abs(convert(request.sizeDelta, int256)) * fill // UNIT * self.taker_fee[market_id] // UNIT
    new_size: int128 = old + request.sizeDelta
    self.size_of[accountId][market_id] = new_size
    self.last_price[accountId][market_id] = fill
    self.realized[accountId] += pnl - convert(fees, int256)
    self.orders[accountId] = empty(AsyncOrderData)
    self._drop_pending(accountId)
    log OrderSettled(marketId=market_id, accountId=accountId, fillPrice=fill, pnl=pnl, accruedFunding=0,
                     sizeDelta=request.sizeDelta, newSize=new_size, totalFees=fees, referralFees=0,
                     collectedFees=fees, settlementReward=0, trackingCode=request.trackingCode, settler=msg.sender)


@external
def cancelOrder(accountId: uint128):
    order: AsyncOrderData = self.orders[accountId]
    if order.commitmentTime == 0:
        raw_revert(method_id("OrderNotValid()"))
    request: OrderCommitmentRequest = order.request
    fill: uint256 = self.price[request.marketId]
    if self._fill_ok(request.sizeDelta, fill, request.acceptablePrice):
        raw_revert(concat(method_id("AcceptablePriceNotExceeded(uint256,uint256)"), abi_encode(fill, request.acceptablePrice)))
    self.orders[accountId] = empty(AsyncOrderData)
    self._drop_pending(accountId)
    log OrderCancelled(marketId=request.marketId, accountId=accountId, desiredPrice=request.acceptablePrice,
                       fillPrice=fill, sizeDelta=request.sizeDelta, settlementReward=0,
                       trackingCode=request.trackingCode, settler=msg.sender)
