"""What a production version's traffic is compared with: the prompts it was trained on and its own
evaluation answers, found through its registered lineage.

For version ``v`` of the model:

- training prompts: the ``train_data`` parameter of its training run (version tag
  ``llmops.train_mlflow_run``), read with :func:`llmops_tasks.core.data.read_records`. eda.json
  holds length histograms and the top bigrams but neither the prompts' script nor their
  vocabulary, so the reference is measured from the training file itself;
- evaluation answers: ``evaluation/predictions_candidate.jsonl`` of the ``evaluate`` step run of
  the DAG run that registered it (tags ``llmops.dag_id`` / ``llmops.dag_run_id``), whose prompts
  are also the held-out prompts the vocabulary novelty is calibrated on (they share no prompt
  with training);
- ``reference_data`` / ``reference_predictions`` given to the step win over the lineage.

A reference that cannot be found leaves the signals that need it unmeasured (logged, shown as
"no reference" in the report), never a failed window.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from typing import Any

from llmops_tasks.core import data, settings, tracking
from llmops_tasks.monitoring import profile, signals

log = logging.getLogger(__name__)
PREDICTIONS_ARTIFACT = "evaluation/predictions_candidate.jsonl"
TEMP_PREFIX = "llmops-monitor-ref-"  # the download folder; only such a folder is ever removed
# At most this many training prompts are measured (a uniform sample above it: the tests' power
# does not need more, and a reference is measured once per window).
MAX_REFERENCE_ROWS = 200_000


@dataclasses.dataclass
class Reference:
    sources: dict[str, str]
    prompts: profile.Profile | None = None  # the training prompts
    vocabulary: Any = None  # distinct training words (pyarrow)
    bigrams: Any = None  # distinct training word pairs
    heldout_novel: tuple[int, int] | None = None  # (unseen words, words) of the held-out eval prompts
    answers: signals.AnswerSignals | None = None  # the version's eval answers
    answer_texts: list[str] = dataclasses.field(default_factory=list)


def _version_tags(model_name: str, version: str, client) -> dict[str, str]:
    from mlflow.exceptions import MlflowException

    try:
        return dict(client.get_model_version(model_name, version).tags or {})
    except MlflowException:
        return {}


def _train_data(tags: dict[str, str], client) -> str:
    from mlflow.exceptions import MlflowException

    run_id = tags.get("llmops.train_mlflow_run", "")
    if not run_id:
        return ""
    try:
        return client.get_run(run_id).data.params.get("train_data", "")
    except MlflowException:
        return ""


def _predictions(tags: dict[str, str], client) -> tuple[str, str]:
    """The evaluate run's candidate predictions of the DAG run that registered the version, downloaded."""
    from mlflow.exceptions import MlflowException

    run = tags.get("llmops.dag_run_id", "")
    if not run:
        return "", ""
    experiment = tracking.get_or_create_experiment(settings.experiment_name(), client, create=False)
    if experiment is None:
        return "", ""
    query = (f"tags.`{tracking.TAG_STEP}` = 'evaluate' and tags.`{tracking.TAG_RUN_ID}` = '{tracking.quote(run)}'"
             f" and tags.`{tracking.TAG_DAG_ID}` = '{tracking.quote(tags.get('llmops.dag_id', ''))}'")
    found = client.search_runs([experiment], filter_string=query, max_results=1,
                               order_by=["attributes.start_time DESC"])
    if not found:
        return "", ""
    run_id = found[0].info.run_id
    folder = tempfile.mkdtemp(prefix=TEMP_PREFIX)
    try:
        # MLflow puts the file at <folder>/<its basename> (not under the artifact's own folders).
        return client.download_artifacts(run_id, PREDICTIONS_ARTIFACT, folder), f"runs:/{run_id}/{PREDICTIONS_ARTIFACT}"
    except (MlflowException, OSError):
        shutil.rmtree(folder, ignore_errors=True)
        return "", ""


def _remove_download(path: str) -> None:
    """Remove the temporary folder :func:`_predictions` made for ``path``: the nearest folder above
    it named by :data:`TEMP_PREFIX`, and nothing when there is none."""
    folder = os.path.dirname(os.path.abspath(path))
    while folder != os.path.dirname(folder):
        if os.path.basename(folder).startswith(TEMP_PREFIX):
            shutil.rmtree(folder, ignore_errors=True)
            return
        folder = os.path.dirname(folder)


def _read(uri: str, columns: tuple[str, ...]) -> list[dict[str, Any]]:
    rows = data.read_records(uri)
    if len(rows) > MAX_REFERENCE_ROWS:
        import random

        rows = random.Random(0).sample(rows, MAX_REFERENCE_ROWS)
    return [{c: r.get(c) for c in columns} for r in rows]


def load(model_name: str, version: str, *, reference_data: str = "", reference_predictions: str = "",
         refusal_patterns=signals.DEFAULT_REFUSAL_PATTERNS) -> Reference:
    client = tracking.client()
    tags = _version_tags(model_name, version, client) if version else {}
    train_uri = reference_data or _train_data(tags, client)
    downloaded, artifact = ("", "") if reference_predictions else _predictions(tags, client)
    try:
        ref = _measure(model_name, version, train_uri, reference_predictions or downloaded, refusal_patterns)
        if artifact:
            ref.sources["eval_predictions"] = artifact
        return ref
    finally:
        if downloaded:
            _remove_download(downloaded)


def _measure(model_name: str, version: str, train_uri: str, predictions_uri: str, refusal_patterns) -> Reference:
    ref = Reference(sources={"training_prompts": train_uri, "eval_predictions": predictions_uri})
    if train_uri and data.exists(train_uri):
        try:
            texts = profile.prompt_texts([r["prompt"] for r in _read(train_uri, ("prompt",))])
            ref.prompts = profile.profile(texts)
            ref.vocabulary = profile.distinct(ref.prompts.flat_words)
            ref.bigrams = profile.distinct(ref.prompts.bigrams)
        except (data.DataError, KeyError, OSError, ValueError) as exc:
            log.warning("monitor: v%s: training prompts %s unreadable (%s); input drift not measured",
                        version, train_uri, exc)
    else:
        log.warning("monitor: %s v%s: no training data found in its lineage; input drift not measured",
                    model_name, version)
    if predictions_uri and data.exists(predictions_uri):
        try:
            rows = _read(predictions_uri, ("prompt", "prediction"))
            prompts = [r["prompt"] for r in rows]
            ref.answer_texts = [str(r.get("prediction") or "") for r in rows]
            ref.answers = signals.measure(ref.answer_texts, prompts, refusal_patterns)
            if ref.vocabulary is not None:
                heldout = profile.profile(profile.prompt_texts(prompts))
                ref.heldout_novel = (int(profile.unseen(heldout.flat_words, ref.vocabulary).sum()),
                                     len(heldout.flat_words))
        except (data.DataError, KeyError, OSError, ValueError) as exc:
            log.warning("monitor: v%s: eval predictions %s unreadable (%s); output drift not measured",
                        version, predictions_uri, exc)
    else:
        log.warning("monitor: %s v%s: no evaluation predictions found in its lineage; output drift not measured",
                    model_name, version)
    return ref
