"""``llmops validate``: stop bad data at the door, before anything is trained on it.

``config`` (settings, rule names), ``measures`` (chunks to measurement tables), ``suite`` (the
Great Expectations suite and context), ``report`` (rule outcomes, quarantine, validation.json) and
``step`` (``run``: the whole step, its MLflow step run included).
"""

from llmops_tasks.validate.config import ValidateConfig
from llmops_tasks.validate.step import command, run

__all__ = ["ValidateConfig", "command", "run"]
