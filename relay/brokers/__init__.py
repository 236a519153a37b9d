"""Brokers: where publications, history and presence live. One interface (``base.Broker``),
the in-memory broker (the embedded default) and, later, Redis."""
