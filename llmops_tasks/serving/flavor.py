"""Logging the served model: the pyfunc of ``model.py`` with the Hugging Face folder as artifact.

Train (on its run) and register (on the version) log generators through :func:`log_generator`,
so both copies load with ``mlflow.pyfunc.load_model`` and pin the same serving packages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Pinned into every logged model so a serving environment rebuilds what was tested.
SERVING_PACKAGES = ("mlflow", "torch", "transformers", "safetensors", "tokenizers", "pandas")
MODEL_CODE = Path(__file__).with_name("model.py")
GENERATION_CODE = Path(__file__).with_name("generation.py")
# The name the generation code is logged under (``code/``, put on sys.path when the model loads):
# distinct enough not to shadow anything of the serving environment's.
GENERATION_MODULE = "llmops_generation.py"


def pip_requirements(*extra: str) -> list[str]:
    """``name==version`` of the installed serving packages (the bare name when one is missing)."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for name in SERVING_PACKAGES:
        try:
            pins.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            pins.append(name)
    return [*pins, *extra]


def prepare() -> None:
    """Import the pyfunc flavor and run its check of the pins against the installed packages (a
    scan of every installed distribution): seconds a caller can spend early, off its critical path."""
    import mlflow.pyfunc  # noqa: F401
    from mlflow.utils.requirements_utils import warn_dependency_requirement_mismatches

    warn_dependency_requirement_mismatches(pip_requirements())


def log_generator(artifacts: dict[str, str], *, adapter: bool = False, **kwargs: Any):
    """``mlflow.pyfunc.log_model`` of the serving pyfunc under ``model`` in the active run.

    ``artifacts["model"]`` is the Hugging Face folder the pyfunc loads; ``adapter`` adds ``peft``
    to the pins (a LoRA adapter needs it to load). The generation code goes with the model
    (:data:`GENERATION_MODULE`), for a serving environment without this package. Other keyword
    arguments go to ``log_model``.
    """
    import shutil
    import tempfile

    import mlflow

    with tempfile.TemporaryDirectory(prefix="llmops-code-") as code:
        generation = shutil.copyfile(GENERATION_CODE, Path(code) / GENERATION_MODULE)
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),
            artifacts=artifacts,
            code_paths=[str(generation)],
            pip_requirements=pip_requirements(*(["peft"] if adapter else [])),
            **kwargs,
        )
