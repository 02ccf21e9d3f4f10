"""Writing files so that a reader never sees half of one: the one atomic write every step uses.

A file is written under a temporary name next to its target (``{name}.tmp-{pid}``) and moved into
place only when it is complete; on an error, or when the writer decides not to keep it, the
temporary file is removed. Any fsspec URI works (local paths, ``s3://``, ``gs://``, ...); the move
is atomic where the file system's rename is.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import IO, Any


class AtomicFile:
    """A file opened under a temporary name: :meth:`commit` moves it into place, :meth:`discard`
    removes it (and any earlier file at the target: a failed run leaves nothing behind)."""

    def __init__(self, uri: str, mode: str = "w", **open_kwargs: Any) -> None:
        import fsspec

        self.uri = uri
        self.fs, self.path = fsspec.core.url_to_fs(uri)
        self.tmp = f"{self.path}.tmp-{os.getpid()}"
        self.mode = mode
        self.open_kwargs = {"encoding": "utf-8", **open_kwargs} if "b" not in mode else open_kwargs
        self.handle: IO[Any] | None = None

    def open(self) -> IO[Any]:
        self.fs.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        self.handle = self.fs.open(self.tmp, self.mode, **self.open_kwargs)
        return self.handle

    def _close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def commit(self) -> str:
        self._close()
        self.fs.mv(self.tmp, self.path)
        return self.uri

    def discard(self, *, remove_target: bool = False) -> None:
        self._close()
        for stale in (self.tmp, self.path) if remove_target else (self.tmp,):
            if self.fs.exists(stale):
                self.fs.rm(stale)


@contextlib.contextmanager
def atomic_write(uri: str, mode: str = "w", **open_kwargs: Any) -> Iterator[IO[Any]]:
    """``with atomic_write(uri) as handle:``: the file appears at ``uri`` only if the block succeeds."""
    target = AtomicFile(uri, mode, **open_kwargs)
    handle = target.open()
    try:
        yield handle
    except BaseException:
        target.discard()
        raise
    target.commit()


def write_text(uri: str, text: str) -> str:
    """Write ``text`` (UTF-8) atomically; returns ``uri``."""
    with atomic_write(uri) as handle:
        handle.write(text)
    return uri
