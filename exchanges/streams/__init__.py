"""Market-data streams: one interface (base.py), one module per venue. Imports nothing of ours but exchanges."""

from exchanges.streams.base import (
    ClosedCandle,
    MarketStream,
    PriceTick,
    ReconnectPolicy,
    StreamSink,
    StreamState,
)

__all__ = ["ClosedCandle", "MarketStream", "PriceTick", "ReconnectPolicy", "StreamSink", "StreamState"]
