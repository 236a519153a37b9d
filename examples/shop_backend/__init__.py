"""An example shop backend for relay: event-proxy hooks, a FAQ chatbot, order statuses via the outbox.

Run it with ``python -m examples.shop_backend`` (README.md); test it with
``pytest examples/shop_backend``.
"""

from examples.shop_backend.app import make_app, set_order_status

__all__ = ["make_app", "set_order_status"]
