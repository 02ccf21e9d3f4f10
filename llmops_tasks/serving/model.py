"""The MLflow pyfunc that serves a registered model: prompts in, completions out.

Logged as a "model from code" (this file is the model's code), with the Hugging Face model
folder as its ``model`` artifact, so ``mlflow.pyfunc.load_model("models:/name@production")``
and ``mlflow models serve`` work on the registered version with no pickled classes.

It answers with ``generation.Generator``, the code evaluate scored with: the installed package's
when there is one, else the copy logged with the model (``code/llmops_generation.py``).
"""

from __future__ import annotations

import mlflow.pyfunc
from mlflow.models import set_model

try:
    from llmops_tasks.serving.generation import Generator
except ImportError:  # served where the package is not installed: the copy logged with the model
    from llmops_generation import Generator  # type: ignore[no-redef]

DEFAULT_MAX_NEW_TOKENS = 64


class TextGenerator(mlflow.pyfunc.PythonModel):
    """Greedy, batched generation with the fine-tuned causal LM stored as artifact ``model``."""

    def load_context(self, context):
        self.generator = Generator.load(context.artifacts["model"])

    def predict(self, context, model_input, params=None):
        """One answer (text) per prompt; a prompt is a string or a list of chat messages."""
        params = params or {}
        prompts = list(model_input["prompt"]) if hasattr(model_input, "columns") else list(model_input)
        completions = self.generator.answer(
            prompts, max_new_tokens=int(params.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)),
            batch_size=params.get("batch_size"),
        )
        return [c.text for c in completions]


set_model(TextGenerator())
