"""What a step module gives the CLI: its config dataclass and the function that runs it."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

from llmops_tasks.core.config import check_paths


@dataclasses.dataclass(frozen=True)
class Command:
    """A runnable step: its config dataclass and the function that runs it.

    ``run`` first refuses a config whose path settings name what is not there
    (:func:`~llmops_tasks.core.config.check_paths`), wherever the step is run from: the CLI, or
    the Airflow task's own process (``run_step``).
    """

    config_cls: type
    run: Callable[[Any], dict]
    help: str
    # Human-readable rendering of the result; the JSON is printed instead when the config says json.
    render: Callable[[dict], str] | None = None

    def __post_init__(self) -> None:
        if not getattr(self.run, "_checks_paths", False):
            object.__setattr__(self, "run", _checking_paths(self.run))


def _checking_paths(step: Callable[[Any], dict]) -> Callable[[Any], dict]:
    @functools.wraps(step)
    def run(config: Any) -> dict:
        check_paths(config)
        return step(config)

    run._checks_paths = True  # type: ignore[attr-defined]
    return run
