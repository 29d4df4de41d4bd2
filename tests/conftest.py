"""Shared test setup: an offline hub, importable tiny-model builders, and session fixtures.

Environment is set at import, before any test imports transformers or huggingface_hub, whose
offline flag is read once at import time.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))  # so tests can `from tiny_models import ...`

# Tests never touch the Hugging Face hub: it is unreachable here and would cost minutes of retries.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# Keep the user's real cache (default ~/.cache/loratune) so the built-in model is pulled once
# across runs; a test that needs an empty cache monkeypatches LORATUNE_CACHE itself.
os.environ.setdefault("LORATUNE_CACHE", str(Path.home() / ".cache" / "loratune"))

from tiny_models import build_tiny_llama, build_tiny_t5  # noqa: E402


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty LORATUNE_CACHE for this test, so nothing pulled earlier is found."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("LORATUNE_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny T5 (seq2seq) saved once per session; treat it as read-only."""
    return build_tiny_t5(tmp_path_factory.mktemp("tiny-t5"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama (causal, ChatML template) saved once per session; treat it as read-only."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
