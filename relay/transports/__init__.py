"""Transports: asyncio protocols that glue sockets to the sans-I/O protocol layer and the node."""
