"""The network layer: WebSocket transport, Gelato sessions, the server and the client."""
from galaxynode.net.client import connect
from galaxynode.net.connection import (Connection, RemoteError, SessionClosed, SessionLimits, establish,
                                       is_violation, refuse)
from galaxynode.net.bans import Bans
from galaxynode.net.ratelimit import TokenBucket
from galaxynode.net.server import Server
from galaxynode.net.transport import Channel, ChannelClosed, open_channel, serve_channels

__all__ = ["Bans", "Channel", "ChannelClosed", "Connection", "RemoteError", "Server", "SessionClosed",
           "SessionLimits", "TokenBucket", "connect", "establish", "is_violation", "open_channel", "refuse",
           "serve_channels"]
