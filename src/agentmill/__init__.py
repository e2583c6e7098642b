"""agentmill: durable workflows for teams of LLM agents and command-line coding agents."""

__version__ = "0.1.0"
ENGINE_VERSION = "1"
"""Pinned DBOS application version: bump only with a migration path for in-flight runs."""

__all__ = ["ENGINE_VERSION", "__version__"]
