"""relay's conversations with the shop's own systems: the event proxy to its backend (proxy.py), the PostgreSQL
outbox it consumes (outbox.py)."""
