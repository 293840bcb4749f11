"""A lean HTTP/1.1 client for the gateway's upstream calls (asyncio Protocol + httptools).

Only what `gateway.services.upstream` needs, on the loop the server runs (uvloop in production):
keep-alive pools per origin and loop (`pool.py`), one exchange per connection at a time with the
request target and headers sent exactly as given, the response head as raw bytes pairs and the
body read whole or in back-pressured chunks (`connection.py`), and errors that tell a refused
connect from a stale pooled connection from a broken response (`errors.py`).
"""

from gateway.upstream_client.connection import UpstreamResponse
from gateway.upstream_client.errors import (
    UpstreamConnectError,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStaleConnection,
)
from gateway.upstream_client.pool import Pool, close_pools, pool_for

__all__ = [
    "Pool",
    "UpstreamConnectError",
    "UpstreamDisconnected",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamResponse",
    "UpstreamStaleConnection",
    "close_pools",
    "pool_for",
]
