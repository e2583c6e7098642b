"""Guards around agent calls, each a wrapper around an `Agent` in its own module.

`chain.build_call_agent` composes them for one agent of one run (outermost first):
guard (injection screen, size limits) -> cache -> fallback over the agent's models, each
model behind its circuit breaker -> budget reservation -> shared rate limit -> the model.
Retries happen per attempt in `engine/calls.py`, with the decisions taken in `retry`.
"""
