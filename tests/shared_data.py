"""The real data sets in ../shared/data (beside the clone; CI has them): a missing file fails under
CI=true and skips elsewhere, so a clone without shared/ still runs the rest of the suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_file(relative: str, what: str) -> Path:
    """`../shared/data/<relative>`, or a failure (under CI) / skip naming the file and what it is."""
    path = SHARED_DATA / relative
    if not path.is_file():
        message = f"{path}: {what} is missing"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path
