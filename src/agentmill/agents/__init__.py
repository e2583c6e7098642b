"""How one step's work is done: LLM agents (pydantic-ai), the embedded local model."""
