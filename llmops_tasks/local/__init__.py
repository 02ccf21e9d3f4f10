"""The embedded mode on one machine: sample data, the tiny local base model, the ``llmops env``
exports, ``llmops demo`` and ``llmops up`` (Airflow and MLflow as local services).

Nothing under ``core`` or a step imports this package; the DAG's ``resolve_inputs`` and the CLI do.
"""
