"""Serving: an OpenAI-compatible HTTP server over a base model and its LoRA adapters, the web
chat page it serves, and the terminal chat.

registry.py (base + adapters) -> prompts.py (training prompt from a raw message) -> jobs.py (one
request's tokens and streamed text) -> decode.py (continuous batching: requests join and leave a
running decode batch) -> batching.py (the bounded queue and its worker) -> app.py (HTTP routes,
errors, auth); chat.py is the terminal front end over the same registry and decode loop.
"""
