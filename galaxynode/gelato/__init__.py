"""Gelato v1: the wire protocol, as plain sans-IO Python (no sockets, no clock of its own)."""
