"""The dashboard (`loratune ui`): a page and a JSON API over a runs folder, on top of everything else.

paths.py (what a request may name: run names, config files, the ui's own folder) ->
runs.py (a row per run, one run in full, live progress) -> answers.py (per-row answers, filtered) ->
launcher.py (queued `loratune run` subprocesses) -> chat.py (the serve app for one run) ->
app.py (routes, the guard, `run_ui`); static/ holds the page.
"""
