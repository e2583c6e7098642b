"""`python -m agentmill` runs the command line."""

from agentmill.cli.app import main

main()
