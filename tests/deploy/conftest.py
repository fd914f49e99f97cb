from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short private directory: UNIX socket paths must fit in 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="fg-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
