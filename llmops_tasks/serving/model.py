"""The MLflow pyfunc that serves a registered model: prompts in, completions out.

Logged as a "model from code" (this file is the model's code), with the Hugging Face model
folder as its ``model`` artifact, so ``mlflow.pyfunc.load_model("models:/name@production")``
and ``mlflow models serve`` work on the registered version with no pickled classes.
"""

from __future__ import annotations

import mlflow.pyfunc
from mlflow.models import set_model


class TextGenerator(mlflow.pyfunc.PythonModel):
    """Greedy, batched generation with the fine-tuned causal LM stored as artifact ``model``."""

    def load_context(self, context):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = context.artifacts["model"]
        self.tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(path)
        self.model.eval()

    def predict(self, context, model_input, params=None):
        import torch

        params = params or {}
        prompts = list(model_input["prompt"]) if hasattr(model_input, "columns") else list(model_input)
        batch = self.tokenizer([str(p) for p in prompts], return_tensors="pt", padding=True)
        with torch.no_grad():
            output = self.model.generate(
                **batch,
                max_new_tokens=int(params.get("max_new_tokens", 64)),
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new_tokens = output[:, batch["input_ids"].shape[1]:]
        return self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)


set_model(TextGenerator())
