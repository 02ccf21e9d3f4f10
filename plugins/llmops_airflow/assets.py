"""The Airflow Assets that close the loop: what curation and monitoring emit, what retraining waits on.

- :data:`PREFERENCE_DATA`: a new curated preference snapshot. ``feedback_curation`` emits an event
  for each snapshot it writes; the event's extra holds ``uri`` (the snapshot's Parquet file),
  ``content_hash``, ``rows``, ``feedback_rows`` and ``manifest`` (the manifest's URI).
- :data:`RETRAIN_REQUEST`: a monitoring policy asked for retraining; the extra holds ``reasons``
  (the signals that fired), ``model_version`` and ``window``.

``llm_retraining`` is scheduled on either asset or its cron, whichever comes first. Declared here,
once, so producers and the consumer cannot disagree on a name. Importing this module imports only
``airflow.sdk`` (cheap, safe at DAG parse).
"""

from __future__ import annotations

from airflow.sdk import Asset

PREFERENCE_DATA = Asset(name="llmops_preference_data", uri="llmops://preference-data")
RETRAIN_REQUEST = Asset(name="llmops_retrain_request", uri="llmops://retrain-request")


def run_trigger(context) -> dict:
    """Why this DAG run exists, from its context: ``kind`` (``asset``, ``schedule`` or ``manual``),
    ``snapshot`` (the extra of the newest :data:`PREFERENCE_DATA` event that triggered it, or
    ``None``), ``retrain_requests`` (the extras of the :data:`RETRAIN_REQUEST` events) and
    ``summary`` (one line for the log and the model version)."""
    events = context.get("triggering_asset_events") or {}

    def extras(asset: Asset) -> list[dict]:
        try:
            found = list(events[asset])
        except KeyError:
            return []
        return [dict(e.extra or {}) for e in sorted(found, key=lambda e: e.timestamp)]

    snapshots = extras(PREFERENCE_DATA)
    requests = extras(RETRAIN_REQUEST)
    dag_run = context.get("dag_run")
    run_type = str(getattr(getattr(dag_run, "run_type", None), "value", getattr(dag_run, "run_type", "")) or "")
    kind = "asset" if (snapshots or requests) else ("schedule" if run_type == "scheduled" else "manual")
    parts = []
    if snapshots:
        latest = snapshots[-1]
        parts.append(f"new preference snapshot {latest.get('uri', '?')} (content hash "
                     f"{str(latest.get('content_hash', '?'))[:12]}, {latest.get('rows', '?')} rows, "
                     f"{latest.get('feedback_rows', '?')} from feedback)")
    for request in requests:
        reasons = request.get("reasons") or []
        named = ", ".join(str(r.get("signal", r) if isinstance(r, dict) else r) for r in reasons) or "no reason given"
        parts.append(f"retrain request from monitoring of v{request.get('model_version', '?')} "
                     f"(window {request.get('window', '?')}: {named})")
    summary = "; ".join(parts) or ("the retraining schedule" if kind == "schedule" else "a manual trigger")
    return {"kind": kind, "snapshot": snapshots[-1] if snapshots else None, "retrain_requests": requests,
            "summary": summary}
