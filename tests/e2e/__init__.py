"""End-to-end tests with third-party client SDKs."""
