"""Where snapshots live: ``{snapshot_root}/v0001-<hash12>/`` with ``data.parquet`` (preference pairs),
``kto.parquet``, ``sft.parquet``, ``traces.txt``, ``manifest.json``, ``report.html``, ``validation/``.

A snapshot is built in a temporary folder next to the others (``.tmp-...``) and renamed into place
only once it validated and is complete, so a reader lists only whole snapshots and a failed run
leaves nothing. The latest is the highest version number holding a manifest. ``cursor.json`` at
the root is where the last run that found nothing new stopped reading, so the next run does not
read the same traces again; the watermark of a snapshot is in its manifest. Local folders only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

from llmops_tasks.core import data, settings

SNAPSHOT = re.compile(r"^v(\d{4,})-([0-9a-f]{12})$")
CURSOR = "cursor.json"


def snapshots(root: str) -> list[Path]:
    """Complete snapshots, oldest first."""
    folder = Path(root)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir()
             if (m := SNAPSHOT.match(p.name)) and (p / "manifest.json").is_file()]
    return [p for _, p in sorted(found)]


def latest(root: str) -> tuple[Path | None, dict[str, Any] | None]:
    """(folder, manifest) of the newest snapshot, or (None, None)."""
    found = snapshots(root)
    if not found:
        return None, None
    return found[-1], data.read_json(str(found[-1] / "manifest.json"))


def default_root() -> str:
    """``{artifact_root}/datasets/preference``: where ``llmops curate`` keeps snapshots unless told otherwise."""
    return f"{settings.artifact_root().rstrip('/')}/datasets/preference"


def as_event(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """A snapshot described as the extra of its asset event (uri, content_hash, rows, feedback_rows, manifest)."""
    counts = manifest.get("counts") or {}
    return {"uri": str(folder / (manifest.get("files") or {}).get("preference", "data.parquet")),
            "content_hash": manifest.get("content_hash", ""), "rows": counts.get("rows"),
            "feedback_rows": counts.get("feedback_rows"), "manifest": str(folder / "manifest.json")}


def training_snapshot(triggering: dict[str, Any] | None, root: str | None = None) -> tuple[dict[str, Any], str]:
    """The snapshot a retraining trains on, and why: the one whose asset event started the run,
    else the newest complete one under ``root`` (a cron run or a monitoring retrain request learns
    from the feedback curated so far, not only from the base data set); ``({}, "")`` when there is none."""
    if triggering:
        return triggering, "the snapshot whose event started this run"
    folder, manifest = latest(root or default_root())
    if folder is None:
        return {}, ""
    return as_event(folder, manifest or {}), f"the newest snapshot {folder.name} (no new snapshot started this run)"


def read_cursor(root: str) -> dict[str, Any] | None:
    path = Path(root) / CURSOR
    return data.read_json(str(path)) if path.is_file() else None


def write_cursor(root: str, watermark: dict[str, Any]) -> None:
    Path(root).mkdir(parents=True, exist_ok=True)
    data.write_json(str(Path(root) / CURSOR), watermark)


def clear_cursor(root: str) -> None:
    (Path(root) / CURSOR).unlink(missing_ok=True)


def staging(root: str) -> Path:
    """A fresh temporary folder inside ``root`` (same file system: the final rename is atomic)."""
    path = Path(root) / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    return path


def discard(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def publish(tmp: Path, root: str, version: int, content_hash: str) -> Path:
    """Rename the complete temporary folder to its version name; refuses to replace one."""
    final = Path(root) / f"v{version:04d}-{content_hash[:12]}"
    if final.exists():
        raise FileExistsError(f"snapshot {final} already exists")
    os.replace(tmp, final)
    return final


def write_parquet(frame, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False)
    pq.write_table(table, str(path))


def read_parquet(path: Path):
    import pandas as pd

    return pd.read_parquet(path) if path.is_file() else None


def dump(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
