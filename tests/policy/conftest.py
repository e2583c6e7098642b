"""The CLI fixtures of tests/cli, for the policy tests that run the real command line."""

from tests.cli.conftest import any_backend_cli, cli

__all__ = ["any_backend_cli", "cli"]
