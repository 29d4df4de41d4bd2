"""Where the ui may read and write: run directories under `--runs-dir`, config files under
`--configs`, and its own folder `<runs_dir>/.ui/`.

Every name or path a request carries passes through here before any file is opened. Names are
checked against a pattern first (no separators, no NUL, no leading dot), then resolved with
symlinks followed and checked to lie inside their root, so a link in runs/ that points elsewhere
is refused like a `..` would be.
"""

from __future__ import annotations

import re
from pathlib import Path

from loratune.errors import RequestError

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
"""Run names the ui accepts: what `loratune run` names a directory, without separators."""

CONFIG_SUFFIXES = (".yaml", ".yml")
UI_DIR = ".ui"
"""The ui's own files inside runs_dir: configs it launched and their console logs."""


def check_run_name(name: str, param: str = "name") -> str:
    """`name` if it is a plain run name, else a 400 naming `param`."""
    if not isinstance(name, str) or not RUN_NAME.fullmatch(name):
        shown = name[:120] if isinstance(name, str) else name
        raise RequestError(400, f"invalid run name {shown!r}: use letters, digits, '.', '_' and '-' "
                                "(at most 100, starting with a letter or digit)", param=param)
    return name


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def _resolve(path: Path, param: str) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # symlink loops, NUL bytes
        raise RequestError(400, f"invalid path: {exc}", param=param) from None


def run_path(runs_dir: Path, name: str, param: str = "name") -> Path:
    """`runs_dir / name` (it need not exist yet) once it is known to stay inside `runs_dir`, symlinks
    resolved. The path keeps the name asked for: a link to another run in runs_dir shows as itself."""
    check_run_name(name, param)
    root = _resolve(runs_dir, param)
    path = _resolve(runs_dir / name, param)
    if not _inside(path, root) or path == root:
        raise RequestError(404, f"run {name!r} is not a folder under {runs_dir}", param=param)
    return runs_dir / name


def existing_run(runs_dir: Path, name: str, param: str = "name") -> Path:
    """`run_path` of a run that exists, else a 404 naming the run."""
    path = run_path(runs_dir, name, param)
    if not path.is_dir():
        raise RequestError(404, f"no run named {name!r} in {runs_dir}", param=param, code="run_not_found")
    return path


def config_path(configs_dir: Path, relative: str, param: str = "path") -> Path:
    """A `.yaml`/`.yml` file under `configs_dir` named by a relative path (no `..`, no absolute
    path, no NUL, no symlink out of the folder)."""
    if not isinstance(relative, str) or not relative or "\x00" in relative or "\\" in relative:
        raise RequestError(400, "give a config path relative to the configs folder", param=param)
    parts = Path(relative).parts
    if Path(relative).is_absolute() or ".." in parts or not relative.endswith(CONFIG_SUFFIXES):
        raise RequestError(400, f"config path {relative[:200]!r}: a relative .yaml or .yml path under "
                                "the configs folder, without '..'", param=param)
    root = _resolve(configs_dir, param)
    path = _resolve(configs_dir / relative, param)
    if not _inside(path, root) or not path.is_file():
        raise RequestError(404, f"no config {relative!r} under {configs_dir}", param=param)
    return path


def list_config_paths(configs_dir: Path) -> list[str]:
    """Relative paths of the config files under `configs_dir` (sorted), skipping links that
    lead out of it."""
    if not configs_dir.is_dir():
        return []
    root = configs_dir.resolve()
    found = []
    for path in sorted(configs_dir.rglob("*")):
        if path.suffix in CONFIG_SUFFIXES and path.is_file() and _inside(path.resolve(), root):
            found.append(path.relative_to(configs_dir).as_posix())
    return found


def ui_dir(runs_dir: Path) -> Path:
    return runs_dir / UI_DIR


def saved_config(runs_dir: Path, name: str) -> Path:
    """Where the ui saves the config it launched run `name` with."""
    return ui_dir(runs_dir) / "configs" / f"{check_run_name(name)}.yaml"


def console_log(runs_dir: Path, name: str) -> Path:
    """Where the console output of the `loratune run` the ui launched for `name` goes."""
    return ui_dir(runs_dir) / "logs" / f"{check_run_name(name)}.log"
