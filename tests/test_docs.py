"""The README and docs/ as a user reads them: the commands they show run, their links lead somewhere.

- every `loratune ...` command shown (in a shell code block or in inline code) parses with the CLI's
  own parser, `--set` keys included; placeholders such as CONFIG, RUN or DIR are fine as values;
- every `python bench/X.py ...` command names a file in bench/ and parses with that script's parser;
- every relative link and `#anchor` in README.md, CHANGELOG.md and docs/ resolves (GitHub's heading
  slugs; an anchor into another .md file is checked against that file's headings);
- every shipped config in configs/ loads and validates (pipeline files with the pipeline loader);
- docs/configuration.md lists exactly the keys of `RunConfig`;
- product text states properties with a date and a commit, never a numbered diary entry;
- README.md stays a guide of at most 300 lines.

A failure names the file and the line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shlex
import subprocess
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest

from loratune.cli import build_parser
from loratune.config import RunConfig, load_config, read_yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").rglob("*.md"))
COMMAND_FILES = [README, *DOCS]
LINK_FILES = [README, ROOT / "CHANGELOG.md", *DOCS]
README_MAX_LINES = 300

SHELL_FENCES = {"", "bash", "sh", "shell", "console", "zsh"}
FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
ELLIPSIS = {"...", "…"}
SHELL_OPERATORS = {"&&", "||", ";", "|", "&", ">", ">>", "<", "2>", "2>&1", ")", "(", "`"}
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$")  # CONFIG, RUN_DIR, KEY ...


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# ---------------------------------------------------------------- reading markdown


@dataclass
class Snippet:
    """A piece of code a page shows: one shell line (continuations joined) or one inline code span."""

    path: Path
    line: int
    text: str
    inline: bool

    @property
    def where(self) -> str:
        return f"{rel(self.path)}:{self.line}"


def split_page(path: Path) -> tuple[list[tuple[int, str, str]], list[str]]:
    """(code lines as (line number, language, text), the page's lines with code blocks blanked)."""
    code: list[tuple[int, str, str]] = []
    prose: list[str] = []
    fence: str | None = None
    language = ""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        match = FENCE.match(line)
        if fence is None and match:
            fence, language = match.group(1), match.group(2).lower()
            prose.append("")
        elif fence is not None and line.strip().startswith(fence[0] * len(fence)) and not line.strip().strip(fence[0]):
            fence = None
            prose.append("")
        elif fence is not None:
            code.append((number, language, line))
            prose.append("")
        else:
            prose.append(line)
    return code, prose


INLINE_CODE = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.DOTALL)


def inline_spans(prose: list[str]) -> list[tuple[int, str, int, int]]:
    """Inline code spans as (line number, content, start, end offsets in the joined prose).

    A span may wrap onto the next line of its paragraph, never across a blank line."""
    text = "\n".join(prose)
    spans = []
    for match in INLINE_CODE.finditer(text):
        if "\n\n" in match.group(0) or re.search(r"\n\s*\n", match.group(0)):
            continue
        line = text.count("\n", 0, match.start()) + 1
        spans.append((line, " ".join(match.group(2).split()), match.start(), match.end()))
    return spans


def snippets(path: Path) -> list[Snippet]:
    code, prose = split_page(path)
    found: list[Snippet] = []
    pending: tuple[int, str] | None = None
    for number, language, line in code:
        if language not in SHELL_FENCES:
            continue
        if language == "console":
            line = re.sub(r"^\s*\$\s", "", line)
        start, text = pending if pending else (number, "")
        text += line
        if text.rstrip().endswith("\\"):
            pending = (start, text.rstrip()[:-1] + " ")
            continue
        pending = None
        found.append(Snippet(path, start, text, inline=False))
    for line, content, _, _ in inline_spans(prose):
        found.append(Snippet(path, line, content, inline=True))
    return found


def words(text: str) -> list[str]:
    """Shell words of a line, comments dropped; operators are words of their own."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        return list(lexer)
    except ValueError:  # an unbalanced quote in prose: plain splitting is good enough
        return text.split("#", 1)[0].split()


def until_operator(tokens: list[str]) -> list[str]:
    out = []
    for token in tokens:
        if token in SHELL_OPERATORS or token.startswith((">", "<", "|", "&", ";")):
            break
        if token not in ELLIPSIS:
            out.append(token)
    return out


def loratune_args(snippet: Snippet) -> list[str] | None:
    """The arguments of the `loratune` command a snippet shows, or None when it shows none.

    `loratune ...`, `.venv/bin/loratune ...`, `python -m loratune ...`, `torchrun ... -m loratune ...`
    and the same after environment assignments (`LORATUNE_PRECISION=fp32 loratune ...`)."""
    tokens = words(snippet.text)
    for i, token in enumerate(tokens):
        if token != "loratune" and not token.endswith("/bin/loratune"):
            continue
        before = tokens[:i]
        launched = bool(before) and before[-1] == "-m"
        plain = all(ENV_ASSIGNMENT.match(t) or t in {"$", "time", "nohup", "exec"} for t in before)
        if launched or plain:
            return until_operator(tokens[i + 1:])
        return None
    return None


PYTHON = re.compile(r"(^|/)python(3(\.\d+)?)?$")


def bench_command(snippet: Snippet) -> tuple[str, list[str]] | None:
    """(script path, its arguments) of a `python bench/X.py ...` command, or None.

    Also `bench/X.py ...` at the start of a snippet (after environment assignments), as the log
    writes the commands it ran, and the shell scripts of bench/recipe/ (their existence is checked)."""
    tokens = words(snippet.text)
    for i, token in enumerate(tokens):
        if not (token.startswith("bench/") and token.endswith((".py", ".sh"))):
            continue
        before = tokens[:i]
        launcher = bool(before) and (PYTHON.search(before[-1]) or before[-1] in ("bash", "sh"))
        if launcher or all(ENV_ASSIGNMENT.match(t) for t in before):
            return token, until_operator(tokens[i + 1:])
        return None
    return None


def all_snippets() -> list[Snippet]:
    return [s for path in COMMAND_FILES for s in snippets(path)]


# ---------------------------------------------------------------- (a) loratune commands


class ParseError(Exception):
    pass


def _raise(self: argparse.ArgumentParser, message: str) -> typing.NoReturn:
    raise ParseError(f"{self.prog}: {message}")


def config_keys() -> set[str]:
    """Every leaf key of RunConfig, as `section.key` (top-level keys bare)."""
    keys: set[str] = set()

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{prefix}{f.name}.")
            else:
                keys.add(prefix + f.name)

    walk(RunConfig, "")
    return keys


def check_loratune_command(args: list[str], inline: bool, keys: set[str]) -> str | None:
    """Why `loratune ARGS` is not a real command, or None."""
    parser = build_parser()
    helped = any(a in ("-h", "--help") for a in args)
    args = [a for a in args if a not in ("-h", "--help")]
    if not args:
        return None  # `loratune` or `loratune --help`
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    if args[0] not in subcommands:
        return f"unknown command {args[0]!r} (commands: {', '.join(subcommands)})"
    original = argparse.ArgumentParser.error
    argparse.ArgumentParser.error = _raise  # every subparser too
    try:
        namespace = parser.parse_args(args)
    except ParseError as exc:
        # Prose names a command without its required arguments (`loratune train` checks ...);
        # a shell block is meant to be run as shown.
        if (inline or helped) and "the following arguments are required" in str(exc):
            return None
        return str(exc)
    finally:
        argparse.ArgumentParser.error = original
    for text in getattr(namespace, "overrides", []) or []:
        key = text.split("=", 1)[0].strip()
        if PLACEHOLDER.match(key):
            continue
        if key not in keys and not any(k.startswith(key + ".") for k in keys):
            return f"--set {text}: {key!r} is not a config key (docs/configuration.md lists them)"
    return None


def loratune_commands() -> list[tuple[Snippet, list[str]]]:
    return [(s, args) for s in all_snippets() if (args := loratune_args(s)) is not None]


def test_the_docs_show_loratune_commands():
    shown = {rel(s.path) for s, _ in loratune_commands()}
    assert "README.md" in shown and "docs/configuration.md" in shown, shown


def test_every_loratune_command_shown_is_real():
    keys = config_keys()
    failures = []
    for snippet, args in loratune_commands():
        why = check_loratune_command(args, snippet.inline, keys)
        if why:
            failures.append(f"{snippet.where}: `loratune {' '.join(args)}`: {why}")
    assert not failures, "\n".join(failures)


def test_the_command_check_catches_unknown_commands_and_flags():
    keys = config_keys()
    assert check_loratune_command(["train", "CONFIG", "--resume"], False, keys) is None
    assert check_loratune_command(["train"], True, keys) is None  # prose naming the command
    assert check_loratune_command(["train"], False, keys)  # a shell line must be complete
    assert check_loratune_command(["trian", "CONFIG"], False, keys)
    assert check_loratune_command(["train", "CONFIG", "--resumes"], True, keys)
    assert check_loratune_command(["run", "CONFIG", "--set", "train.max_minute=5"], False, keys)
    assert check_loratune_command(["run", "CONFIG", "--set", "KEY=VALUE"], False, keys) is None
    page = Snippet(README, 1, "LORATUNE_PRECISION=fp32 .venv/bin/loratune eval runs/x --limit 5  # why", False)
    assert loratune_args(page) == ["eval", "runs/x", "--limit", "5"]
    launched = Snippet(README, 1, "torchrun --nproc_per_node 2 -m loratune train CONFIG", False)
    assert loratune_args(launched) == ["train", "CONFIG"]
    assert loratune_args(Snippet(README, 1, "~/.cache/loratune/torchinductor", True)) is None
    assert loratune_args(Snippet(README, 1, "make demo    # runs loratune run", False)) is None


# ---------------------------------------------------------------- (b) bench commands


# Runs each bench script as `python bench/X.py` would, up to its argument parsing: the parser it
# builds parses every command the docs show for it, and the script stops there.
PARSE_ONLY = r"""
import argparse, json, runpy, sys

class Parsed(BaseException):
    pass

def fail(self, message):
    raise ValueError(f"{self.prog}: {message}")

argparse.ArgumentParser.error = fail
jobs = json.loads(sys.argv[1])
results = {}
real_parse = argparse.ArgumentParser.parse_args
for script, argvs in jobs.items():
    verdicts = []

    def parse_all(self, args=None, namespace=None):
        for argv in argvs:
            try:
                real_parse(self, argv)
                verdicts.append(None)
            except ValueError as exc:
                verdicts.append(str(exc))
        raise Parsed

    argparse.ArgumentParser.parse_args = parse_all
    sys.argv = [script]
    try:
        runpy.run_path(script, run_name="__main__")
        results[script] = "the script did not parse its arguments"
    except Parsed:
        results[script] = verdicts
    except BaseException as exc:
        results[script] = f"the script failed before parsing its arguments: {exc!r}"
print(json.dumps(results))
"""


def bench_commands() -> list[tuple[Snippet, str, list[str]]]:
    return [(s, *found) for s in all_snippets() if (found := bench_command(s)) is not None]


def test_every_bench_command_shown_is_real():
    commands = bench_commands()
    assert commands, "no `python bench/X.py` command found in the docs"
    failures = []
    jobs: dict[str, list[list[str]]] = {}
    owners: dict[str, list[Snippet]] = {}
    for snippet, script, args in commands:
        path = ROOT / script
        if not path.is_file():
            failures.append(f"{snippet.where}: `{script}`: no such file")
            continue
        if "argparse" not in path.read_text(encoding="utf-8"):
            continue  # a script that reads sys.argv itself: its existence is what can be checked
        jobs.setdefault(script, []).append([a for a in args if a not in ("-h", "--help")])
        owners.setdefault(script, []).append(snippet)
    if jobs:
        done = subprocess.run([sys.executable, "-c", PARSE_ONLY, json.dumps(jobs)], cwd=ROOT, check=False,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        results = json.loads(done.stdout.strip().splitlines()[-1])
        for script, verdicts in results.items():
            if isinstance(verdicts, str):
                failures.append(f"{rel(owners[script][0].path)}: python {script}: {verdicts}")
                continue
            for snippet, argv, why in zip(owners[script], jobs[script], verdicts):
                if why and not (snippet.inline and "the following arguments are required" in why):
                    failures.append(f"{snippet.where}: `python {script} {' '.join(argv)}`: {why}")
    assert not failures, "\n".join(failures)


def test_bench_commands_are_found_in_prose_and_blocks():
    block = Snippet(README, 1, "TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) python bench/compile_cost.py layers  # x", False)
    assert bench_command(block) == ("bench/compile_cost.py", ["layers"])
    inline = Snippet(README, 1, ".venv/bin/python bench/eval_speed.py --rows 400", True)
    assert bench_command(inline) == ("bench/eval_speed.py", ["--rows", "400"])
    logged = Snippet(README, 1, "bench/long_run.py --steps 310", True)
    assert bench_command(logged) == ("bench/long_run.py", ["--steps", "310"])
    assert bench_command(Snippet(README, 1, "git diff bench/long_run.py", True)) is None
    shell = Snippet(README, 1, "CONFIG=configs/x.yaml bench/recipe/demo_trial.sh h15 --set train.seed=1", False)
    assert bench_command(shell) == ("bench/recipe/demo_trial.sh", ["h15", "--set", "train.seed=1"])


CODE_PATH = re.compile(r"(?<![\w./~-])((?:src/loratune|loratune|bench|tests)/[\w./-]*\w)")


def test_every_source_path_shown_exists():
    """`src/loratune/...`, `loratune/...` (under src/), `bench/...` and `tests/...` named in code exist:
    the pages follow the package's layout. CHANGELOG.md names the old paths on purpose."""
    failures = []
    for snippet in all_snippets():
        for path in CODE_PATH.findall(snippet.text):
            if "<" in path or "*" in path:
                continue
            if not ((ROOT / path).exists() or (ROOT / "src" / path).exists()):
                failures.append(f"{snippet.where}: {path}: no such file or folder")
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------- (c) links and anchors


LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(\s|$)")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:[^>]*\s)?(?:id|name)=\"([^\"]+)\"", re.IGNORECASE)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text, lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images: their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").strip().lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch in " -_")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    _, prose = split_page(path)
    seen: dict[str, int] = {}
    found: set[str] = set()
    for line in prose:
        found.update(HTML_ANCHOR.findall(line))
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link outside code."""
    _, prose = split_page(path)
    text = "\n".join(prose)
    chars = list(text)
    for _, _, start, end in inline_spans(prose):  # code spans hold no links
        for i in range(start, end):
            if chars[i] != "\n":
                chars[i] = " "
    text = "".join(chars)
    found = [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in LINK.finditer(text)]
    for number, line in enumerate(text.splitlines(), start=1):
        if (m := REFERENCE.match(line)):
            found.append((number, m.group(1)))
    return found


def broken_link(path: Path, target: str) -> str | None:
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("//"):
        return None  # https:, mailto: ...: not this repository's
    target, _, anchor = target.partition("#")
    target = unquote(target.split("?", 1)[0])
    if target:
        dest = (ROOT / target.lstrip("/")) if target.startswith("/") else (path.parent / target)
        dest = dest.resolve()
        if not dest.exists():
            return f"{target}: no such file"
        if ROOT not in dest.parents and dest != ROOT:
            return f"{target}: outside the repository"
    else:
        dest = path
    if anchor and dest.suffix == ".md" and dest.is_file() and unquote(anchor) not in anchors(dest):
        return f"#{anchor}: no such heading in {rel(dest)}"
    return None


def test_the_pages_have_links():
    assert any(links(README)), "README.md: no links found"


@pytest.mark.parametrize("path", LINK_FILES, ids=rel)
def test_every_relative_link_and_anchor_resolves(path):
    failures = [f"{rel(path)}:{line}: ({target}) {why}"
                for line, target in links(path) if (why := broken_link(path, target))]
    assert not failures, "\n".join(failures)


def test_slugs_are_githubs():
    assert slug("Train on your own data") == "train-on-your-own-data"
    assert slug("`train_speed.py`") == "train_speedpy"
    assert slug("2026-12-07 · Intel Xeon (AMX) · commit 4f84526 — a fresh clone") == \
        "2026-12-07--intel-xeon-amx--commit-4f84526--a-fresh-clone"
    assert slug("eval.generation") == "evalgeneration"


# ---------------------------------------------------------------- (d) shipped configs


SHIPPED_CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    if "stages" in read_yaml(path):
        from loratune.pipeline import load_pipeline

        assert load_pipeline(path).stages
    else:
        assert load_config(path).name


# ---------------------------------------------------------------- (e) the configuration page


CONFIG_PAGE = ROOT / "docs" / "configuration.md"
TABLE_KEY = re.compile(r"^\|\s*`([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*)`\s*\|")


def page_keys() -> dict[str, int]:
    """The keys docs/configuration.md's tables list (first column, in backticks), with their lines."""
    _, prose = split_page(CONFIG_PAGE)
    return {m.group(1): number for number, line in enumerate(prose, start=1) if (m := TABLE_KEY.match(line))}


def test_the_configuration_page_lists_every_config_key():
    missing = sorted(config_keys() - set(page_keys()))
    assert not missing, f"docs/configuration.md: keys of config.py not listed: {', '.join(missing)}"


def test_the_configuration_page_lists_no_key_that_does_not_exist():
    listed = page_keys()
    extra = [f"docs/configuration.md:{listed[k]}: `{k}` is not a key of config.py"
             for k in sorted(set(listed) - config_keys())]
    assert not extra, "\n".join(extra)


# ---------------------------------------------------------------- (f) no diary in product text


# The pattern of `grep -rniE` over the same places, joined at run time so that neither this file nor
# its compiled bytecode matches it.
DIARY = re.compile("|".join(("sessions? [0-9]+", " ".join(("since", "session")))), re.IGNORECASE)  # noqa: FLY002
DIARY_PLACES = ["README.md", "docs", "configs", "src", "bench", "tests"]
SKIPPED_DIRS = {"__pycache__", ".pytest_cache"}


def product_files() -> list[Path]:
    files = []
    for place in DIARY_PLACES:
        top = ROOT / place
        candidates = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for path in candidates:
            parts = path.relative_to(ROOT).parts
            if place == "tests" and len(parts) > 1 and parts[1] == "reference":
                continue
            if any(part in SKIPPED_DIRS or part.endswith(".egg-info") for part in parts[:-1]):
                continue
            files.append(path)
    return files


def test_no_product_text_reads_as_a_diary():
    failures = []
    for path in product_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # images and other binary files
        for number, line in enumerate(text.splitlines(), start=1):
            if DIARY.search(line):
                failures.append(f"{rel(path)}:{number}: {line.strip()[:160]}")
    assert not failures, "state a property with a date, a machine kind and a commit:\n" + "\n".join(failures)


# ---------------------------------------------------------------- (g) the README's length


def test_the_readme_is_a_guide_of_at_most_300_lines():
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md: {lines} lines (at most {README_MAX_LINES}; the rest goes to docs/)"
