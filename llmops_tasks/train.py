"""``llmops train {sft,dpo}``: fine-tune a causal LM with TRL.

One config for every method (method-specific settings are ignored by the others and say so in
their help). The base model is loaded with ``from_pretrained``: a local folder in the embedded
mode, a hub id or a mirrored volume in production. LoRA is a switch of the same recipe.

Checkpoints go to ``{output_dir}/checkpoints`` every ``save_steps``; a rerun of the same task
resumes from the last complete checkpoint by itself (optimizer, scheduler and RNG state
included). A finished training is not repeated: when ``{output_dir}/result.json`` was written by a
run with the same resolved config, that result is returned as is.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from llmops_tasks import data
from llmops_tasks.config import config_hash, field, require, to_dict
from llmops_tasks.errors import StepFailed
from llmops_tasks.settings import RunContext

METHODS = ("sft", "dpo")


@dataclass
class TrainConfig:
    base_model: str = field("", help="base model: a local folder or a hub id (from_pretrained)")
    train_data: str = field("", help="training data: prompt/completion rows for sft, prompt/chosen/rejected for dpo")
    output_dir: str = field("", help="where checkpoints and the final model go (default: the run's train/ folder)")
    max_steps: int = field(60, help="optimizer steps to train for")
    learning_rate: float = field(5e-4, help="peak learning rate")
    lr_scheduler_type: str = field("cosine", help="transformers scheduler name")
    warmup_steps: int = field(0, help="linear warm-up steps")
    per_device_train_batch_size: int = field(8, help="examples per device per step")
    gradient_accumulation_steps: int = field(1, help="steps to accumulate before an optimizer update")
    max_length: int = field(128, help="longest tokenized example; longer ones are truncated")
    seed: int = field(42, help="random seed for data order and initialization")
    save_steps: int = field(20, help="write a checkpoint every N steps")
    save_total_limit: int = field(2, help="checkpoints kept on disk")
    logging_steps: int = field(5, help="log training metrics every N steps")
    gradient_checkpointing: bool = field(False, help="trade compute for memory on large models")
    bf16: bool = field(False, help="train in bfloat16 (GPUs that support it)")
    lora: bool = field(False, help="train a LoRA adapter instead of all weights")
    lora_r: int = field(8, help="LoRA rank")
    lora_alpha: int = field(16, help="LoRA scaling")
    lora_dropout: float = field(0.05, help="LoRA dropout")
    lora_target_modules: str = field("all-linear", help="modules LoRA wraps (peft syntax)")
    beta: float = field(0.1, help="dpo: strength of the KL penalty towards the reference model")
    loss_type: str = field("sigmoid", help="dpo: TRL loss variant (sigmoid, ipo, hinge, robust, ...)")
    completion_only_loss: bool = field(True, help="sft: compute the loss on the completion only")

    def __post_init__(self) -> None:
        require(bool(self.base_model), "train: base_model is required (a local folder or a hub id)")
        require(bool(self.train_data), "train: train_data is required (a JSONL or Parquet URI)")
        for name in ("max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "max_length",
                     "save_steps", "logging_steps"):
            require(getattr(self, name) > 0, f"train: {name} must be a positive integer, got {getattr(self, name)}")
        require(self.learning_rate > 0, f"train: learning_rate must be positive, got {self.learning_rate}")
        require(self.lora_r > 0, f"train: lora_r must be positive, got {self.lora_r}")
        require(0 <= self.lora_dropout < 1, f"train: lora_dropout must be in [0, 1), got {self.lora_dropout}")
        require(self.beta > 0, f"train: beta must be positive, got {self.beta}")
        self.output_dir = self.output_dir or RunContext.from_env().step_dir("train")


def _load_rows(uri: str, method: str) -> list[dict]:
    required = data.REQUIRED_COLUMNS["sft" if method == "sft" else "preference"]
    try:
        rows = data.read_records(uri)
    except data.DataError as exc:
        raise StepFailed(f"train {method}: {exc}") from exc
    if not rows:
        raise StepFailed(f"train {method}: {uri} has no rows")
    for row in rows:
        missing = [c for c in required if c not in row]
        if missing:
            raise StepFailed(
                f"train {method}: {uri} line {row['_line']} lacks column(s) {', '.join(missing)}; "
                f"{method} needs {', '.join(required)}"
            )
    return [{c: row[c] for c in required} for row in rows]


def last_complete_checkpoint(checkpoint_dir: Path) -> str | None:
    """The newest ``checkpoint-N`` whose trainer state was written (written last by the Trainer)."""
    if not checkpoint_dir.is_dir():
        return None
    candidates = []
    for path in checkpoint_dir.iterdir():
        if path.name.startswith("checkpoint-") and path.name.removeprefix("checkpoint-").isdigit():
            if (path / "trainer_state.json").is_file():
                candidates.append((int(path.name.removeprefix("checkpoint-")), path))
    return str(max(candidates)[1]) if candidates else None


def _mlflow_callback(run_id: str):
    from transformers import TrainerCallback

    from llmops_tasks import tracking

    class MlflowMetrics(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and state.is_world_process_zero:
                tracking.log_metrics(run_id, {k: v for k, v in logs.items() if isinstance(v, (int, float))},
                                     step=state.global_step)

    return MlflowMetrics()


def train(config: TrainConfig, method: str) -> dict:
    require(method in METHODS, f"train: method must be one of {METHODS}, got {method!r}")
    out = Path(data.local_path(config.output_dir))
    result_path = out / "result.json"
    fingerprint = config_hash(config) + "-" + method
    if result_path.is_file():
        previous = json.loads(result_path.read_text())
        if previous.get("fingerprint") == fingerprint and Path(previous.get("model_dir", "")).is_dir():
            previous["reused"] = True
            return previous

    rows = _load_rows(config.train_data, method)

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmops_tasks import tracking

    torch.manual_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(config.base_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(config.base_model)
    peft_config = None
    if config.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
            target_modules=config.lora_target_modules, task_type="CAUSAL_LM",
        )
    dataset = Dataset.from_list(rows)
    checkpoints = out / "checkpoints"
    common = dict(
        output_dir=str(checkpoints),
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_steps,
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        max_length=config.max_length,
        seed=config.seed,
        data_seed=config.seed,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        logging_steps=config.logging_steps,
        activation_checkpointing=config.gradient_checkpointing,  # transformers 5 name
        bf16=config.bf16,
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    params = {**to_dict(config), "method": method}
    with tracking.step_run(f"train-{method}", params=params, tags={"method": method}) as run_id:
        callbacks = [_mlflow_callback(run_id)]
        if method == "sft":
            from trl import SFTConfig, SFTTrainer

            args = SFTConfig(completion_only_loss=config.completion_only_loss, **common)
            trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                 peft_config=peft_config, callbacks=callbacks)
        else:
            from trl import DPOConfig, DPOTrainer

            args = DPOConfig(beta=config.beta, loss_type=[config.loss_type], **common)
            trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                 peft_config=peft_config, callbacks=callbacks)
        resume = last_complete_checkpoint(checkpoints)
        outcome = trainer.train(resume_from_checkpoint=resume)
        trainer.save_metrics("train", outcome.metrics)

        final = trainer.model
        if config.lora:
            trainer.model.save_pretrained(out / "adapter")
            final = trainer.model.merge_and_unload()
        model_dir = out / "model"
        staging = out / ".model-partial"
        shutil.rmtree(staging, ignore_errors=True)
        final.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        shutil.rmtree(model_dir, ignore_errors=True)
        staging.rename(model_dir)
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        result = {
            "method": method,
            "model_dir": str(model_dir),
            "adapter_dir": str(out / "adapter") if config.lora else "",
            "base_model": config.base_model,
            "train_data": config.train_data,
            "train_data_hash": data.content_hash(config.train_data),
            "global_step": trainer.state.global_step,
            "train_loss": float(outcome.training_loss),
            "final_loss": float(losses[-1]) if losses else float(outcome.training_loss),
            "resumed_from": resume or "",
            "config_hash": config_hash(config),
            "fingerprint": fingerprint,
            "mlflow_run_id": run_id,
            "mlflow_run_url": tracking.run_url(run_id),
            "result_file": str(result_path),
        }
        tracking.log_metrics(run_id, {"train_loss": result["train_loss"], "final_loss": result["final_loss"]},
                             step=result["global_step"])
    data.write_json(str(result_path), result)
    return result


def command():
    from llmops_tasks.cli import Command

    def runner(method: str):
        return lambda config: train(config, method)

    return {
        "sft": Command(TrainConfig, runner("sft"), "supervised fine-tuning on prompt/completion pairs (TRL SFTTrainer)"),
        "dpo": Command(TrainConfig, runner("dpo"), "direct preference optimization on prompt/chosen/rejected (TRL DPOTrainer)"),
    }
