"""LLMOps on Airflow: the pipeline steps as plain Python.

Nothing here imports Airflow: the same code runs in a GPU pod, a local subprocess, a test or a
notebook. Importing the package is cheap; each step imports its heavy libraries when it runs.
"""

from __future__ import annotations

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("llmops-airflow")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
