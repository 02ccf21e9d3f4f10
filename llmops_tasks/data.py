"""Reading and writing the data sets the pipeline moves around (JSONL and Parquet, via fsspec).

Readers never crash deep inside a library on bad input: a malformed file raises
:class:`DataError` naming the file and, where it applies, the line.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from collections.abc import Iterable, Iterator
from typing import Any

import fsspec

# The columns each kind of data set must carry (DESIGN.md, "Data contracts").
REQUIRED_COLUMNS = {
    "preference": ("prompt", "chosen", "rejected"),
    "sft": ("prompt", "completion"),
    "eval": ("prompt", "reference"),
}
KINDS = tuple(REQUIRED_COLUMNS)


class DataError(ValueError):
    """A data file cannot be read as the expected kind of data set."""


def _format(uri: str) -> str:
    lowered = uri.lower()
    if lowered.endswith((".parquet", ".pq")):
        return "parquet"
    if lowered.endswith((".jsonl", ".json", ".ndjson", ".jsonl.gz")):
        return "jsonl"
    raise DataError(f"{uri}: unsupported file type; expected .jsonl or .parquet")


def exists(uri: str) -> bool:
    fs, path = fsspec.core.url_to_fs(uri)
    return fs.exists(path)


def iter_records(uri: str) -> Iterator[dict[str, Any]]:
    """Yield rows as dicts; each JSONL row gets its line number under ``_line``."""
    if not exists(uri):
        raise DataError(f"{uri}: file not found")
    fmt = _format(uri)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            with fsspec.open(uri, "rb") as handle:
                parquet = pq.ParquetFile(handle)
                line = 0
                for batch in parquet.iter_batches(batch_size=10_000):
                    for row in batch.to_pylist():
                        line += 1
                        row["_line"] = line
                        yield row
        except DataError:
            raise
        except Exception as exc:  # pyarrow raises many types for a corrupt file
            raise DataError(f"{uri}: not a readable Parquet file ({exc})") from exc
        return
    compression = "gzip" if uri.endswith(".gz") else None
    with fsspec.open(uri, "rb", compression=compression) as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{uri}: line {number} is not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(f"{uri}: line {number} is not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise DataError(f"{uri}: line {number} is a JSON {type(row).__name__}, expected an object")
            row["_line"] = number
            yield row


def read_records(uri: str) -> list[dict[str, Any]]:
    return list(iter_records(uri))


def iter_chunks(uri: str, rows: int = 50_000) -> Iterator[list[dict[str, Any]]]:
    """Rows in lists of at most ``rows``: a data set of any size is checked in bounded memory.

    The same readers as :func:`iter_records` (Parquet is read in record batches), so a broken
    line raises :class:`DataError` when its chunk is reached, after the earlier chunks.
    """
    if rows < 1:
        raise ValueError(f"rows: expected 1 or more, got {rows}")
    chunk: list[dict[str, Any]] = []
    for record in iter_records(uri):
        chunk.append(record)
        if len(chunk) >= rows:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def write_jsonl(uri: str, rows: Iterable[dict[str, Any]]) -> int:
    """Write atomically: a reader never sees a half-written file."""
    fs, path = fsspec.core.url_to_fs(uri)
    fs.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    count = 0
    try:
        with fs.open(tmp, "w", encoding="utf-8") as handle:
            for row in rows:
                clean = {k: v for k, v in row.items() if not k.startswith("_")}
                handle.write(json.dumps(clean, ensure_ascii=False, sort_keys=True) + "\n")
                count += 1
        fs.mv(tmp, path)
    finally:
        if fs.exists(tmp):
            fs.rm(tmp)
    return count


def write_json(uri: str, payload: Any) -> None:
    fs, path = fsspec.core.url_to_fs(uri)
    fs.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with fs.open(tmp, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True, default=str)
        handle.write("\n")
    fs.mv(tmp, path)


def read_json(uri: str) -> Any:
    with fsspec.open(uri, "r", encoding="utf-8") as handle:
        return json.load(handle)


def content_hash(uri: str) -> str:
    """sha256 of the file bytes: the dataset snapshot id recorded as lineage."""
    digest = hashlib.sha256()
    with fsspec.open(uri, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def local_path(uri: str) -> Path:
    """Training libraries want local files; remote URIs are cached locally first."""
    if "://" not in uri or uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    return Path(fsspec.open_local(f"simplecache::{uri}"))
