"""``python -m examples.shop_backend --dsn ... --port ...``: see README.md."""

from examples.shop_backend.app import main

raise SystemExit(main())
