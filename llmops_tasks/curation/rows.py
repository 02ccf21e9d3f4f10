"""The rows of a snapshot: their columns, PII rules, content keys, retention, one text form.

Columns: preference ``id, prompt, chosen, rejected, source, created_at, trace_ids`` (TRL's
preference format plus lineage); KTO ``id, prompt, completion, label, source, created_at,
trace_ids``; SFT ``id, prompt, completion, source, created_at, trace_ids``. ``created_at`` is ISO
8601 UTC (the newest vote the row rests on; a base row keeps its own, or none). ``id`` is the
row's content key (``pref-``/``kto-``/``sft-`` and 16 hex digits of pandas' fixed-key SipHash over
the exact texts, stripped): two rows with the same content have the same id in every run, which
is how rows already in an earlier snapshot are recognised.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

from llmops_tasks.text import pii
from llmops_tasks.text.records import flatten_text

PREFERENCE = ["id", "prompt", "chosen", "rejected", "source", "created_at", "trace_ids"]
KTO = ["id", "prompt", "completion", "label", "source", "created_at", "trace_ids"]
SFT = ["id", "prompt", "completion", "source", "created_at", "trace_ids"]
TEXTS = {"preference": ("prompt", "chosen", "rejected"), "kto": ("prompt", "completion"),
         "sft": ("prompt", "completion")}
COLUMNS = {"preference": PREFERENCE, "kto": KTO, "sft": SFT}
PREFIX = {"preference": "pref", "kto": "kto", "sft": "sft"}


def empty(kind: str):
    import pandas as pd

    return pd.DataFrame({c: pd.Series(dtype=object) for c in COLUMNS[kind]})


def iso(ms) -> Any:
    import pandas as pd

    return pd.to_datetime(ms, unit="ms", utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def finish(mined, prompts, kind: str):
    """A mined frame (prompt by its trace, ``prompt_of``) as snapshot rows of ``kind``."""
    frame = mined.copy()
    frame["prompt"] = frame.pop("prompt_of").map(prompts)
    frame["created_at"] = iso(frame.pop("created_ms").astype("int64")) if len(frame) else []
    frame["id"] = ""
    frame = frame[COLUMNS[kind]] if len(frame) else empty(kind)
    return with_ids(frame, kind)


def _text_column(values) -> list[str]:
    """A text column for keys and scans: strings stripped, message lists as their canonical JSON."""
    return [v.strip() if isinstance(v, str) else json.dumps(v, ensure_ascii=False, sort_keys=True, default=str)
            for v in values.tolist()]


def keys(frame, kind: str):
    """The content key of each row (see the module docstring)."""
    import pandas as pd

    columns = {name: _text_column(frame[name]) for name in TEXTS[kind]}
    if kind == "kto":
        columns["label"] = frame["label"].astype(bool).astype(str).tolist()
    hashed = pd.util.hash_pandas_object(pd.DataFrame(columns), index=False).to_numpy()
    return [f"{PREFIX[kind]}-{h:016x}" for h in hashed.tolist()]


def with_ids(frame, kind: str):
    if len(frame):
        frame = frame.copy()
        frame["id"] = keys(frame, kind)
    return frame


def _redact_text(text: str, kinds: list[str]) -> str:
    for hit in reversed(pii.find(text, kinds)):
        text = f"{text[:hit.start]}[REDACTED {hit.kind}]{text[hit.end:]}"
    return text


def _redact(value: Any, kinds: list[str]) -> Any:
    if isinstance(value, str):
        return _redact_text(value, kinds)
    if isinstance(value, list):
        return [{**m, "content": _redact(m.get("content"), kinds)} if isinstance(m, dict) else m for m in value]
    return value


def apply_pii(frame, kind: str, mode: str, kinds: list[str]) -> tuple[Any, Counter]:
    """Block (drop) or redact the rows holding personal data; (rows, hits by kind). RE2 picks the
    candidate rows of each text column in one pass (``pii.kinds_in_texts``); only those are read in Python."""
    import pandas as pd
    import pyarrow as pa

    hits: Counter = Counter()
    if not len(frame) or not kinds:
        return frame, hits
    flagged: dict[int, set[str]] = {}
    for column in TEXTS[kind]:
        texts = pa.array([v if isinstance(v, str) else flatten_text(v)[0] or "" for v in frame[column].tolist()],
                         type=pa.string())
        for row, found in pii.kinds_in_texts(texts, kinds).items():
            flagged.setdefault(row, set()).update(found)
    for found in flagged.values():
        hits.update(found)
    if not flagged:
        return frame, hits
    rows = sorted(flagged)
    if mode == "block":
        return frame.drop(frame.index[rows]).reset_index(drop=True), hits
    frame = frame.copy()
    for column in TEXTS[kind]:
        values = frame[column].tolist()
        for row in rows:
            values[row] = _redact(values[row], kinds)
        frame[column] = pd.Series(values, dtype=object, index=frame.index)
    return with_ids(frame, kind), hits


def is_conversational(frames) -> bool:
    return any(isinstance(v, list) for frame in frames for v in frame["prompt"]) if frames else False


def as_messages(frame, kind: str):
    """Every text cell as a message list: a text prompt becomes one user turn, an answer one
    assistant turn (Parquet holds one type per column, and TRL wants one form per row). Ids stay."""
    frame = frame.copy()
    for column in TEXTS[kind]:
        role = "user" if column == "prompt" else "assistant"
        frame[column] = [v if isinstance(v, list) else [{"role": role, "content": "" if v is None else str(v)}]
                         for v in frame[column]]
    return frame


def conform(frame, kind: str):
    """A frame read from a base data set or an earlier snapshot, with this kind's columns."""
    import pandas as pd

    frame = frame.copy()
    for column in COLUMNS[kind]:
        if column not in frame.columns:
            frame[column] = pd.Series([None] * len(frame), dtype=object, index=frame.index)
    frame["trace_ids"] = [list(v) if v is not None and not isinstance(v, float) else [] for v in frame["trace_ids"]]
    frame["created_at"] = [None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
                           for v in frame["created_at"]]
    frame["source"] = frame["source"].fillna("base").astype(str)
    for column in TEXTS[kind]:  # Parquet hands lists back as numpy arrays of dicts
        frame[column] = [list(v) if hasattr(v, "tolist") and not isinstance(v, str) else v for v in frame[column]]
    return frame[COLUMNS[kind]].reset_index(drop=True)


def within_retention(frame, cutoff_ms: int | None):
    """Rows kept by the retention window: base rows always, feedback rows created after ``cutoff_ms``."""
    import pandas as pd

    if cutoff_ms is None or not len(frame):
        return frame.assign(_keep=True)["_keep"].to_numpy()
    created = pd.to_datetime(frame["created_at"], utc=True, errors="coerce")
    cutoff = pd.Timestamp(cutoff_ms, unit="ms", tz="UTC")
    return ((frame["source"] == "base") | created.isna() | (created >= cutoff)).to_numpy()
