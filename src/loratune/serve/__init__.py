"""Serving: an OpenAI-compatible HTTP server over a base model and its LoRA adapters, the web
chat page it serves, and the terminal chat.

registry.py (base + adapters) -> prompts.py (training prompt from a raw message) ->
batching.py (queue, mixed-adapter batches) -> app.py (HTTP routes, errors, auth); chat.py is the
terminal front end over the same registry.
"""
