"""Recording one piece of feedback on a production trace (``llmops feedback log``)."""

from __future__ import annotations

import dataclasses
import getpass
import logging
import os
import re
from typing import Any, Literal

from llmops_tasks import feedback
from llmops_tasks.core import settings, tracking
from llmops_tasks.core.config import ConfigError, field, require

log = logging.getLogger(__name__)

# An MLflow trace id (``tr-<hex>``, or another backend's form): no spaces or quotes, since it is
# also written into search filters.
_TRACE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:/._-]{2,127}$")
MAX_CORRECTION_CHARS = 20000  # the validate policy's max_chars: a longer correction could never train


def _trace_id(value: str, setting: str) -> str:
    value = (value or "").strip()
    require(not value or bool(_TRACE_ID.match(value)),
            f"{setting}: {value!r} is not a trace id (MLflow trace ids look like tr-0123abcd...)")
    return value


@dataclasses.dataclass
class FeedbackConfig:
    """One piece of feedback on one traced answer: exactly one of thumbs, rating, correction, preferred."""

    trace_id: str = field("", help="the trace of the answer the feedback is about (required)")
    thumbs: Literal["", "up", "down"] = field("", help="thumbs up or down on the answer")
    rating: int = field(0, help="a rating of the answer on the scale rating_min..rating_max; 0 = none")
    correction: str | None = field(None, help="a better answer to the same prompt (text; not blank)")
    preferred: str = field("", help="pairwise: this trace's answer was preferred over the answer of this other "
                                    "trace, to the same prompt")
    by: str = field("", help="who gives the feedback (default: $LLMOPS_ACTOR or the OS user); the assessment's "
                             "source id")
    rationale: str = field("", help="why (optional), kept on the assessment")
    rating_min: int = field(1, help="lowest rating of the scale (at least 1)")
    rating_max: int = field(5, help="highest rating of the scale")

    def __post_init__(self) -> None:
        require(self.rating_min >= 1, f"rating_min: expected 1 or more, got {self.rating_min}")
        require(self.rating_max > self.rating_min,
                f"rating_max: expected more than rating_min ({self.rating_min}), got {self.rating_max}")
        require(self.rating == 0 or self.rating_min <= self.rating <= self.rating_max,
                f"rating: expected {self.rating_min} to {self.rating_max} (0 = none), got {self.rating}")
        if self.correction is not None:
            require(bool(self.correction.strip()), "correction: empty; give the better answer as text")
            require(len(self.correction) <= MAX_CORRECTION_CHARS,
                    f"correction: {len(self.correction)} characters, at most {MAX_CORRECTION_CHARS}")
        self.preferred = _trace_id(self.preferred, "preferred")
        self.trace_id = _trace_id(self.trace_id, "trace_id")
        require(bool(self.trace_id), "trace_id: required; the trace id of the answer (--trace-id ID)")
        require(self.preferred != self.trace_id, "preferred: names the same trace as trace_id; give the other "
                                                 "answer's trace")
        given = [name for name, on in (("thumbs", bool(self.thumbs)), ("rating", self.rating != 0),
                                       ("correction", self.correction is not None),
                                       ("preferred", bool(self.preferred))) if on]
        require(len(given) == 1, "feedback: give exactly one of thumbs, rating, correction, preferred"
                                 + (f"; got {', '.join(given)}" if given else ""))
        self.by = (self.by or os.environ.get("LLMOPS_ACTOR") or getpass.getuser()).strip()

    def assessment(self) -> tuple[str, Any, str]:
        """(name, value, "feedback" | "expectation") of what this config records."""
        if self.thumbs:
            return feedback.THUMBS, self.thumbs == "up", "feedback"
        if self.rating:
            return feedback.RATING, int(self.rating), "feedback"
        if self.preferred:
            return feedback.PREFERRED_OVER, self.preferred, "feedback"
        return feedback.CORRECTION, self.correction, "expectation"


def _get_trace(mlflow_client, trace_id: str, setting: str):
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_trace(trace_id)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
            raise ConfigError(f"{setting}: no trace {trace_id} in the tracking store "
                              f"{_redacted(settings.tracking_uri())}") from None
        raise


def _redacted(uri: str) -> str:
    return re.sub(r"//[^/@]*@", "//", uri)


def _same(value: Any, other: Any) -> bool:
    return type(value) is type(other) and value == other


def log_feedback(config: FeedbackConfig) -> dict:
    """Write the feedback as an assessment on the trace, unless the same one is already there."""
    import mlflow
    from mlflow.entities import AssessmentSource, AssessmentSourceType

    from llmops_tasks.serving.traces import Answer

    mlflow_client = tracking.client()
    trace = _get_trace(mlflow_client, config.trace_id, "trace_id")
    name, value, kind = config.assessment()
    if config.preferred:
        other = _get_trace(mlflow_client, config.preferred, "preferred")
        mine, theirs = Answer.from_trace(trace), Answer.from_trace(other)
        if mine.prompt_key != theirs.prompt_key:
            raise ConfigError(f"preferred: trace {config.preferred} answers another prompt than {config.trace_id}; "
                              "a pairwise preference compares two answers to the same prompt")
    result = {"trace_id": config.trace_id, "name": name, "value": value, "by": config.by, "kind": kind}
    valid = [a for a in (trace.info.assessments or []) if a.name == name and a.valid is not False
             and a.source is not None and a.source.source_id == config.by]
    for existing in valid:
        if _same(existing.value, value):
            log.info("feedback: %s=%r by %s is already on trace %s (%s); nothing written", name, value, config.by,
                     config.trace_id, existing.assessment_id)
            return {**result, "recorded": False, "assessment_id": existing.assessment_id}
    source = AssessmentSource(source_type=AssessmentSourceType.HUMAN, source_id=config.by)
    rationale = config.rationale.strip() or None
    replaced = next((a for a in sorted(valid, key=lambda a: a.create_time_ms or 0, reverse=True)), None)
    if kind == "expectation":
        written = mlflow.log_expectation(trace_id=config.trace_id, name=name, value=value, source=source,
                                         metadata={"rationale": rationale} if rationale else None)
    elif replaced is not None:  # the same person changed their mind: theirs is replaced, not outvoted
        written = mlflow.override_feedback(trace_id=config.trace_id, assessment_id=replaced.assessment_id,
                                           value=value, rationale=rationale, source=source)
    else:
        written = mlflow.log_feedback(trace_id=config.trace_id, name=name, value=value, source=source,
                                      rationale=rationale)
    log.info("feedback: %s=%r by %s on trace %s (%s)%s", name, value, config.by, config.trace_id,
             written.assessment_id, f", overriding {replaced.assessment_id}" if replaced and kind == "feedback" else "")
    return {**result, "recorded": True, "assessment_id": written.assessment_id,
            "overrides": replaced.assessment_id if replaced is not None and kind == "feedback" else None}
