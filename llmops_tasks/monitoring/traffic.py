"""A window of production traffic as columns: read through :func:`llmops_tasks.serving.traces.search`
(the contract with the server), kept as plain lists and numpy arrays, split by model version.

Feedback comes from each trace's assessments, by the names ``llmops feedback log`` writes:
Feedback ``user_thumbs`` (True = up), ``user_rating`` (1-5), Expectation ``user_correction``;
the latest valid one of each name counts.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

log = logging.getLogger(__name__)
THUMBS = "user_thumbs"
RATING = "user_rating"
CORRECTION = "user_correction"
PROGRESS_EVERY_S = 10.0


@dataclasses.dataclass
class Traffic:
    trace_ids: list[str]
    timestamps_ms: Any  # numpy int64
    prompts: list[Any]
    answers: list[str | None]
    versions: list[str]
    tokens_in: Any  # numpy int64
    tokens_out: Any
    latency_ms: Any  # numpy float64
    error: Any  # numpy bool
    thumbs: Any  # numpy float64: 1 up, 0 down, nan none
    rating: Any  # numpy float64, nan none
    corrected: Any  # numpy bool

    @property
    def n(self) -> int:
        return len(self.trace_ids)

    def take(self, rows) -> Traffic:
        import numpy as np

        rows = np.asarray(rows, dtype=np.int64)
        picked = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            picked[f.name] = value[rows] if isinstance(value, np.ndarray) else [value[i] for i in rows.tolist()]
        return Traffic(**picked)

    def by_version(self) -> dict[str, Traffic]:
        import numpy as np

        versions = np.asarray(self.versions, dtype=object)
        return {str(v): self.take(np.flatnonzero(versions == v)) for v in sorted(set(self.versions), key=_order)}


def _order(version: str) -> tuple[int, str]:
    return (int(version), "") if str(version).isdigit() else (1 << 62, str(version))


def _feedback(assessments) -> tuple[float, float, bool]:
    thumbs = rating = float("nan")
    corrected = False
    latest: dict[str, Any] = {}
    for a in assessments:
        if getattr(a, "valid", None) is False:
            continue
        stamp = getattr(a, "last_update_time_ms", None) or getattr(a, "create_time_ms", None) or 0
        if a.name not in latest or stamp >= latest[a.name][0]:
            latest[a.name] = (stamp, a)
    if THUMBS in latest and latest[THUMBS][1].feedback is not None:
        value = latest[THUMBS][1].feedback.value
        if isinstance(value, bool):
            thumbs = 1.0 if value else 0.0
    if RATING in latest and latest[RATING][1].feedback is not None:
        value = latest[RATING][1].feedback.value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            rating = float(value)
    if CORRECTION in latest:
        expectation = latest[CORRECTION][1].expectation
        corrected = expectation is not None and bool(str(expectation.value or "").strip())
    return thumbs, rating, corrected


def read(experiment_id: str, since_ms: int, until_ms: int, model_name: str = "", page_size: int = 500) -> Traffic:
    """Every production answer of ``[since_ms, until_ms)`` (of ``model_name`` when given), oldest first."""
    import numpy as np

    from llmops_tasks.core.tracking import quote
    from llmops_tasks.serving import traces

    extra = f"tags.`{traces.TAG_MODEL_NAME}` = '{quote(model_name)}'" if model_name else None
    cols: dict[str, list] = {k: [] for k in ("trace_ids", "timestamps_ms", "prompts", "answers", "versions",
                                             "tokens_in", "tokens_out", "latency_ms", "error", "thumbs", "rating",
                                             "corrected")}
    started = last = time.monotonic()
    for answer in traces.search(experiment_id, since_ms=since_ms, until_ms=until_ms, extra_filter=extra,
                                page_size=page_size):
        thumbs, rating, corrected = _feedback(answer.assessments)
        for key, value in (("trace_ids", answer.trace_id), ("timestamps_ms", answer.timestamp_ms),
                           ("prompts", answer.prompt), ("answers", answer.answer),
                           ("versions", answer.model_version or "unknown"), ("tokens_in", answer.tokens_in),
                           ("tokens_out", answer.tokens_out), ("latency_ms", answer.latency_ms),
                           ("error", answer.error), ("thumbs", thumbs), ("rating", rating), ("corrected", corrected)):
            cols[key].append(value)
        now = time.monotonic()
        if now - last >= PROGRESS_EVERY_S:
            done = len(cols["trace_ids"])
            log.info("monitor: read %d traces (%.0f/s)", done, done / (now - started))
            last = now
    n = len(cols["trace_ids"])
    log.info("monitor: read %d traces of the window in %.1f s", n, time.monotonic() - started)
    return Traffic(
        trace_ids=cols["trace_ids"], timestamps_ms=np.asarray(cols["timestamps_ms"], dtype=np.int64),
        prompts=cols["prompts"], answers=cols["answers"], versions=cols["versions"],
        tokens_in=np.asarray(cols["tokens_in"], dtype=np.int64), tokens_out=np.asarray(cols["tokens_out"], dtype=np.int64),
        latency_ms=np.asarray(cols["latency_ms"], dtype=np.float64), error=np.asarray(cols["error"], dtype=bool),
        thumbs=np.asarray(cols["thumbs"], dtype=np.float64), rating=np.asarray(cols["rating"], dtype=np.float64),
        corrected=np.asarray(cols["corrected"], dtype=bool),
    )
