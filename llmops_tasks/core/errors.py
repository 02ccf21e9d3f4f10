"""Outcomes a step reports on purpose, as opposed to crashes."""

from __future__ import annotations

from typing import Any


class StepFailed(Exception):
    """The step ran to the end and said no: invalid data, a rejected gate, a refused promotion.

    ``result`` is the JSON the step would have returned (report paths, failed rules), so the
    caller can show why; the CLI exits 1 with it.
    """

    def __init__(self, message: str, result: dict[str, Any] | None = None):
        super().__init__(message)
        self.result = result or {"error": message}


class Rejected(StepFailed):
    """A verdict, not an error: the step judged its input and said no (a gate rejecting a
    candidate). Callers that branch on the verdict (the DAG's gate) take ``result`` as the answer."""
