"""Sans-I/O protocol layer: bytes in, events and bytes out. Never imports asyncio.

* ``websocket`` - the RFC 6455 opening handshake (frames are parsed by the core's
  ``FrameReader``, encoded by ``ws_frame``).
* ``tcp`` - raw TCP length-prefixed frames.
* ``codec`` - the client command codec: JSON lines (WebSocket) and msgpack (TCP).
"""
