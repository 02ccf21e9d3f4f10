"""``llmops validate``: stop bad data at the door, before anything is trained on it.

``config`` (settings, rule names), ``measures`` (chunks to measurement tables), ``conversations``
(the rules of message lists, the chat template), ``suite`` (the Great Expectations suites and
context), ``report`` (rule outcomes, quarantine, validation.json), ``datadocs`` (the Data Docs) and
``step`` (``run``: the whole step, its MLflow step run included).
"""

from llmops_tasks.validate.config import ValidateConfig
from llmops_tasks.validate.step import command, run

__all__ = ["ValidateConfig", "command", "run"]
