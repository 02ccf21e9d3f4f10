"""The benches' working folder: a fresh temporary one, removed afterwards, or the one ``--keep`` names, kept."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def folder(keep: str, prefix: str) -> Iterator[str]:
    """``keep`` (created if missing, left in place), else a new temporary folder removed at the end
    (a store of a million traces is gigabytes)."""
    path = keep or tempfile.mkdtemp(prefix=prefix)
    os.makedirs(path, exist_ok=True)
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)
