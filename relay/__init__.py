"""relay: a high-throughput real-time message relay, wire-compatible with Centrifugo's client protocol."""

__version__ = "0.1.0"
