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
