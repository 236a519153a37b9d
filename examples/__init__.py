"""Example applications built around relay (importable from the repository root)."""
