"""``llmops feedback log``: a person's verdict on a served answer, kept as MLflow assessments on its trace.

Feedback lives where the answer lives: on the production trace that :func:`serving.traces.record_answer`
wrote, as MLflow assessments, so the MLflow UI shows it next to the answer and any MLflow client (or
its REST API) can write it too; curation reads it back from the traces. The assessment names are
fixed (monitoring and curation count on them):

- :data:`THUMBS` ``user_thumbs``: Feedback, bool, ``True`` = thumbs up;
- :data:`RATING` ``user_rating``: Feedback, int on the scale ``rating_min..rating_max`` (default 1..5);
- :data:`PREFERRED_OVER` ``user_preferred_over``: Feedback on the preferred trace, value = the trace
  id of the answer it was preferred over (same prompt);
- :data:`CORRECTION` ``user_correction``: Expectation, text: the answer the model should have given.

The source is ``AssessmentSource(HUMAN, <by>)``. Idempotent: the same (trace, name, value, source
id) already on the trace is not written again (the result says ``recorded: false`` and names the
existing assessment). A person who changes a Feedback of theirs (thumbs up, then down) overrides
their earlier one (``mlflow.override_feedback``: the old one stays, marked invalid), so each person
has one valid verdict per kind and trace.
"""

from __future__ import annotations

# The assessment names: fixed, since monitoring and curation read them.
THUMBS = "user_thumbs"  # Feedback, bool: True = thumbs up
RATING = "user_rating"  # Feedback, int on the configured scale (default 1..5)
PREFERRED_OVER = "user_preferred_over"  # Feedback on the preferred trace: the other trace's id
CORRECTION = "user_correction"  # Expectation, text: the better answer
NAMES = (THUMBS, RATING, PREFERRED_OVER, CORRECTION)

from llmops_tasks.feedback.log import FeedbackConfig, log_feedback  # after the names, which it reads

__all__ = ["CORRECTION", "NAMES", "PREFERRED_OVER", "RATING", "THUMBS", "FeedbackConfig", "command",
           "log_feedback"]


def command():
    from llmops_tasks.core.command import Command

    return {
        "log": Command(FeedbackConfig, log_feedback,
                       "record thumbs, a rating, a correction or a pairwise preference on a traced answer"),
    }
