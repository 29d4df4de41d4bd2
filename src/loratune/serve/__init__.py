"""Serving: an OpenAI-compatible HTTP server over a base model and its LoRA adapters, the web
chat page it serves, and the terminal chat.

registry.py (base + adapters) -> prompts.py (training prompt from a raw message) ->
inference/jobs.py (one request's tokens and streamed text) -> inference/engine.py (continuous
batching: requests join and leave a running decode batch) -> scheduler.py (the bounded queue and
its worker) -> app.py with routes_*.py, guard.py, settings.py (HTTP routes, errors, auth);
terminal_chat.py is the terminal front end over the same registry and decode engine.
"""
