"""``llmops curate``: human feedback on production traces -> a validated, versioned preference snapshot.

``config`` (settings), ``mining`` (votes to pairs, KTO and SFT rows, column-wise), ``rows`` (the
snapshot's columns, PII, content keys, retention), ``store`` (versioned folders, atomic publish,
the read cursor), ``report`` (HTML) and ``step`` (``run``: the whole step).
"""

from llmops_tasks.curation.config import CurateConfig
from llmops_tasks.curation.step import command, run

__all__ = ["CurateConfig", "command", "run"]
