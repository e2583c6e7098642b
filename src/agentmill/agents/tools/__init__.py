"""What an LLM agent may call: built-in tools, Python function tools, MCP servers and other
agents, each a pydantic-ai toolset; every call recorded by the step's durable loop."""
