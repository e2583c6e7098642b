"""Command-line agents (`runtime: cli`): Claude Code, Codex, Gemini CLI, Aider or any script,
run as a workflow step in a contained child process."""
