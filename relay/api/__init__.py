"""HTTP side of relay: the Centrifugo-compatible server API, health and readiness."""
