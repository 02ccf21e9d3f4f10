"""Reading and writing the data sets the pipeline moves around (JSONL and Parquet, via fsspec).

Readers never crash deep inside a library on bad input: a malformed file raises
:class:`DataError` naming the file and, where it applies, the line.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import fsspec

from llmops_tasks.core.io import atomic_write

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


def _parse_line(uri: str, number: int, raw: bytes) -> dict[str, Any] | None:
    """One JSONL line as a record (None for a blank line), or a :class:`DataError` naming the line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{uri}: line {number} is not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
    if not text.strip():
        return None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{uri}: line {number} is not valid JSON ({exc.msg})") from exc
    except RecursionError as exc:
        raise DataError(f"{uri}: line {number} is not valid JSON (nested too deeply to read)") from exc
    if not isinstance(row, dict):
        raise DataError(f"{uri}: line {number} is a JSON {type(row).__name__}, expected an object")
    row["_line"] = number
    return row


def _parquet_error(uri: str, exc: Exception) -> DataError:
    return DataError(f"{uri}: not a readable Parquet file ({exc})")


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
            raise _parquet_error(uri, exc) from exc
        return
    compression = "gzip" if uri.endswith(".gz") else None
    with fsspec.open(uri, "rb", compression=compression) as handle:
        for number, raw in enumerate(handle, start=1):
            row = _parse_line(uri, number, raw)
            if row is not None:
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


# --- column-wise chunks ------------------------------------------------------------------------


class Chunk:
    """Up to ``rows`` records of a data set, column-wise where the file allows it.

    ``table`` is a pyarrow Table when the rows were read by Arrow (Parquet, or JSONL lines that
    Arrow parses exactly as :func:`json.loads` would); its columns give whole-chunk arrays to
    vectorized code. ``records`` are the rows as :func:`iter_records` yields them (each with
    ``_line``): given for JSONL lines Arrow could not take, made on first use otherwise. ``lines``
    are the rows' line numbers (JSONL) or row numbers (Parquet), from 1.
    """

    def __init__(self, lines: list[int], table: Any = None, raw: Sequence[bytes] | None = None,
                 records: list[dict[str, Any]] | None = None) -> None:
        self.lines = lines
        self.table = table
        self._raw = raw
        self._records = records

    @classmethod
    def from_records(cls, records: list[dict[str, Any]]) -> Chunk:
        return cls([r.get("_line", i + 1) for i, r in enumerate(records)], records=records)

    def __len__(self) -> int:
        return len(self.lines)

    @property
    def columns(self) -> set[str]:
        """Keys present in any row, without the reader's own (``_line``)."""
        if self.table is not None:
            return {name for name in self.table.column_names if not name.startswith("_")}
        return {key for record in self.records for key in record if not key.startswith("_")}

    def column(self, name: str) -> Any:
        """The Arrow array of column ``name`` (None when the chunk is not column-wise or lacks it)."""
        if self.table is None or name not in self.table.column_names:
            return None
        return self.table.column(name).combine_chunks()

    def compact(self) -> None:
        """Drop the Arrow table where the raw lines can give :meth:`record` (after column-wise use)."""
        if self._raw is not None:
            self.table = None

    @property
    def records(self) -> list[dict[str, Any]]:
        if self._records is None:
            self._records = [self.record(i) for i in range(len(self))]
        return self._records

    def record(self, i: int) -> dict[str, Any]:
        """Row ``i`` exactly as :func:`iter_records` gives it."""
        if self._records is not None:
            return self._records[i]
        if self._raw is not None:
            row = json.loads(self._raw[i])
        else:
            row = self.table.slice(i, 1).to_pylist()[0]
        row["_line"] = self.lines[i]
        return row


_ARROW_BLOCK = 1 << 22  # Arrow parses blocks of this size in parallel; a longer row gets one block


def _arrow_table(block: bytes, count: int) -> Any:
    """The rows of ``block`` (``count`` non-blank JSONL lines) as an Arrow table, or None where
    Arrow could read them differently from :func:`json.loads` (the caller then parses line by line)."""
    import numpy as np
    import pyarrow.json as pj

    # Control bytes other than JSON whitespace: json.loads rejects them; leave them to it.
    content = np.frombuffer(block, dtype=np.uint8)
    control = content[np.flatnonzero(content < 32)]
    if not np.isin(control, (9, 10, 13)).all():
        return None
    if not block.isascii():
        try:
            block.decode("utf-8")
        except UnicodeDecodeError:
            return None
    table = None
    for size in (_ARROW_BLOCK, len(block) + 1) if len(block) > _ARROW_BLOCK else (_ARROW_BLOCK,):
        try:
            table = pj.read_json(io.BytesIO(block), read_options=pj.ReadOptions(block_size=size))
        except Exception:  # noqa: BLE001, S112 (ArrowInvalid and kin: the exact reader names the line)
            continue
        break
    if table is None:
        return None
    # Two values on one line read as two rows in Arrow and as an error in json.loads.
    return table if table.num_rows == count else None


# str.strip()'s whitespace that is ASCII: a line of only these (or of other Unicode spaces) is blank.
_ASCII_SPACE = b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"
# Lines longer than this are looked at for nesting: json.loads gives up near Python's recursion
# limit, and pyarrow crashes the process on a line nested some 20,000 levels deep.
_NESTING_LIMIT = 512


def _is_blank(raw: bytes) -> bool:
    """Blank as :func:`_parse_line` decides it (``str.strip()`` of the decoded line is empty)."""
    if raw[:1] == b"{":  # the usual line: one look
        return False
    rest = raw.strip(_ASCII_SPACE)
    if not rest:
        return True
    if rest.isascii():
        return False
    try:
        return not rest.decode("utf-8").strip()
    except UnicodeDecodeError:
        return False  # not blank: _parse_line names the bad bytes


def _shallow(lines: list[bytes]) -> bool:
    """No line could nest deeper than :data:`_NESTING_LIMIT` (brackets counted on the long ones)."""
    return all(len(line) <= _NESTING_LIMIT or line.count(b"[") + line.count(b"{") <= _NESTING_LIMIT
               for line in lines)


def _objects_only(lines: list[bytes]) -> bool:
    """Every line is one ``{...}`` (Arrow crashes or reads nulls on a top-level scalar line)."""
    if all(line[:1] == b"{" and line[-2:] == b"}\n" for line in lines[:-1]):  # the usual layout: a quick look
        last = lines[-1].rstrip(b"\n")
        if last[:1] == b"{" and last[-1:] == b"}":
            return True
    return all(line.strip()[:1] == b"{" and line.strip()[-1:] == b"}" for line in lines)


class _Lines:
    """The lines of one block of JSONL bytes, cut on demand (a list of a million ``bytes`` costs
    more than the bytes): ``lines[i]`` is line ``i`` with its newline, as file iteration gives it."""

    def __init__(self, block: bytes, bounds: Any) -> None:
        self.block, self.bounds = block, bounds

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def __getitem__(self, i: int) -> bytes:
        return self.block[self.bounds[i]:self.bounds[i + 1]]


_READ_BYTES = 1 << 24


def _usual_block(block: bytes) -> Any:
    """Line bounds of ``block`` when every line is one ``{...}`` object that cannot nest past
    :data:`_NESTING_LIMIT` (so none is blank): what :func:`_objects_only` and :func:`_shallow` accept
    in their quick look, decided on all the bytes at once. None otherwise (the caller reads line by line)."""
    import numpy as np

    content = np.frombuffer(block, dtype=np.uint8)
    ends = np.flatnonzero(content == 10) + 1
    if not len(ends) or ends[-1] != len(content):
        ends = np.append(ends, len(content))  # a last line without a newline
    bounds = np.concatenate([[0], ends])
    starts, stops = bounds[:-1], bounds[1:]
    closing = stops - 1 - (content[stops - 1] == 10)
    if not ((content[starts] == 123).all() and (stops > starts + 1).all() and (content[closing] == 125).all()):
        return None
    long = np.flatnonzero(stops - starts > _NESTING_LIMIT)
    if len(long):
        openers = np.flatnonzero((content == 91) | (content == 123))
        nested = np.searchsorted(openers, stops[long]) - np.searchsorted(openers, starts[long])
        if (nested > _NESTING_LIMIT).any():
            return None
    return bounds


def _jsonl_chunks(uri: str, rows: int) -> Iterator[Chunk]:
    """Chunks of ``rows`` lines, read in large blocks while every line is the usual ``{...}``
    object (cut on the bytes, Arrow-parsed); from the first chunk that is not, line by line as
    :func:`iter_records` reads, to the end of the file (same chunks, line numbers and errors)."""
    compression = "gzip" if uri.endswith(".gz") else None
    number = 0
    with fsspec.open(uri, "rb", compression=compression) as handle:
        rest = b""
        while True:
            pieces, held, eof = [rest], rest.count(b"\n"), False
            while held < rows:
                piece = handle.read(_READ_BYTES)
                if not piece:
                    eof = True
                    break
                pieces.append(piece)
                held += piece.count(b"\n")
            buffer = b"".join(pieces)
            del pieces
            if not buffer:
                return
            if eof and held < rows:
                block, rest = buffer, b""
            else:
                import numpy as np

                cut = int(np.flatnonzero(np.frombuffer(buffer, dtype=np.uint8) == 10)[rows - 1]) + 1
                block, rest = buffer[:cut], buffer[cut:]
            del buffer
            bounds = _usual_block(block)
            table = _arrow_table(block, len(bounds) - 1) if bounds is not None else None
            if table is None:  # blank lines, other layouts, what Arrow reads differently: line by line
                yield from _jsonl_line_chunks(uri, rows, itertools.chain(io.BytesIO(block + rest), handle), number)
                return
            count = len(bounds) - 1
            yield Chunk(list(range(number + 1, number + count + 1)), table=table, raw=_Lines(block, bounds))
            number += count
            if eof and not rest:
                return


def _jsonl_line_chunks(uri: str, rows: int, handle: Iterator[bytes], number: int) -> Iterator[Chunk]:
    """:func:`_jsonl_chunks` line by line from ``handle`` (lines after line ``number``)."""
    while True:
        lines: list[bytes] = []
        numbers: list[int] = []
        while len(lines) < rows:
            batch = list(itertools.islice(handle, rows - len(lines)))
            if not batch:
                break
            for raw in batch:
                number += 1
                if not _is_blank(raw):
                    lines.append(raw)
                    numbers.append(number)
        if not lines:
            return
        block = b"".join(lines)
        arrow_reads_it = _objects_only(lines) and _shallow(lines)
        table = _arrow_table(block, len(lines)) if arrow_reads_it else None
        del block
        if table is not None:
            yield Chunk(numbers, table=table, raw=lines)
            continue
        # Line by line, as iter_records reads: exact values and the exact error for a bad line.
        records = [row for n, raw in zip(numbers, lines) if (row := _parse_line(uri, n, raw)) is not None]
        if records:
            yield Chunk([r["_line"] for r in records], records=records)


def _parquet_chunks(uri: str, rows: int) -> Iterator[Chunk]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with fsspec.open(uri, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            pending: list[Any] = []
            held = 0
            done = 0
            for batch in parquet.iter_batches(batch_size=min(rows, 65_536)):
                pending.append(batch)
                held += batch.num_rows
                while held >= rows:
                    table = pa.Table.from_batches(pending)
                    yield Chunk(list(range(done + 1, done + rows + 1)), table=table.slice(0, rows))
                    done += rows
                    rest = table.slice(rows)
                    pending, held = rest.to_batches(), rest.num_rows
            if held:
                table = pa.Table.from_batches(pending)
                yield Chunk(list(range(done + 1, done + held + 1)), table=table)
    except DataError:
        raise
    except Exception as exc:  # pyarrow raises many types for a corrupt file
        raise _parquet_error(uri, exc) from exc


def iter_table_chunks(uri: str, rows: int = 50_000) -> Iterator[Chunk]:
    """The rows of :func:`iter_chunks` as :class:`Chunk` objects, column-wise where Arrow reads them
    exactly: the same chunk boundaries, row numbers and :class:`DataError` messages."""
    if rows < 1:
        raise ValueError(f"rows: expected 1 or more, got {rows}")
    if not exists(uri):
        raise DataError(f"{uri}: file not found")
    if _format(uri) == "parquet":
        yield from _parquet_chunks(uri, rows)
    else:
        yield from _jsonl_chunks(uri, rows)


# DataError message -> the rule a report names for a file that cannot be read.
_LOAD_RULES = (
    ("file not found", "file_exists"),
    ("unsupported file type", "file_type"),
    ("not valid UTF-8", "utf8"),
    ("not valid JSON", "json_lines"),
    ("expected an object", "json_objects"),
    ("Parquet", "parquet_readable"),
)


def load_rule(message: str) -> str:
    """The rule a :class:`DataError` breaks (file_exists, json_lines, ...), from its message."""
    return next((rule for needle, rule in _LOAD_RULES if needle in message), "readable")


def read_chunks(uri: str, rows: int, ahead: int = 1):
    """:class:`Chunk` objects (column-wise where Arrow reads the file exactly), or a
    :class:`DataError`; a reader's own crash is reported the same way. ``ahead`` chunks are read
    and parsed in a background thread while the caller works on the current one (0: none)."""
    chunks = prefetch(iter_table_chunks(uri, rows), ahead) if ahead > 0 else iter_table_chunks(uri, rows)
    try:
        yield from chunks
    except DataError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{uri}: cannot be read ({type(exc).__name__}: {exc})") from exc
    finally:
        chunks.close()


_DONE = object()


def prefetch(items: Iterator[Any], ahead: int = 1) -> Iterator[Any]:
    """``items``, each produced by a background thread up to ``ahead`` items before it is taken.

    Reading and parsing a chunk (file reads, Arrow's parser, numpy on its bytes) mostly runs
    without the GIL, so it overlaps with the caller's work on the previous chunk. What ``items``
    raises is raised here, at the same position; closing this generator early (the caller stopped
    or raised) stops the thread and closes ``items`` there.
    """
    import queue
    import threading

    handoff: queue.Queue = queue.Queue(maxsize=max(1, ahead))
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((_DONE, None))
        except BaseException as exc:  # noqa: BLE001 (handed to the consumer, which raises it)
            put((_DONE, exc))
        finally:
            items.close()

    worker = threading.Thread(target=produce, name="llmops-read-ahead", daemon=True)
    worker.start()
    try:
        while True:
            item, error = handoff.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        worker.join()


def write_jsonl(uri: str, rows: Iterable[dict[str, Any]]) -> int:
    """Write atomically: a reader never sees a half-written file. Keys starting with ``_`` (the
    reader's ``_line``) are left out."""
    count = 0
    with atomic_write(uri) as handle:
        for row in rows:
            clean = {k: v for k, v in row.items() if not k.startswith("_")}
            handle.write(json.dumps(clean, ensure_ascii=False, sort_keys=True) + "\n")
            count += 1
    return count


def write_json(uri: str, payload: Any) -> None:
    """Pretty, sorted JSON, written atomically."""
    with atomic_write(uri) as handle:
        json.dump(payload, handle, indent=2, sort_keys=True, default=str)
        handle.write("\n")


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
