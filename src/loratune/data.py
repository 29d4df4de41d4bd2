"""Rows in, token ids out: read files or hub datasets, split, render prompts, tokenize, measure.

Seq2seq models get the prompt as encoder input and the target as labels. Causal models get
prompt + target as one sequence whose prompt positions are masked to -100 in the labels, so the
loss (and the gradient) comes from the answer alone.
"""

from __future__ import annotations

import csv
import random
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from loratune.config import DataSettings
from loratune.errors import DataError
from loratune.json_files import read_json, read_jsonl
from loratune.tasks import Task
from loratune.tasks.base import Prompt

IGNORE_INDEX = -100
LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


# ---------------------------------------------------------------- reading rows


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return list(read_jsonl(path, number_rows=True))  # the shared reader: file:line in every error


def _read_json(path: Path) -> list[dict[str, Any]]:
    data = read_json(path)
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DataError(f"{path}: expected a JSON list of objects (or JSONL, one object per line)")
    for index, row in enumerate(data):
        row["_line"] = index + 1  # row number: JSON arrays have no useful line numbers
    return data


def _read_csv(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8", newline="") as handle:
        rows = []
        for number, row in enumerate(csv.DictReader(handle), start=2):  # line 1 is the header
            row = dict(row)
            row["_line"] = number
            rows.append(row)
        return rows


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq  # comes with `datasets`

    rows = pq.read_table(path).to_pylist()
    for index, row in enumerate(rows):
        row["_line"] = index + 1
    return rows


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """A quick TCP probe, so an offline machine gets a clear error instead of a long hang."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _read_hub(name: str, split: str) -> list[dict[str, Any]]:
    import os

    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1" or not hub_reachable():
        raise DataError(
            f"{name}: not a local file, and the Hugging Face hub cannot be reached to load it as a dataset. "
            f"Point data.train/data.eval at a local .jsonl/.json/.csv/.parquet file (samples ship in data/)."
        )
    import datasets  # imported late: it is slow to import and only needed for hub data

    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as exc:  # datasets raises many types; the user needs the name and the reason
        raise DataError(f"{name} (split {split!r}): could not load from the hub: {exc}") from None
    rows = [dict(row) for row in dataset]
    for index, row in enumerate(rows):
        row["_line"] = index + 1
    return rows


def read_rows(source: str, split: str = "train") -> list[dict[str, Any]]:
    """Read rows from a local file (by suffix) or, when no such file exists, a hub dataset."""
    path = Path(source)
    if path.suffix.lower() in LOCAL_SUFFIXES or path.exists():
        if not path.is_file():
            nearby = sorted(p.name for p in path.parent.glob("*"))[:10] if path.parent.is_dir() else []
            hint = f" (files in {path.parent}: {', '.join(nearby)})" if nearby else ""
            raise DataError(f"{path}: data file not found{hint}")
        readers = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}
        reader = readers.get(path.suffix.lower())
        if reader is None:
            raise DataError(f"{path}: unsupported file type; use one of {', '.join(LOCAL_SUFFIXES)}")
        rows = reader(path)
        if not rows:
            raise DataError(f"{path}: the file has no rows")
        for row in rows:
            row["_source"] = str(path)
        return rows
    rows = _read_hub(source, split)
    for row in rows:
        row["_source"] = source
    return rows


def check_columns(rows: list[dict[str, Any]], task: Task) -> None:
    """Every row must have the task's columns, non-null. Errors name the file and line."""
    for row in rows:
        missing = [c for c in task.columns if row.get(c) is None]
        if missing:
            raise DataError(
                f"{row.get('_source', '<data>')}:{row.get('_line', '?')}: missing column '{missing[0]}' "
                f"(task {task.name} needs: {', '.join(task.columns)})"
            )
        try:
            task.prompt(row)
            task.target(row)
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{row.get('_source', '<data>')}:{row.get('_line', '?')}: {exc}") from None


def load_splits(cfg: DataSettings, task: Task, seed: int) -> tuple[list[dict], list[dict]]:
    """Train and eval rows: the eval file when given, else a seeded split of the training rows.

    Deterministic for a given config and seed, so evaluation later sees exactly the rows that
    training held out.
    """
    if not cfg.train:
        raise DataError("data.train: no training data given; set it to a file or a hub dataset name")
    train_rows = read_rows(cfg.train, cfg.train_split)
    expand = task.expand_rows or (lambda rows: rows)
    rng = random.Random(seed)
    if cfg.eval:
        train_rows = expand(train_rows)
        check_columns(train_rows, task)
        eval_rows = expand(read_rows(cfg.eval, cfg.eval_split or "validation"))
        check_columns(eval_rows, task)
        rng.shuffle(train_rows)
    else:
        # Split records before expanding them: all of a record's examples stay on one side.
        check_columns(expand(train_rows), task)
        if len(train_rows) < 2:
            raise DataError(f"{cfg.train}: need at least 2 rows to split off an eval set")
        rng.shuffle(train_rows)
        n_eval = max(1, round(len(train_rows) * cfg.eval_fraction))
        eval_rows, train_rows = expand(train_rows[:n_eval]), expand(train_rows[n_eval:])
        if task.expand_rows:
            rng.shuffle(train_rows)
    if cfg.max_train_rows:
        train_rows = train_rows[: cfg.max_train_rows]
    if cfg.max_eval_rows:
        eval_rows = eval_rows[: cfg.max_eval_rows]
    return train_rows, eval_rows


# ---------------------------------------------------------------- prompts and tokens


def render_prompt(tokenizer: Any, prompt: Prompt, *, use_chat_template: bool, system_prompt: str | None) -> str:
    """The exact text the model sees before its answer.

    Chat models get the prompt as a user turn through their own chat template, with the
    generation prompt appended, because that is the format they were instruction-tuned on.
    """
    if use_chat_template:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        if system_prompt is not None and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": system_prompt}] + messages
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt) + "\nassistant: "


def wants_chat_template(tokenizer: Any, model_type: str, setting: bool | None) -> bool:
    if setting is not None:
        return setting
    return model_type == "causal" and bool(getattr(tokenizer, "chat_template", None))


@dataclass
class LengthStats:
    rows: int = 0
    truncated: int = 0
    dropped: int = 0
    source_tokens: list[int] = field(default_factory=list)
    target_tokens: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        def summary(values: list[int]) -> dict[str, float]:
            if not values:
                return {}
            arr = np.asarray(values)
            return {
                "min": int(arr.min()),
                "mean": round(float(arr.mean()), 1),
                "p50": float(np.percentile(arr, 50)),
                "p95": float(np.percentile(arr, 95)),
                "p99.9": float(np.percentile(arr, 99.9)),
                "max": int(arr.max()),
            }

        return {
            "rows": self.rows,
            "truncated": self.truncated,
            "dropped": self.dropped,
            "source_tokens": summary(self.source_tokens),
            "target_tokens": summary(self.target_tokens),
        }


def _truncate_text(tokenizer: Any, text: str, limit: int) -> tuple[str, bool]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= limit:
        return text, False
    return tokenizer.decode(ids[:limit]), True


def cut_prompt(tokenizer: Any, prompt: Prompt, limit: int) -> tuple[Prompt, bool]:
    # The limit applies to the task's prompt text (as the original's truncation=True did);
    # chat-template tokens come on top, so the template itself is never cut in half.
    if isinstance(prompt, str):
        return _truncate_text(tokenizer, prompt, limit)
    cut_any = False
    out = []
    for message in prompt:
        content, cut = _truncate_text(tokenizer, message["content"], limit)
        cut_any |= cut
        out.append({"role": message["role"], "content": content})
    return out, cut_any


def encode_prompt(tokenizer: Any, prompt_text: str) -> list[int]:
    """Prompt ids exactly as training and generation both see them. Chat templates carry their
    own special tokens; plain prompts get whatever the tokenizer adds (e.g. BOS)."""
    bos = tokenizer.bos_token
    add_special = not (bos and prompt_text.startswith(bos))
    return tokenizer(prompt_text, add_special_tokens=add_special)["input_ids"]


def encode_example(
    tokenizer: Any, model_type: str, prompt_text: str, target: str, max_target_tokens: int
) -> tuple[dict[str, list[int]], bool]:
    """Token ids for one (rendered prompt, target) pair; returns (features, target_truncated)."""
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    cut = len(target_ids) > max_target_tokens
    target_ids = target_ids[:max_target_tokens] + [tokenizer.eos_token_id]
    if model_type == "seq2seq":
        source_ids = tokenizer(prompt_text)["input_ids"]
        return {"input_ids": source_ids, "attention_mask": [1] * len(source_ids), "labels": target_ids}, cut
    prompt_ids = encode_prompt(tokenizer, prompt_text)
    input_ids = prompt_ids + target_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + target_ids
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}, cut


def tokenize_rows(
    rows: list[dict[str, Any]],
    task: Task,
    tokenizer: Any,
    model_type: str,
    cfg: DataSettings,
) -> tuple[list[dict[str, list[int]]], LengthStats]:
    """Render, measure, truncate or drop, and tokenize rows. Returns features and length stats."""
    use_template = wants_chat_template(tokenizer, model_type, cfg.use_chat_template)
    stats = LengthStats(rows=len(rows))
    prepared = []
    for row in rows:
        prompt = task.prompt(row)
        target = task.target(row)
        text_ids = tokenizer(prompt if isinstance(prompt, str) else " ".join(m["content"] for m in prompt),
                             add_special_tokens=False)["input_ids"]
        target_len = len(tokenizer(target, add_special_tokens=False)["input_ids"])
        stats.source_tokens.append(len(text_ids))
        stats.target_tokens.append(target_len)
        prepared.append((prompt, target, len(text_ids), target_len))

    cutoff = None
    if cfg.drop_percentile is not None and prepared:
        cutoff = float(np.percentile([s + t for _, _, s, t in prepared], cfg.drop_percentile))
    features = []
    for prompt, target, source_len, target_len in prepared:
        over = source_len > cfg.max_source_tokens or target_len > cfg.max_target_tokens
        if (cutoff is not None and source_len + target_len > cutoff) or (over and cfg.length_policy == "drop"):
            stats.dropped += 1
            continue
        prompt, cut_source = cut_prompt(tokenizer, prompt, cfg.max_source_tokens)
        text = render_prompt(tokenizer, prompt, use_chat_template=use_template, system_prompt=cfg.system_prompt)
        example, cut_target = encode_example(tokenizer, model_type, text, target, cfg.max_target_tokens)
        stats.truncated += int(cut_source or cut_target)
        features.append(example)
    return features, stats


def eval_prompts(rows: list[dict[str, Any]], task: Task, tokenizer: Any, model_type: str, cfg: DataSettings) -> list[str]:
    """Rendered prompts for generation: the same text training put before the answer."""
    use_template = wants_chat_template(tokenizer, model_type, cfg.use_chat_template)
    prompts = []
    for row in rows:
        prompt, _ = cut_prompt(tokenizer, task.prompt(row), cfg.max_source_tokens)
        prompts.append(render_prompt(tokenizer, prompt, use_chat_template=use_template, system_prompt=cfg.system_prompt))
    return prompts


# ---------------------------------------------------------------- batches

CPU_PAD_MULTIPLE = 32


def pad_multiple(setting: int | str, device: str, precision: str) -> int | None:
    """`train.pad_to_multiple_of` resolved: what the collator rounds each batch's width up to.

    `auto` rounds to 32 on CPU under bf16 autocast. There every batch width the run has not seen yet
    leaves something behind that slows the steps after it (not pinned down; the suspects: oneDNN's
    bf16 kernels, built and cached per matmul shape, and glibc's heap of every size): in 400-step
    runs of the 15-minute recipe with dynamic padding, useful tokens/s fell from the first 50 steps
    to the last by 12-37%; with widths rounded up to a multiple of 32 (1/32 as many widths, ~16 more
    padded tokens per row: ~9% of a mean row) by 3-8%, and the runs were 1.12-1.44x faster overall.
    On the fp32 path (MKL's matmuls) a rounded run was 0.89x as fast: no rounding there, nor on GPUs
    (not measured).
    docs/benchmarks.md, "long_run.py"; bench/long_run.py.
    """
    if setting == "auto":
        return CPU_PAD_MULTIPLE if device == "cpu" and precision == "bf16" else None
    return None if setting == 1 else int(setting)
