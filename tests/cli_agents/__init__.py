"""Tests of command-line agents: the child process, presets, parsing, worktrees."""
