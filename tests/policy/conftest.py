"""Fixtures of the policy tests: the CLI ones of tests/cli (for the tests that run the real
command line) and the response cache's (tests/policy/cache_support.py)."""

from tests.cli.conftest import any_backend_cli, cli
from tests.policy.cache_support import cache_settings, open_cache, store

__all__ = ["any_backend_cli", "cache_settings", "cli", "open_cache", "store"]
