# pragma version 0.4.3
"""
@title A stand-in for Synthetix's TrustedMulticallForwarder: `aggregate3Value` with ERC-2771 sender appending.
@notice Each call goes to its target with the caller's address appended to the calldata (ERC-2771), carrying its
        value; a failed call with requireSuccess bubbles its revert data up unchanged.
"""

struct Call3Value:
    target: address
    requireSuccess: bool
    value: uint256
    callData: Bytes[20000]

struct Result:
    success: bool
    returnData: Bytes[1024]


@payable
@external
def aggregate3Value(calls: DynArray[Call3Value, 8]) -> DynArray[Result, 8]:
    results: DynArray[Result, 8] = []
    for c: Call3Value in calls:
        success: bool = False
        returned: Bytes[1024] = b""
        success, returned = raw_call(c.target, concat(c.callData, convert(msg.sender, bytes20)), max_outsize=1024,
                                     value=c.value, revert_on_failure=False)
        if not success and c.requireSuccess:
            raw_revert(returned)
        results.append(Result(success=success, returnData=returned))
    return results
