# pragma version 0.4.3
"""
@title A stand-in for Synthetix's PythERC7412Wrapper: `fulfillOracleQuery` takes a price update (ERC-7412).
@notice Accepts the wrapper's "latest price" payload abi.encode(uint8 updateType=1, uint64 stalenessTolerance,
        bytes32[] priceIds, bytes[] updateData), charges `fee` wei per update like Pyth (FeeRequired otherwise),
        and marks the feeds fresh. The update bytes are not verified (no Wormhole signatures offline).
"""

fee: public(uint256)
fresh_at: public(HashMap[bytes32, uint256])
updates: public(uint256)


@external
def fake_set_fee(fee: uint256):
    self.fee = fee


@payable
@external
def fulfillOracleQuery(signedOffchainData: Bytes[20000]):
    update_type: uint8 = 0
    tolerance: uint64 = 0
    feeds: DynArray[bytes32, 8] = []
    data: DynArray[Bytes[2048], 8] = []
    update_type, tolerance, feeds, data = abi_decode(signedOffchainData, (uint8, uint64, DynArray[bytes32, 8],
                                                                          DynArray[Bytes[2048], 8]))
    if update_type != 1:
        raw_revert(concat(method_id("NotSupported(uint8)"), abi_encode(update_type)))
    required: uint256 = self.fee * len(data)
    if msg.value < required:
        raw_revert(concat(method_id("FeeRequired(uint256)"), abi_encode(required)))
    for feed: bytes32 in feeds:
        self.fresh_at[feed] = block.timestamp
    self.updates += 1
