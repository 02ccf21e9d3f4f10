"""Production traffic as MLflow traces: the record every served answer leaves, and how it is read.

One trace per answered prompt, in the deployment's traffic experiment
(``$LLMOPS_TRAFFIC_EXPERIMENT``, default ``<model name>-traffic``). Serving writes them
(:func:`record_answer`); feedback attaches MLflow assessments to them; curation and monitoring
read them back (:func:`search`, :class:`Answer`). This module is the contract between the three:

- root span ``answer`` (span type ``LLM``): inputs ``{"prompt": <text or message list>}``,
  outputs ``{"answer": <text>}``; status ERROR with the exception's message for a failed answer;
- trace tags: ``llmops.kind=production-traffic``, ``llmops.model_name``, ``llmops.model_version``;
- trace metadata (strings): ``llmops.model_uri`` (what the server was asked to serve, e.g.
  ``models:/llmops-chat@production``), ``llmops.prompt_key`` (the prompt's normalized key: the
  same question asked twice has the same key), ``llmops.tokens_in``, ``llmops.tokens_out``,
  ``llmops.latency_ms``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import unicodedata
from collections.abc import Iterator
from typing import Any

from llmops_tasks.core import settings

TRAFFIC_EXPERIMENT_ENV = "LLMOPS_TRAFFIC_EXPERIMENT"
SPAN_NAME = "answer"
KIND = "production-traffic"
TAG_KIND = "llmops.kind"
TAG_MODEL_NAME = "llmops.model_name"
TAG_MODEL_VERSION = "llmops.model_version"
META_MODEL_URI = "llmops.model_uri"
META_PROMPT_KEY = "llmops.prompt_key"
META_TOKENS_IN = "llmops.tokens_in"
META_TOKENS_OUT = "llmops.tokens_out"
META_LATENCY_MS = "llmops.latency_ms"


def traffic_experiment() -> str:
    """The experiment production traces go to: ``$LLMOPS_TRAFFIC_EXPERIMENT``, else ``<model>-traffic``."""
    return os.environ.get(TRAFFIC_EXPERIMENT_ENV, "").strip() or f"{settings.model_name()}-traffic"


def prompt_key(prompt: Any) -> str:
    """A stable key of a prompt: NFKC, case-folded, whitespace collapsed; a conversation by its
    roles and contents. Two users asking the same thing in different spacing or case share it."""
    if isinstance(prompt, list):
        text = json.dumps([[str(m.get("role", "")), _normal(m.get("content", ""))] for m in prompt],
                          ensure_ascii=False)
    else:
        text = _normal(prompt)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _normal(text: Any) -> str:
    return " ".join(unicodedata.normalize("NFKC", str(text)).casefold().split())


def record_answer(
    *, prompt: Any, answer: str | None, model_name: str, model_version: str, model_uri: str,
    tokens_in: int, tokens_out: int, start_ns: int, end_ns: int, experiment_id: str,
    error: str | None = None,
) -> str:
    """Write one answered (or failed) prompt as a trace; returns its trace id."""
    import mlflow
    from mlflow.entities import SpanStatusCode, SpanType

    latency_ms = max(0.0, (end_ns - start_ns) / 1e6)
    span = mlflow.start_span_no_context(
        SPAN_NAME, span_type=SpanType.LLM, inputs={"prompt": prompt}, experiment_id=experiment_id,
        start_time_ns=start_ns,
        attributes={"model_name": model_name, "model_version": str(model_version)},
        tags={TAG_KIND: KIND, TAG_MODEL_NAME: model_name, TAG_MODEL_VERSION: str(model_version)},
        metadata={
            META_MODEL_URI: model_uri, META_PROMPT_KEY: prompt_key(prompt),
            META_TOKENS_IN: str(int(tokens_in)), META_TOKENS_OUT: str(int(tokens_out)),
            META_LATENCY_MS: f"{latency_ms:.3f}",
        },
    )
    if error is not None:
        span.set_status(SpanStatusCode.ERROR)
        span.set_attribute("error", error)
    else:
        span.set_outputs({"answer": answer})
    span.end(end_time_ns=end_ns)
    return span.trace_id


@dataclasses.dataclass(frozen=True)
class Answer:
    """One production answer read back from its trace."""

    trace_id: str
    timestamp_ms: int
    prompt: Any
    answer: str | None
    model_name: str
    model_version: str
    prompt_key: str
    tokens_in: int
    tokens_out: int
    latency_ms: float
    error: bool
    assessments: tuple[Any, ...]  # mlflow.entities.Assessment (feedback and expectations)

    @classmethod
    def from_trace(cls, trace) -> Answer:
        info = trace.info
        meta = info.trace_metadata or {}
        tags = info.tags or {}
        root = next((s for s in trace.data.spans if s.parent_id is None), None) if trace.data else None
        inputs = (root.inputs if root is not None else None) or {}
        outputs = (root.outputs if root is not None else None) or {}
        return cls(
            trace_id=info.trace_id,
            timestamp_ms=int(info.request_time),
            prompt=inputs.get("prompt") if isinstance(inputs, dict) else inputs,
            answer=outputs.get("answer") if isinstance(outputs, dict) else None,
            model_name=tags.get(TAG_MODEL_NAME, ""),
            model_version=tags.get(TAG_MODEL_VERSION, ""),
            prompt_key=meta.get(META_PROMPT_KEY, ""),
            tokens_in=int(meta.get(META_TOKENS_IN, 0) or 0),
            tokens_out=int(meta.get(META_TOKENS_OUT, 0) or 0),
            latency_ms=float(meta.get(META_LATENCY_MS, 0) or 0),
            error=str(getattr(info.state, "value", info.state)) == "ERROR",
            assessments=tuple(info.assessments or ()),
        )


def search(experiment_id: str, *, since_ms: int | None = None, until_ms: int | None = None,
           extra_filter: str | None = None, page_size: int = 1000) -> Iterator[Answer]:
    """The experiment's production answers, oldest first, page by page (never all in memory),
    optionally within ``[since_ms, until_ms)`` of their request time."""
    import mlflow

    client = mlflow.MlflowClient()
    clauses = [f"tags.`{TAG_KIND}` = '{KIND}'"]
    if since_ms is not None:
        clauses.append(f"attributes.timestamp_ms >= {int(since_ms)}")
    if until_ms is not None:
        clauses.append(f"attributes.timestamp_ms < {int(until_ms)}")
    if extra_filter:
        clauses.append(extra_filter)
    token = None
    while True:
        page = client.search_traces(
            locations=[experiment_id], filter_string=" AND ".join(clauses), max_results=page_size,
            order_by=["timestamp_ms ASC"], page_token=token,
        )
        for trace in page:
            yield Answer.from_trace(trace)
        token = page.token
        if not token:
            return
