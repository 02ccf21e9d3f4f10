"""``llmops train <method>``: fine-tune a causal LM with TRL.

Methods (all from the same config; settings a method does not use are ignored and say so):

- ``sft``: supervised fine-tuning on prompt/completion rows (SFTTrainer);
- ``dpo``: direct preference optimization on prompt/chosen/rejected (DPOTrainer), with the loss
  variants TRL offers, combined with weights when several are listed;
- ``reward``: a sequence-classification reward model from preference pairs (RewardTrainer);
- ``grpo`` / ``rloo``: online RL on the prompts of the data set against a reward model
  (GRPOTrainer / RLOOTrainer). ``reward_model`` names a trained one; left empty, the reward model
  is trained first, in the same run, from the same preference rows (``{output_dir}/reward``);
- ``kto``: unpaired preferences (KTOTrainer), derived from the pairs: chosen -> desirable,
  rejected -> undesirable;
- ``orpo``: odds-ratio preference optimization, no reference model (trl.experimental).

The base model is loaded with ``from_pretrained``: a local folder in the embedded mode, a hub id or
a mirrored volume in production. LoRA is a switch of the same recipe; QLoRA (``load_in_4bit``)
adds 4-bit loading through bitsandbytes and needs a CUDA GPU.

With ``num_processes > 1`` the command runs itself again under ``accelerate launch`` (one process
per GPU of the pod); inside the launched processes only rank 0 talks to MLflow and writes results.

Checkpoints go to ``{output_dir}/checkpoints`` every ``save_steps``; a rerun of the same task
resumes from the last complete checkpoint by itself (optimizer, scheduler and RNG state
included). A finished training is not repeated: when ``{output_dir}/result.json`` was written by a
run with the same resolved config, that result is returned as is.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from llmops_tasks import data
from llmops_tasks.config import ConfigError, config_hash, field, require, to_dict
from llmops_tasks.errors import StepFailed
from llmops_tasks.settings import RunContext

METHODS = ("sft", "dpo", "reward", "grpo", "rloo", "kto", "orpo")
RL_METHODS = ("grpo", "rloo")
# what each method reads from train_data (RL reads prompts; chosen/rejected too when it trains its reward model)
DATA_KIND = {"sft": "sft", "dpo": "preference", "reward": "preference", "grpo": "preference",
             "rloo": "preference", "kto": "preference", "orpo": "preference"}
DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
HELP = {
    "sft": "supervised fine-tuning on prompt/completion pairs (TRL SFTTrainer)",
    "dpo": "direct preference optimization on prompt/chosen/rejected (TRL DPOTrainer)",
    "reward": "a reward model (sequence classifier) from prompt/chosen/rejected (TRL RewardTrainer)",
    "grpo": "online RL on the prompts against a reward model (TRL GRPOTrainer)",
    "rloo": "online RL on the prompts against a reward model, REINFORCE leave-one-out (TRL RLOOTrainer)",
    "kto": "unpaired preference optimization: chosen rows desirable, rejected undesirable (TRL KTOTrainer)",
    "orpo": "odds-ratio preference optimization without a reference model (trl.experimental ORPOTrainer)",
}


@dataclass
class TrainConfig:
    base_model: str = field("", help="base model: a local folder or a hub id (from_pretrained)")
    train_data: str = field("", help="training data: prompt/completion rows for sft, prompt/chosen/rejected for the others")
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
    num_processes: int = field(1, help="training processes, one per GPU; above 1 the step runs under accelerate launch")
    lora: bool = field(False, help="train a LoRA adapter instead of all weights")
    lora_r: int = field(8, help="LoRA rank")
    lora_alpha: int = field(16, help="LoRA scaling")
    lora_dropout: float = field(0.05, help="LoRA dropout")
    lora_target_modules: str = field("all-linear", help="modules LoRA wraps (peft syntax)")
    load_in_4bit: bool = field(False, help="QLoRA: load the base model in 4 bit (bitsandbytes, CUDA only); needs lora")
    beta: float = field(0.1, help="dpo, kto, orpo, grpo, rloo: strength of the penalty (KL towards the reference, or the odds-ratio weight)")
    loss_type: list[str] = field(default_factory=lambda: ["sigmoid"],
                                 help=f"dpo: TRL loss variant(s), combined when several: {', '.join(DPO_LOSS_TYPES)}")
    loss_weights: list[float] = field(default_factory=list, help="dpo: weight of each loss_type (empty: 1.0 each)")
    completion_only_loss: bool = field(True, help="sft: compute the loss on the completion only")
    reward_model: str = field("", help="grpo, rloo: a trained reward model (folder or hub id); empty: train one first from train_data")
    reward_max_steps: int = field(0, help="grpo, rloo: steps for the reward model trained first (0: max_steps)")
    num_generations: int = field(4, help="grpo, rloo: completions sampled per prompt")
    max_completion_length: int = field(32, help="grpo, rloo: longest sampled completion, in tokens")
    temperature: float = field(1.0, help="grpo, rloo: sampling temperature")
    system_metrics_interval: float = field(10.0, help="seconds between CPU/GPU/memory samples logged to MLflow (0: off)")
    log_model: bool = field(True, help="log the final model (adapter + base reference, or full weights) on the MLflow run")

    def __post_init__(self) -> None:
        require(bool(self.base_model), "train: base_model is required (a local folder or a hub id)")
        require(bool(self.train_data), "train: train_data is required (a JSONL or Parquet URI)")
        for name in ("max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "max_length",
                     "save_steps", "logging_steps", "num_processes", "num_generations", "max_completion_length"):
            require(getattr(self, name) > 0, f"train: {name} must be a positive integer, got {getattr(self, name)}")
        require(self.reward_max_steps >= 0, f"train: reward_max_steps must be 0 or more, got {self.reward_max_steps}")
        require(self.learning_rate > 0, f"train: learning_rate must be positive, got {self.learning_rate}")
        require(self.lora_r > 0, f"train: lora_r must be positive, got {self.lora_r}")
        require(0 <= self.lora_dropout < 1, f"train: lora_dropout must be in [0, 1), got {self.lora_dropout}")
        require(self.beta >= 0, f"train: beta must be 0 or more, got {self.beta}")
        require(self.temperature > 0, f"train: temperature must be positive, got {self.temperature}")
        require(self.system_metrics_interval >= 0,
                f"train: system_metrics_interval must be 0 or more seconds, got {self.system_metrics_interval}")
        require(bool(self.loss_type), "train: loss_type needs at least one DPO loss variant")
        unknown = [t for t in self.loss_type if t not in DPO_LOSS_TYPES]
        require(not unknown, f"train: unknown loss_type {', '.join(unknown)}; TRL offers {', '.join(DPO_LOSS_TYPES)}")
        require(not self.loss_weights or len(self.loss_weights) == len(self.loss_type),
                f"train: loss_weights has {len(self.loss_weights)} values for {len(self.loss_type)} loss_type(s)")
        require(not self.load_in_4bit or self.lora,
                "train: load_in_4bit (QLoRA) trains an adapter on frozen 4-bit weights; set lora: true as well")
        self.output_dir = self.output_dir or RunContext.from_env().step_dir("train")


def _load_rows(config: TrainConfig, method: str) -> list[dict]:
    """The rows a method trains on, checked before any model is loaded."""
    required = data.REQUIRED_COLUMNS[DATA_KIND[method]]
    if method in RL_METHODS and config.reward_model:
        required = ("prompt",)  # the reward model is given: only the prompts are needed
    uri = config.train_data
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
    rows = [{c: row[c] for c in required} for row in rows]
    if method == "kto":  # unpaired: each pair gives one desirable and one undesirable example
        return [{"prompt": r["prompt"], "completion": r[side], "label": side == "chosen"}
                for r in rows for side in ("chosen", "rejected")]
    if method in RL_METHODS:  # each distinct prompt once; completions are sampled online
        seen: dict[str, dict] = {}
        for r in rows:
            seen.setdefault(json.dumps(r["prompt"], sort_keys=True), {"prompt": r["prompt"]})
        return list(seen.values())
    return rows


def last_complete_checkpoint(checkpoint_dir: Path) -> str | None:
    """The newest ``checkpoint-N`` whose trainer state was written (written last by the Trainer)."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return None
    candidates = []
    for path in checkpoint_dir.iterdir():
        if path.name.startswith("checkpoint-") and path.name.removeprefix("checkpoint-").isdigit():
            if (path / "trainer_state.json").is_file():
                candidates.append((int(path.name.removeprefix("checkpoint-")), path))
    return str(max(candidates)[1]) if candidates else None


def is_main_process() -> bool:
    """Rank 0 of an ``accelerate launch``, or the only process."""
    return os.environ.get("RANK", "0") == "0"


def launched() -> bool:
    """Already inside a distributed launch (accelerate/torchrun set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def launch_command(config_file: str | Path, method: str, num_processes: int) -> list[str]:
    """The same step, one process per GPU, under ``accelerate launch``."""
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--num_processes", str(num_processes), "--num_machines", "1", "--multi_gpu",
        "--module", "llmops_tasks.cli", "train", method, "--config", str(config_file),
    ]


def _launch_distributed(config: TrainConfig, method: str, out: Path) -> dict:
    import torch
    import yaml

    gpus = torch.cuda.device_count()
    if gpus < config.num_processes:
        raise ConfigError(
            f"train: num_processes={config.num_processes} runs one process per GPU, but this machine has {gpus} "
            "GPU(s); set num_processes to 1 or request that many GPUs for the pod"
        )
    out.mkdir(parents=True, exist_ok=True)
    config_file = out / "launch_config.yaml"
    config_file.write_text(yaml.safe_dump(to_dict(config), sort_keys=True))
    env = {k: v for k, v in os.environ.items() if k != "LLMOPS_RESULT_FILE"}  # the launcher writes the result
    command = launch_command(config_file, method, config.num_processes)
    print("train: launching " + " ".join(command), flush=True)
    returncode = subprocess.call(command, env=env)
    result_path = out / "result.json"
    if returncode != 0 or not result_path.is_file():
        raise RuntimeError(f"train {method}: accelerate launch with {config.num_processes} processes exited {returncode}")
    return json.loads(result_path.read_text())


def _mlflow_callback(run, every: int = 10):
    """Training logs to the MLflow run (a ``tracking.BackgroundRun``), handed over in batches of
    ``every`` log events, at each checkpoint and at the end; ``None`` (ranks other than 0): nothing."""
    from transformers import TrainerCallback

    class MlflowMetrics(TrainerCallback):
        def __init__(self):
            self.pending: list[tuple[str, float, int]] = []
            self.events = 0

        def flush(self):
            if self.pending and run is not None:
                run.log_metrics(self.pending)
            self.pending, self.events = [], 0

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and state.is_world_process_zero:
                self.pending.extend((k, v, state.global_step) for k, v in logs.items() if isinstance(v, (int, float)))
                self.events += 1
                if self.events >= every:
                    self.flush()

        def on_save(self, args, state, control, **kwargs):
            self.flush()  # what reached a checkpoint reaches MLflow too

        def on_train_end(self, args, state, control, **kwargs):
            self.flush()

    return MlflowMetrics()


def _prepare_model_logging() -> None:
    """Done in the logging process while the step trains: importing MLflow's pyfunc flavor and its
    check of the pinned requirements against the installed packages (a scan of every installed
    distribution) take seconds that would otherwise come after the last training step."""
    import mlflow.pyfunc  # noqa: F401
    from mlflow.utils.requirements_utils import warn_dependency_requirement_mismatches

    from llmops_tasks.registry import _pip_requirements

    warn_dependency_requirement_mismatches(_pip_requirements())


def _peft_config(config: TrainConfig, method: str):
    if not config.lora:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=config.lora_target_modules, task_type="SEQ_CLS" if method == "reward" else "CAUSAL_LM",
    )


def _quantization(config: TrainConfig):
    """bitsandbytes 4-bit loading for QLoRA; refused where it cannot work."""
    if not config.load_in_4bit:
        return None
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("train: load_in_4bit (QLoRA) needs a CUDA GPU and none is visible; "
                          "set load_in_4bit: false to train LoRA in full precision")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise ConfigError("train: load_in_4bit (QLoRA) needs bitsandbytes: pip install 'llmops-airflow[qlora]'") from exc
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16 if config.bf16 else torch.float16)


def _reward_model_for(config: TrainConfig, method: str, out: Path) -> tuple[str, dict | None]:
    """The reward model RL trains against: the configured one, or one trained now into ``{out}/reward``."""
    if config.reward_model:
        return config.reward_model, None
    import dataclasses

    reward_config = dataclasses.replace(
        config, output_dir=str(out / "reward"), max_steps=config.reward_max_steps or config.max_steps,
        num_processes=1,  # already inside this step's launch, if any
    )
    reward = train(reward_config, "reward")
    return reward["model_dir"], reward


def _build_trainer(config: TrainConfig, method: str, rows: list[dict], common: dict, callbacks: list, out: Path,
                   quantization=None):
    """The TRL trainer of ``method``, its model and tokenizer loaded from ``base_model``."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(config.base_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    load = {"quantization_config": quantization} if quantization is not None else {}
    dataset = Dataset.from_list(rows)
    peft_config = _peft_config(config, method)
    shared = {"train_dataset": dataset, "processing_class": tokenizer, "peft_config": peft_config,
              "callbacks": callbacks}
    extra: dict = {}
    if method == "reward":
        from trl import RewardConfig, RewardTrainer

        model = AutoModelForSequenceClassification.from_pretrained(config.base_model, num_labels=1, **load)
        model.config.pad_token_id = tokenizer.pad_token_id
        return RewardTrainer(model=model, args=RewardConfig(**common), **shared), tokenizer, extra
    if method in RL_METHODS:
        reward_path, reward_result = _reward_model_for(config, method, out)
        extra["reward_model"] = reward_path
        if reward_result:
            extra["reward_result"] = {k: reward_result[k] for k in ("model_dir", "global_step", "mlflow_run_id")
                                      if k in reward_result}  # ranks other than 0 only know model_dir
        reward_tokenizer = AutoTokenizer.from_pretrained(reward_path)
        if reward_tokenizer.pad_token is None:
            reward_tokenizer.pad_token = reward_tokenizer.eos_token
        rl = {k: v for k, v in common.items() if k != "max_length"}
        rl.update(num_generations=config.num_generations, max_completion_length=config.max_completion_length,
                  temperature=config.temperature, beta=config.beta)
        import trl

        RLConfig, RLTrainer = (trl.GRPOConfig, trl.GRPOTrainer) if method == "grpo" else (trl.RLOOConfig, trl.RLOOTrainer)
        model = AutoModelForCausalLM.from_pretrained(config.base_model, **load)
        trainer = RLTrainer(model=model, reward_funcs=reward_path, reward_processing_classes=reward_tokenizer,
                            args=RLConfig(**rl), **shared)
        return trainer, tokenizer, extra
    model = AutoModelForCausalLM.from_pretrained(config.base_model, **load)
    if method == "sft":
        from trl import SFTConfig, SFTTrainer

        args = SFTConfig(completion_only_loss=config.completion_only_loss, **common)
        return SFTTrainer(model=model, args=args, **shared), tokenizer, extra
    if method == "dpo":
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(beta=config.beta, loss_type=list(config.loss_type), loss_weights=config.loss_weights or None,
                         **common)
        return DPOTrainer(model=model, args=args, **shared), tokenizer, extra
    if method == "kto":
        from trl import KTOConfig, KTOTrainer

        return KTOTrainer(model=model, args=KTOConfig(beta=config.beta, **common), **shared), tokenizer, extra
    import warnings

    with warnings.catch_warnings():  # trl.experimental announces itself on import
        warnings.simplefilter("ignore")
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    args = ORPOConfig(beta=config.beta, **common)
    return ORPOTrainer(model=model, args=args, **shared), tokenizer, extra


def _log_final_model(run_id: str, method: str, config: TrainConfig, model_dir: Path, adapter_dir: Path | None) -> str:
    """The trained model on the train run: the adapter plus the base model's name, or the full weights.

    Generators are logged as the serving pyfunc (``serving.py``) with pinned pip requirements, so
    the run's model loads with ``mlflow.pyfunc.load_model``; a reward model as its folder.
    """
    import mlflow

    from llmops_tasks import tracking

    mlflow_client = tracking.client()
    mlflow_client.set_tag(run_id, "llmops.base_model", config.base_model)
    if method == "reward":
        mlflow_client.log_artifacts(run_id, str(model_dir), artifact_path="reward_model")
        return f"runs:/{run_id}/reward_model"
    from llmops_tasks.registry import _pip_requirements

    weights = adapter_dir if adapter_dir is not None else model_dir
    with mlflow.start_run(run_id=run_id, log_system_metrics=False):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(__file__).with_name("serving.py")),
            artifacts={"model": str(weights)},
            pip_requirements=[*_pip_requirements(), *(["peft"] if adapter_dir is not None else [])],
            metadata={"base_model": config.base_model, "method": method,
                      "weights": "lora-adapter" if adapter_dir is not None else "full"},
        )
    return info.model_uri


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

    rows = _load_rows(config, method)
    quantization = _quantization(config)  # refused before any run is opened or model loaded
    if config.num_processes > 1 and not launched():
        return _launch_distributed(config, method, out)
    main = is_main_process()

    import contextlib

    from llmops_tasks import tracking

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
    # MLflow's work (run, system metrics, the final model) is done by a separate process, on another
    # core, while this one imports, loads and trains; only rank 0 has a run.
    run_context = tracking.background_step_run(
        f"train-{method}", params=params, tags={"method": method},
        system_metrics_interval=config.system_metrics_interval,
        warmups=(_prepare_model_logging,) if config.log_model else (),
    ) if main else contextlib.nullcontext(None)
    with run_context as run:
        trainer, tokenizer, extra = _build_trainer(config, method, rows, common, [_mlflow_callback(run)], out,
                                                   quantization)
        resume = last_complete_checkpoint(checkpoints)
        if resume:
            print(f"train {method}: resuming from {resume}", flush=True)
        if run is not None:
            print(f"train {method}: MLflow run {run.run_id}", flush=True)  # fails here, before training, without one
        outcome = trainer.train(resume_from_checkpoint=resume)
        model_dir = out / "model"
        adapter_dir = out / "adapter" if config.lora else None
        if main:
            trainer.save_metrics("train", outcome.metrics)
            final = trainer.model
            if adapter_dir is not None:
                trainer.model.save_pretrained(adapter_dir)
                final = trainer.model.merge_and_unload()
            staging = out / ".model-partial"
            shutil.rmtree(staging, ignore_errors=True)
            final.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            shutil.rmtree(model_dir, ignore_errors=True)
            staging.rename(model_dir)
        trainer.accelerator.wait_for_everyone()  # other ranks may go on to use the model (RL after reward)
        if not main:
            return {"method": method, "model_dir": str(model_dir), "rank": os.environ.get("RANK")}
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        result = {
            "method": method,
            "model_dir": str(model_dir),
            "adapter_dir": str(adapter_dir) if adapter_dir else "",
            "base_model": config.base_model,
            "train_data": config.train_data,
            "train_data_hash": data.content_hash(config.train_data),
            "global_step": trainer.state.global_step,
            "train_loss": float(outcome.training_loss),
            "final_loss": float(losses[-1]) if losses else float(outcome.training_loss),
            "resumed_from": resume or "",
            "config_hash": config_hash(config),
            "fingerprint": fingerprint,
            "mlflow_run_id": run.run_id,
            "mlflow_run_url": run.url,
            "result_file": str(result_path),
            **extra,
        }
        run.log_metrics([("train_loss", result["train_loss"], result["global_step"]),
                         ("final_loss", result["final_loss"], result["global_step"])])
        if config.log_model:
            result["mlflow_model_uri"] = run.call(_log_final_model, method, config, model_dir, adapter_dir)
    data.write_json(str(result_path), result)
    return result


def command():
    from llmops_tasks.cli import Command

    def runner(method: str):
        return lambda config: train(config, method)

    return {method: Command(TrainConfig, runner(method), HELP[method]) for method in METHODS}
