"""``llmops train <method>``: fine-tune a causal LM with TRL.

Methods:

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

A recipe has three parts. Top-level keys are the pipeline's (what to train, on what, where to, on
how many GPUs, what reaches MLflow). ``trainer:`` is passed to the method's own TRL config class
(``SFTConfig``, ``DPOConfig``, ...): any of its fields can be set there, over a small house base
layer (:data:`HOUSE_TRAINER`) that a recipe's value always wins over. ``model:`` is
``trl.ModelConfig`` (dtype, attention, LoRA, bitsandbytes quantization), turned into the PEFT and
quantization configs by TRL's own ``get_peft_config`` / ``get_quantization_config``. Keys and
value types of both sections are checked against those classes when the recipe is loaded; TRL's
own checks run when the trainer's config is built, before any data or model is read.

The base model is loaded with ``from_pretrained``: a local folder in the embedded mode, a hub id or
a mirrored volume in production. LoRA is ``model.use_peft``; QLoRA (``model.load_in_4bit``) adds
4-bit loading through bitsandbytes and needs a CUDA GPU.

With ``num_processes > 1`` the command runs itself again under ``accelerate launch`` (one process
per GPU of the pod); inside the launched processes only rank 0 talks to MLflow and writes results.
Beyond one node the same command runs under ``torchrun`` on every node of a Kubeflow Trainer
TrainJob (``llmops_airflow.operators.trainjob``): torchrun reads the rendezvous the runtime gives
(``PET_NNODES``, ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR``, ``PET_MASTER_PORT``),
the step sees ``WORLD_SIZE > 1`` and trains in that process group (gloo on CPUs); every rank leaves
a record in ``{output_dir}/ranks/``, rank 0 alone everything else, and with ``LLMOPS_RESULT_LOG=1``
rank 0 logs its result as one ``llmops-result: {...}`` line, which the operator reads from the
leader pod's log.

Each training records its GPU-hours (GPUs of all nodes x wall time of the training) and, where the
deployment sets ``LLMOPS_GPU_HOUR_PRICE``, its cost, in the result and on the MLflow run.

Checkpoints go to ``{output_dir}/checkpoints`` every ``trainer.save_steps``; a rerun of the same
task resumes from the last complete checkpoint by itself (optimizer, scheduler and RNG state
included). A finished training is not repeated: when ``{output_dir}/result.json`` was written by a
run with the same resolved config, that result is returned as is.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import importlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import yaml

from llmops_tasks.core import data
from llmops_tasks.core.config import ConfigError, coerce, config_hash, field, require, to_dict
from llmops_tasks.core.errors import StepFailed
from llmops_tasks.core.settings import RunContext
from llmops_tasks.serving import flavor

log = logging.getLogger(__name__)

METHODS = ("sft", "dpo", "reward", "grpo", "rloo", "kto", "orpo")
RL_METHODS = ("grpo", "rloo")
# what each method reads from train_data (RL reads prompts; chosen/rejected too when it trains its reward model)
DATA_KIND = {"sft": "sft", "dpo": "preference", "reward": "preference", "grpo": "preference",
             "rloo": "preference", "kto": "preference", "orpo": "preference"}
# method -> where its TRL config and trainer classes live (imported when first needed: trl pulls in torch)
TRL_CLASSES = {
    "sft": ("trl", "SFTConfig", "SFTTrainer"),
    "dpo": ("trl", "DPOConfig", "DPOTrainer"),
    "reward": ("trl", "RewardConfig", "RewardTrainer"),
    "grpo": ("trl", "GRPOConfig", "GRPOTrainer"),
    "rloo": ("trl", "RLOOConfig", "RLOOTrainer"),
    "kto": ("trl", "KTOConfig", "KTOTrainer"),
    "orpo": ("trl.experimental.orpo", "ORPOConfig", "ORPOTrainer"),
}
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
# A few fields of each method's TRL config, named in its --help as examples (any field can be set).
TRAINER_EXAMPLES = {
    "sft": "packing, completion_only_loss, assistant_only_loss",
    "dpo": "beta, loss_type, loss_weights, label_smoothing",
    "reward": "center_rewards_coefficient, disable_dropout",
    "grpo": "beta, num_generations, num_iterations, temperature, epsilon",
    "rloo": "beta, num_generations, num_iterations, temperature",
    "kto": "beta, desirable_weight, undesirable_weight",
    "orpo": "beta, max_completion_length",
}

# --- the house base layer --------------------------------------------------------------------
# Under a recipe's ``trainer:`` section: the project's choices where they differ from TRL's
# defaults (short runs that checkpoint often, so a retried pod loses little; metrics reach MLflow
# through the step's own callback). A value the recipe or the command line sets always wins; a key
# the method's config class does not have is left out.
HOUSE_TRAINER: dict[str, Any] = {
    "max_steps": 60,                   # TRL: -1, i.e. num_train_epochs (not applied when the recipe sets those)
    "learning_rate": 5e-4,             # TRL: 2e-5 (sft), 1e-6 (dpo, kto, orpo, grpo, rloo), 1e-4 (reward)
    "lr_scheduler_type": "cosine",     # TRL: linear
    "max_length": 128,                 # TRL: 1024 (grpo and rloo have no max_length)
    "save_steps": 20,                  # TRL: 500
    "save_total_limit": 2,             # TRL: keep every checkpoint
    "logging_steps": 5,                # TRL: 10
    "activation_checkpointing": False,  # TRL: on (not applied when the recipe sets gradient_checkpointing)
    "bf16": False,                     # TRL: on unless fp16; transformers refuses it on a CPU
    "disable_tqdm": True,              # log lines rather than progress bars, for a task log
}
HOUSE_TRAINER_BY_METHOD: dict[str, dict[str, Any]] = {
    "sft": {"completion_only_loss": True},  # TRL: decided by the data
    "grpo": {"beta": 0.1, "num_generations": 4, "max_completion_length": 32},  # TRL: 0.0, 8, 512
    "rloo": {"beta": 0.1, "num_generations": 4, "max_completion_length": 32},  # TRL: 0.05, 2, 512
}
# A house value steps aside when the recipe sets one of these instead.
HOUSE_YIELDS = {"max_steps": ("num_train_epochs",), "activation_checkpointing": ("gradient_checkpointing",)}
# ``data_seed`` follows the effective ``seed`` unless the recipe sets it (same data order on a resume).

# Under a recipe's ``model:`` section (trl.ModelConfig).
HOUSE_MODEL: dict[str, Any] = {
    "dtype": "auto",                   # TRL: float32; "auto" keeps the checkpoint's dtype (transformers' default)
    "lora_r": 8,                       # TRL: 16
    "lora_alpha": 16,                  # TRL: 32
    "lora_target_modules": "all-linear",  # TRL: peft's per-architecture list
    "use_bnb_nested_quant": True,      # TRL: off (QLoRA's double quantization)
}

# Deployment settings of the cost figures: price of one GPU-hour (a number) and its currency.
PRICE_ENV = "LLMOPS_GPU_HOUR_PRICE"
CURRENCY_ENV = "LLMOPS_COST_CURRENCY"
# With LLMOPS_RESULT_LOG=1 (a TrainJob's nodes), rank 0 logs its result as one line with this prefix.
RESULT_LOG_ENV = "LLMOPS_RESULT_LOG"
RESULT_LOG_PREFIX = "llmops-result: "

# Fields of TRL's classes that the step decides, with what to set instead.
PIPELINE_OWNED = {
    "trainer": {
        "output_dir": "the top-level output_dir decides where the step writes; checkpoints go to "
                      "{output_dir}/checkpoints",
        "resume_from_checkpoint": "the step resumes from the last complete checkpoint in {output_dir}/checkpoints "
                                  "by itself",
    },
    "model": {"model_name_or_path": "set the top-level base_model"},
}
# settings checked here because TRL would only fail on them deep inside training, or not at all
POSITIVE = ("per_device_train_batch_size", "gradient_accumulation_steps", "max_length", "save_steps", "logging_steps",
            "num_generations", "max_completion_length", "learning_rate", "temperature")


def trl_config_class(method: str) -> type:
    """The TRL config class of ``method`` (``trl.DPOConfig``, ...)."""
    return _trl_class(method, 1)


def trl_trainer_class(method: str) -> type:
    """Looked up at call time, so a caller that swaps ``trl.SFTTrainer`` for a subclass gets its own."""
    return _trl_class(method, 2)


def _trl_class(method: str, which: int) -> type:
    import warnings

    module_name = TRL_CLASSES[method][0]
    with warnings.catch_warnings():  # trl.experimental announces itself on import
        warnings.simplefilter("ignore")
        module = importlib.import_module(module_name)
    return getattr(module, TRL_CLASSES[method][which])


def _qualified(cls: type) -> str:
    """The name a user imports the class by: ``trl.DPOConfig``, ``trl.experimental.orpo.ORPOConfig``."""
    for module_name in ("trl", *(c[0] for c in TRL_CLASSES.values())):
        if getattr(sys.modules.get(module_name), cls.__name__, None) is cls:
            return f"{module_name}.{cls.__name__}"
    return f"{cls.__module__}.{cls.__name__}"


# --- sections: a mapping checked against a TRL dataclass --------------------------------------


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """Each field's annotation, resolved; a field whose annotation cannot be resolved takes any value."""
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 (a forward reference TRL never resolves itself)
        return {f.name: Any if isinstance(f.type, str) else f.type for f in dataclasses.fields(cls)}


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in ("null", "~"))


def _as_field_type(value: Any, annotation: Any, where: str) -> Any:
    """``value`` (from YAML, or text from ``--set``) as the field's annotated type.

    Numbers, booleans, text, lists, mappings, Literals and enums are converted or refused with what
    was expected; anything more complex passes as it is, for TRL's own ``__post_init__`` to check.
    Enums stay their text value, so the config stays plain YAML.
    """
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and _is_null(value):
            return None
        options = [a for a in args if a is not type(None)]
        if str in options and any(isinstance(a, type) and issubclass(a, enum.Enum) for a in options):
            options.remove(str)  # `SchedulerType | str`: the text must name a member
        plain_text = isinstance(value, str) and not ("," in value or value.lstrip().startswith("["))

        def rank(option: Any) -> int:  # typed options first, free text last; plain text is no list
            if option is str:
                return 2
            return (3 if plain_text else 1) if typing.get_origin(option) in (list, tuple) else 0

        options.sort(key=rank)
        errors = []
        for option in options:
            try:
                return _as_field_type(value, option, where)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0] if errors else ConfigError(f"{where}: unexpected value {value!r}")
    if origin is typing.Literal:
        for option in args:
            candidate = value
            if isinstance(option, bool) and isinstance(value, str):
                candidate = {"true": True, "false": False}.get(value.lower(), value)
            if candidate == option and type(candidate) is type(option):
                return option
        raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        raw = value.value if isinstance(value, enum.Enum) else value
        members = [m.value for m in annotation]
        if isinstance(raw, bool) and ("no" if raw is False else "yes") in members:
            raw = "no" if raw is False else "yes"  # YAML 1.1 reads an unquoted `no` as false
        if raw not in members:
            raise ConfigError(f"{where}: expected one of {', '.join(map(str, members))}, got {value!r}")
        return raw
    if annotation is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:  # an int is a float to TRL: 20 stays 20, whether it came from YAML or from --set
            return int(value)
        except ValueError:
            pass
    if annotation in (int, float, bool, str) or origin in (list, tuple):
        converted = coerce(value, annotation, where)  # a tuple stays a list: the config stays plain YAML
        if origin is list and args and args[0] is not Any:
            converted = [_as_field_type(v, args[0], f"{where}[{i}]") for i, v in enumerate(converted)]
        return converted
    if annotation is dict or origin is dict:
        parsed = _yaml_value(value) if isinstance(value, str) else value
        if not isinstance(parsed, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return parsed
    return value


def _yaml_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _checked_section(values: dict[str, Any], cls: type, section: str, method: str) -> dict[str, Any]:
    """A recipe section with known keys only, each value of its field's type."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    owned = PIPELINE_OWNED.get(section, {})
    for key in values:
        if key in owned:
            raise ConfigError(f"train {method}: {section}.{key} is the pipeline's: {owned[key]}")
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(_unknown_message(unknown, sorted(set(fields) - set(owned)), cls, section, method))
    hints = _field_types(cls)
    checked = {}
    for key, value in values.items():
        where = f"train {method}: {section}.{key}"
        checked[key] = converted = _as_field_type(value, hints.get(key, Any), where)
        choices = fields[key].metadata.get("choices")
        if choices and converted is not None and converted not in choices:
            raise ConfigError(f"{where}: expected one of {', '.join(map(str, choices))}, got {value!r}")
    return checked


def _unknown_message(unknown: list[str], known: list[str], cls: type, section: str, method: str) -> str:
    name = _qualified(cls)
    close = {key: difflib.get_close_matches(key, known, n=3, cutoff=0.7) for key in unknown}
    head = f"train {method}: unknown {section} setting(s) {', '.join(unknown)} for {name}"
    if all(close.values()):
        hints = "; ".join(f"{key}: did you mean {' or '.join(close[key])}?" for key in unknown)
        return f"{head}; {hints} ({len(known)} settings in all; help({name}) describes them)"
    return f"{head}; known settings are: {', '.join(known)}"


# --- the config ------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Settings of ``llmops train``; :func:`config_class` gives each method's, which checks ``trainer:``."""

    # the method this config is for: set by config_class(method); "" = checked when train() is given one
    method: ClassVar[str] = ""
    # Top-level keys of recipes written before the trainer:/model: sections, and where they went
    # (core.config.build names the new place instead of only listing the known settings).
    MOVED: ClassVar[dict[str, str]] = {
        **{key: f"trainer.{key}" for key in (
            "max_steps", "learning_rate", "lr_scheduler_type", "warmup_steps", "per_device_train_batch_size",
            "gradient_accumulation_steps", "max_length", "seed", "save_steps", "save_total_limit", "logging_steps",
            "bf16", "beta", "loss_type", "loss_weights", "completion_only_loss", "num_generations",
            "max_completion_length", "temperature")},
        "gradient_checkpointing": "trainer.gradient_checkpointing",
        "lora": "model.use_peft", "lora_r": "model.lora_r", "lora_alpha": "model.lora_alpha",
        "lora_dropout": "model.lora_dropout", "lora_target_modules": "model.lora_target_modules",
        "load_in_4bit": "model.load_in_4bit",
    }

    base_model: str = field("", path="model", help="base model: a local folder or a hub id (from_pretrained)")
    train_data: str = field("", path="input", help="training data: prompt/completion rows for sft, prompt/chosen/rejected for the others")
    output_dir: str = field("", path="output", help="where checkpoints and the final model go (default: the run's train/ folder)")
    num_processes: int = field(1, help="training processes, one per GPU; above 1 the step runs under accelerate launch")
    # the sections are mappings here; each method's config_class gives them their help and checks them
    trainer: dict[str, Any] = field(
        default_factory=dict, help="settings of the method's TRL config class")
    model: dict[str, Any] = field(
        default_factory=dict, help="model loading, LoRA and quantization (trl.ModelConfig)")
    reward_model: str = field("", path="model", help="grpo, rloo: a trained reward model (folder or hub id); empty: train one first from train_data")
    reward_max_steps: int = field(0, help="grpo, rloo: steps for the reward model trained first (0: trainer.max_steps)")
    reward_trainer: dict[str, Any] = field(
        default_factory=dict,
        help="grpo, rloo: trl.RewardConfig settings of the reward model trained first; the trainer settings "
             "RewardConfig also has carry over from trainer, these win")
    system_metrics_interval: float = field(10.0, help="seconds between CPU/GPU/memory samples logged to MLflow (0: off)")
    log_model: bool = field(True, help="log the final model (adapter + base reference, or full weights) on the MLflow run")

    def __post_init__(self) -> None:
        for section in ("trainer", "model", "reward_trainer"):
            value = getattr(self, section)
            require(isinstance(value, dict), f"train: {section} must be a mapping of settings, got {value!r}")
        if self.method:  # what was written wrong first, then what is missing
            self._check_sections(self.method)
        require(bool(self.base_model), "train: base_model is required (a local folder or a hub id)")
        require(bool(self.train_data), "train: train_data is required (a JSONL or Parquet URI)")
        require(self.num_processes > 0, f"train: num_processes must be a positive integer, got {self.num_processes}")
        require(self.reward_max_steps >= 0, f"train: reward_max_steps must be 0 or more, got {self.reward_max_steps}")
        require(self.system_metrics_interval >= 0,
                f"train: system_metrics_interval must be 0 or more seconds, got {self.system_metrics_interval}")
        self.output_dir = self.output_dir or RunContext.from_env().step_dir("train")

    def _check_sections(self, method: str) -> None:
        from trl import ModelConfig, RewardConfig

        self.trainer = _checked_section(self.trainer, trl_config_class(method), "trainer", method)
        _check_trainer_values(trainer_settings(self, method), self.trainer, method)
        self.model = _checked_section(self.model, ModelConfig, "model", method)
        model_config(self, method)  # ModelConfig's own checks and the house ones
        if method in RL_METHODS:
            self.reward_trainer = _checked_section(self.reward_trainer, RewardConfig, "reward_trainer", method)
            require(not (self.reward_max_steps and "max_steps" in self.reward_trainer),
                    f"train {method}: reward_max_steps and reward_trainer.max_steps both set the reward model's "
                    "steps; keep one")
        else:
            require(not self.reward_trainer, f"train {method}: reward_trainer sets the reward model grpo and rloo "
                                             f"train first; {method} trains none, so leave it out")


def _check_trainer_values(settings: dict[str, Any], given: dict[str, Any], method: str) -> None:
    max_steps = settings.get("max_steps", -1)
    if "num_train_epochs" in given:
        require(max_steps == -1 or max_steps > 0,
                f"train {method}: trainer.max_steps must be a positive integer, or -1 to train num_train_epochs, "
                f"got {max_steps}")
    else:
        require(isinstance(max_steps, int) and max_steps > 0,
                f"train {method}: trainer.max_steps must be a positive integer, got {max_steps} "
                "(or set trainer.num_train_epochs instead)")
    for name in POSITIVE:
        value = settings.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            kind = "integer" if isinstance(value, int) and name not in ("learning_rate", "temperature") else "number"
            require(value > 0, f"train {method}: trainer.{name} must be a positive {kind}, got {value}")
    beta = settings.get("beta")
    require(beta is None or beta >= 0, f"train {method}: trainer.beta must be 0 or more, got {beta}")
    if method == "dpo":
        loss_type = settings.get("loss_type", ["sigmoid"])
        loss_type = [loss_type] if isinstance(loss_type, str) else loss_type
        require(bool(loss_type), f"train {method}: trainer.loss_type needs at least one DPO loss variant")
        unknown = [t for t in loss_type if t not in DPO_LOSS_TYPES]
        require(not unknown, f"train {method}: unknown loss_type {', '.join(unknown)}; "
                             f"TRL offers {', '.join(DPO_LOSS_TYPES)}")
        weights = settings.get("loss_weights")
        require(not weights or len(weights) == len(loss_type),
                f"train {method}: trainer.loss_weights has {len(weights or [])} values for {len(loss_type)} "
                "loss_type(s)")


def trainer_settings(config: TrainConfig, method: str) -> dict[str, Any]:
    """What the method's TRL config is built with (but output_dir): the house base layer, then ``trainer:``."""
    cls = trl_config_class(method)
    known = {f.name for f in dataclasses.fields(cls)}
    given = config.trainer
    settings = {key: value for key, value in _house_trainer(method).items()
                if key in known and not any(other in given for other in HOUSE_YIELDS.get(key, ()))}
    settings.update(given)
    if "data_seed" not in given and "data_seed" in known:
        default_seed = next(f.default for f in dataclasses.fields(cls) if f.name == "seed")
        settings["data_seed"] = settings.get("seed", default_seed)
    if settings.get("bf16") and "use_cpu" in known and "use_cpu" not in given and not _has_accelerator():
        # A GPU recipe (bf16) on a machine without one: transformers trains in bf16 on the CPU only
        # when told it is on the CPU, and refuses otherwise. The recipe's precision stays.
        settings["use_cpu"] = True
    if launched() and "use_cpu" in known and "use_cpu" not in given and not _has_accelerator():
        # torchrun across CPU-only nodes: accelerate forms the process group (gloo) only when told
        # it is on the CPU; otherwise every rank would train alone.
        settings["use_cpu"] = True
    return settings


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available() or (hasattr(torch.backends, "mps") and torch.backends.mps.is_available())


def trainer_args(config: TrainConfig, method: str, checkpoints: Path):
    """The method's TRL config object; its own checks (and the hardware's: bf16 on a CPU) run here."""
    cls = trl_config_class(method)
    try:
        return cls(**trainer_settings(config, method), output_dir=str(checkpoints))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"train {method}: {_qualified(cls)} refused the trainer settings: {exc}") from exc


def model_settings(config: TrainConfig, method: str) -> dict[str, Any]:
    """The house base layer, then ``model:``; a reward model's LoRA wraps a sequence classifier."""
    return {**_house_model(method), **config.model}


def model_config(config: TrainConfig, method: str):
    """``trl.ModelConfig`` of the recipe, checked; what get_peft_config and get_quantization_config read."""
    from trl import ModelConfig

    settings = model_settings(config, method)
    try:
        model = ModelConfig(**settings)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"train {method}: trl.ModelConfig refused the model settings: {exc}") from exc
    for key in ("load_in_4bit", "load_in_8bit"):
        require(not getattr(model, key) or model.use_peft,
                f"train {method}: model.{key} trains an adapter on frozen quantized weights; set model.use_peft: "
                "true as well")
    require(model.lora_r > 0, f"train {method}: model.lora_r must be positive, got {model.lora_r}")
    require(0 <= model.lora_dropout < 1,
            f"train {method}: model.lora_dropout must be in [0, 1), got {model.lora_dropout}")
    require(method != "reward" or model.lora_task_type == "SEQ_CLS",
            f"train reward: the reward model is a sequence classifier; model.lora_task_type must be SEQ_CLS, "
            f"got {model.lora_task_type}")
    return model


def _house_trainer(method: str) -> dict[str, Any]:
    return {**HOUSE_TRAINER, **HOUSE_TRAINER_BY_METHOD.get(method, {})}


def _house_model(method: str) -> dict[str, Any]:
    return {**HOUSE_MODEL, **({"lora_task_type": "SEQ_CLS"} if method == "reward" else {})}


def _house_summary(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


def _method_config(method: str) -> type[TrainConfig]:
    """``TrainConfig`` for one method, with that method's help for its sections (no trl import: --help stays fast)."""
    module_name, config_name, _ = TRL_CLASSES[method]
    house = {k: v for k, v in _house_trainer(method).items() if not (k == "max_length" and method in RL_METHODS)}
    trainer_help = (
        f"settings of {module_name}.{config_name}: any of its fields (e.g. learning_rate, weight_decay, "
        f"warmup_steps, max_grad_norm, {TRAINER_EXAMPLES[method]}); as a recipe's trainer: section, or here "
        f"KEY=VALUE (repeatable, same as --set trainer.KEY=VALUE). Over the house defaults: {_house_summary(house)}; "
        "data_seed follows seed"
    )
    model_help = (
        "trl.ModelConfig settings: dtype, attn_implementation, use_peft (LoRA), lora_r, lora_alpha, lora_dropout, "
        "lora_target_modules, use_dora, load_in_4bit (QLoRA, CUDA only), ...; KEY=VALUE (repeatable, same as "
        f"--set model.KEY=VALUE). Over the house defaults: {_house_summary(_house_model(method))}"
    )
    return dataclasses.make_dataclass(
        f"{config_name.removesuffix('Config')}TrainConfig",
        [("trainer", dict[str, Any], field(default_factory=dict, help=trainer_help)),
         ("model", dict[str, Any], field(default_factory=dict, help=model_help))],
        bases=(TrainConfig,),
        namespace={"method": method, "__doc__": f"Settings of ``llmops train {method}``.",
                   "__module__": __name__},
    )


# One config class per method (module-level, so that a config pickles to the MLflow logging process).
SFTTrainConfig = _method_config("sft")
DPOTrainConfig = _method_config("dpo")
RewardTrainConfig = _method_config("reward")
GRPOTrainConfig = _method_config("grpo")
RLOOTrainConfig = _method_config("rloo")
KTOTrainConfig = _method_config("kto")
ORPOTrainConfig = _method_config("orpo")
METHOD_CONFIGS: dict[str, type[TrainConfig]] = {
    "sft": SFTTrainConfig, "dpo": DPOTrainConfig, "reward": RewardTrainConfig, "grpo": GRPOTrainConfig,
    "rloo": RLOOTrainConfig, "kto": KTOTrainConfig, "orpo": ORPOTrainConfig,
}


def config_class(method: str) -> type[TrainConfig]:
    """``TrainConfig`` for one method: what ``llmops train <method>`` loads; it checks ``trainer:`` against
    that method's TRL config class when the recipe is loaded."""
    require(method in METHODS, f"train: method must be one of {METHODS}, got {method!r}")
    return METHOD_CONFIGS[method]


def for_method(config: TrainConfig, method: str) -> TrainConfig:
    """``config`` as ``method``'s config, checked as such (a plain TrainConfig, or another method's)."""
    if type(config) is config_class(method):
        return config
    return config_class(method)(**{f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init})


# --- running ---------------------------------------------------------------------------------


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
        step = path.name.removeprefix("checkpoint-")
        if path.name.startswith("checkpoint-") and step.isdigit() and (path / "trainer_state.json").is_file():
            candidates.append((int(step), path))
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
    log.info("train: launching %s", " ".join(command))
    returncode = subprocess.call(command, env=env)
    result_path = out / "result.json"
    if returncode != 0 or not result_path.is_file():
        raise RuntimeError(f"train {method}: accelerate launch with {config.num_processes} processes exited {returncode}")
    return json.loads(result_path.read_text())


# --- GPU-hours, cost, ranks -------------------------------------------------------------------

USAGE_METRICS = ("gpus", "train_wall_seconds", "gpu_hours", "gpu_hour_price", "cost")


def gpu_hour_price() -> float | None:
    """``$LLMOPS_GPU_HOUR_PRICE`` as a number (None when unset): what one GPU-hour costs here."""
    text = os.environ.get(PRICE_ENV, "").strip()
    if not text:
        return None
    try:
        price = float(text)
    except ValueError:
        price = -1.0
    require(price >= 0 and price != float("inf"),
            f"train: {PRICE_ENV} must be a price per GPU-hour, a number 0 or more, got {text!r}")
    return price


def gpus_per_node() -> int:
    """The GPUs this node's training uses: what the container sees (its GPU allocation); 0 on CPUs."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def training_nodes() -> int:
    """Nodes of the launch: ``WORLD_SIZE / LOCAL_WORLD_SIZE`` under torchrun / accelerate, else 1."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)) or world)
    return max(1, world // max(1, local))


def training_usage(wall_seconds: float, price: float | None) -> dict[str, Any]:
    """GPU-hours of this training (GPUs of every node x wall time of the step on rank 0) and, with a
    price, its cost: what the result, the MLflow run and the model card carry."""
    gpus = gpus_per_node() * training_nodes()
    usage: dict[str, Any] = {"gpus": gpus, "train_wall_seconds": round(wall_seconds, 3),
                             "gpu_hours": round(gpus * wall_seconds / 3600, 6)}
    if price is not None:
        usage.update(gpu_hour_price=price, cost=round(usage["gpu_hours"] * price, 6),
                     cost_currency=os.environ.get(CURRENCY_ENV, "").strip() or "USD")
    return usage


def _set_tags(run_id: str, tags: dict[str, str]) -> None:
    """Tags on the train run (called in the logging process, which passes the run's id first)."""
    from llmops_tasks.core import tracking

    client = tracking.client()
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


def _log_result(result: dict) -> None:
    """Rank 0 of a TrainJob says its result in its log, where the operator reads it (no shared
    file system between the Airflow worker and the nodes)."""
    if os.environ.get(RESULT_LOG_ENV) == "1" and is_main_process():
        log.info("%s%s", RESULT_LOG_PREFIX, json.dumps(result, sort_keys=True, default=str))


def _rank_callback():
    """A record per rank of a distributed launch (``{output_dir}/ranks/rank-N.json``): that it took
    part, in a process group of how many, and which steps it ran."""
    import socket

    from transformers import TrainerCallback

    class RankRecord(TrainerCallback):
        def __init__(self):
            self.steps: list[int] = []
            self.started = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):
            self.steps.append(state.global_step)

        def write(self, folder: Path, trainer) -> None:
            import torch.distributed as dist

            grouped = dist.is_available() and dist.is_initialized()
            record = {
                "rank": int(os.environ.get("RANK", "0")), "local_rank": int(os.environ.get("LOCAL_RANK", "0")),
                "node_rank": int(os.environ.get("GROUP_RANK", os.environ.get("PET_NODE_RANK", "0")) or 0),
                "world_size": dist.get_world_size() if grouped else 1,
                "backend": str(dist.get_backend()) if grouped else "",
                "hostname": socket.gethostname(), "pid": os.getpid(),
                "steps": self.steps, "global_step": trainer.state.global_step,
                "seconds": round(time.monotonic() - self.started, 3),
            }
            data.write_json(str(folder / f"rank-{record['rank']}.json"), record)

    return RankRecord()


def _mlflow_callback(run, every: int = 10):
    """Training logs to the MLflow run (a ``tracking.BackgroundRun``), handed over in batches of
    ``every`` log events, at each checkpoint and at the end; ``None`` (ranks other than 0): nothing.
    ``add`` takes metrics of the step's own (the progress figures) into the same batches."""
    from transformers import TrainerCallback

    class MlflowMetrics(TrainerCallback):
        def __init__(self):
            self.pending: list[tuple[str, float, int]] = []
            self.events = 0

        def add(self, metrics: dict[str, float], step: int) -> None:
            self.pending.extend((k, v, step) for k, v in metrics.items() if isinstance(v, (int, float)))

        def flush(self):
            if self.pending and run is not None:
                run.log_metrics(self.pending)
            self.pending, self.events = [], 0

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and state.is_world_process_zero:
                self.add(logs, state.global_step)
                self.events += 1
                if self.events >= every:
                    self.flush()

        def on_save(self, args, state, control, **kwargs):
            self.flush()  # what reached a checkpoint reaches MLflow too

        def on_train_end(self, args, state, control, **kwargs):
            self.flush()

    return MlflowMetrics()


# Progress lines in the train log: at a logging step, at most one per PROGRESS_MIN_GAP seconds (the
# first and the last always), and one at least every PROGRESS_EVERY seconds between logging steps.
PROGRESS_MIN_GAP = 5.0
PROGRESS_EVERY = 30.0


def _duration(seconds: float) -> str:
    """``12.3 s``, ``4 min 05 s``, ``2 h 07 min``: what a person reads in a task log."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _progress_callback(method: str, metrics=None):
    """Progress a person can follow, in place of transformers' printed dicts (``PrinterCallback``,
    which :func:`_quiet` removes): ``train sft: step 40/120 (33%), loss 0.812, 1,234 tokens/s,
    12.3 s elapsed, ~24.6 s left``. At each logging step the same figures (``progress``,
    ``tokens_per_second`` or ``samples_per_second``, ``elapsed_seconds``, ``eta_seconds``) go to
    ``metrics`` (the MLflow callback's ``add``). Tokens are TRL's own count (``num_tokens`` in its
    logs) or the trainer's ``num_input_tokens_seen``; without either (ORPO), samples from the batch
    sizes. Rates and the time left count this process's steps only, so a resumed run does not look
    faster than it is."""
    import time

    from transformers import TrainerCallback

    class TrainingProgress(TrainerCallback):
        def __init__(self):
            self.started = 0.0
            self.first_step = 0
            self.first_tokens = 0
            self.tokens: float | None = None
            self.loss: float | None = None
            self.last_line = -1.0
            self.last_step = -1

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.monotonic()
            self.first_step = state.global_step
            self.first_tokens = state.num_input_tokens_seen or 0
            if state.is_world_process_zero:
                resumed = f", resuming at step {state.global_step}" if state.global_step else ""
                log.info("train %s: %d steps%s", method, state.max_steps, resumed)

        def figures(self, args, state) -> dict[str, float]:
            elapsed = max(time.monotonic() - self.started, 1e-9)
            done = state.global_step - self.first_step
            figures = {"progress": state.global_step / state.max_steps if state.max_steps else 0.0,
                       "elapsed_seconds": elapsed}
            if self.tokens is not None:
                figures["tokens_per_second"] = self.tokens / elapsed
            elif state.num_input_tokens_seen:
                figures["tokens_per_second"] = (state.num_input_tokens_seen - self.first_tokens) / elapsed
            else:
                samples = done * args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
                figures["samples_per_second"] = samples / elapsed
            if done > 0 and state.max_steps:
                figures["eta_seconds"] = max(state.max_steps - state.global_step, 0) * elapsed / done
            return figures

        def line(self, args, state, figures: dict[str, float]) -> None:
            percent = int(100 * figures["progress"])
            parts = [f"step {state.global_step}/{state.max_steps} ({percent}%)"]
            parts.append(f"loss {self.loss:.3f}" if self.loss is not None else "loss -")
            if "tokens_per_second" in figures:
                parts.append(f"{figures['tokens_per_second']:,.0f} tokens/s")
            else:
                parts.append(f"{figures['samples_per_second']:,.1f} samples/s")
            parts.append(f"{_duration(figures['elapsed_seconds'])} elapsed")
            if "eta_seconds" in figures:
                parts.append(f"~{_duration(figures['eta_seconds'])} left")
            log.info("train %s: %s", method, ", ".join(parts))
            self.last_line, self.last_step = time.monotonic(), state.global_step

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs or not state.is_world_process_zero:
                return  # the final summary (train_loss, train_runtime) or an evaluation
            self.loss = float(logs["loss"])
            if isinstance(logs.get("num_tokens"), (int, float)):
                self.tokens = float(logs["num_tokens"])  # TRL's count of this trainer's tokens
            figures = self.figures(args, state)
            if metrics is not None:
                metrics(figures, state.global_step)
            now = time.monotonic()
            if self.last_line < 0 or now - self.last_line >= PROGRESS_MIN_GAP or state.global_step >= state.max_steps:
                self.line(args, state, figures)

        def on_step_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero and time.monotonic() - max(self.last_line, self.started) >= PROGRESS_EVERY:
                self.line(args, state, self.figures(args, state))

        def on_train_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero and state.global_step != self.last_step:
                self.line(args, state, self.figures(args, state))

    return TrainingProgress()


def _no_progress_bars() -> None:
    """No progress bars from datasets and transformers while the trainer prepares the data and saves:
    drawn into a task log they are noise, and those steps take seconds."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def _quiet(trainer) -> None:
    """No log dicts printed to stdout, no tqdm bars by the trainer: :func:`_progress_callback` says it."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def _quantization(config: TrainConfig, method: str):
    """bitsandbytes loading (QLoRA) from the model section, through TRL's helper; refused where it cannot work."""
    model = model_config(config, method)
    if not (model.load_in_4bit or model.load_in_8bit):
        return None
    key = "load_in_4bit" if model.load_in_4bit else "load_in_8bit"
    what = f"model.{key}" + (" (QLoRA)" if model.load_in_4bit else "")
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"train: {what} needs a CUDA GPU and none is visible; "
                          f"set model.{key}: false to train LoRA in full precision")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"train: {what} needs bitsandbytes: pip install 'llmops-airflow[qlora]'") from exc
    from trl import get_quantization_config

    if model.dtype in (None, "auto"):  # bitsandbytes computes in a real dtype: the training precision's
        compute = "bfloat16" if trainer_settings(config, method).get("bf16") else "float16"
        model = dataclasses.replace(model, dtype=compute)
    return get_quantization_config(model)


def _from_pretrained_kwargs(model, args, quantization) -> dict[str, Any]:
    """How the base model is loaded, from the model section as TRL's own scripts read it, and the
    trainer's ``model_init_kwargs`` over that (TRL loads a reference model with the same ones)."""
    kwargs: dict[str, Any] = {"dtype": model.dtype}
    if model.model_revision != "main":
        kwargs["revision"] = model.model_revision
    if model.attn_implementation:
        kwargs["attn_implementation"] = model.attn_implementation
    if getattr(args, "trust_remote_code", False):
        kwargs["trust_remote_code"] = True
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    kwargs.update(getattr(args, "model_init_kwargs", None) or {})
    return kwargs


def _reward_config(config: TrainConfig, out: Path) -> TrainConfig:
    """The reward model grpo/rloo train first: the trainer settings RewardConfig shares, reward_max_steps,
    then ``reward_trainer``; the same model section, its LoRA (if any) on a sequence classifier."""
    from trl import RewardConfig

    shared = {f.name for f in dataclasses.fields(RewardConfig)}
    trainer = {k: v for k, v in config.trainer.items() if k in shared}
    if config.reward_max_steps:
        trainer["max_steps"] = config.reward_max_steps
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init}
    values.update(
        output_dir=str(out / "reward"), num_processes=1,  # already inside this step's launch, if any
        trainer={**trainer, **config.reward_trainer}, reward_trainer={},
        model={k: v for k, v in config.model.items() if k != "lora_task_type"},
    )
    return config_class("reward")(**values)


def _reward_model_for(config: TrainConfig, out: Path) -> tuple[str, dict | None]:
    """The reward model RL trains against: the configured one, or one trained now into ``{out}/reward``."""
    if config.reward_model:
        return config.reward_model, None
    reward = train(_reward_config(config, out), "reward")
    return reward["model_dir"], reward


def _pretrained(cls: type, setting: str, name: str, **kwargs: Any):
    """``cls.from_pretrained(name)``; a model a setting names that cannot be loaded (no such hub id, a
    folder with no model in it) is a configuration error naming the setting, not a traceback."""
    try:
        return cls.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"train: {setting} (--{setting.replace('_', '-')}) {name!r} cannot be loaded: "
                          f"{reason}") from exc


def _build_trainer(config: TrainConfig, method: str, rows: list[dict], args, callbacks: list, out: Path,
                   quantization=None):
    """The TRL trainer of ``method`` with ``args``, its model and tokenizer loaded from ``base_model``.

    The models are loaded here rather than by TRL from a name: the reward model needs a one-label
    sequence-classification head and the tokenizer's pad token, and every method loads the same way.
    """
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl import get_peft_config

    model_args = model_config(config, method)
    torch.manual_seed(args.seed)
    load = _from_pretrained_kwargs(model_args, args, quantization)
    tokenizer_kwargs = {k: load[k] for k in ("revision", "trust_remote_code") if k in load}
    tokenizer = _pretrained(AutoTokenizer, "base_model", config.base_model, **tokenizer_kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    shared = {"args": args, "train_dataset": Dataset.from_list(rows), "processing_class": tokenizer,
              "peft_config": get_peft_config(model_args), "callbacks": callbacks}
    trainer_cls = trl_trainer_class(method)
    extra: dict = {}
    if method == "reward":
        model = _pretrained(AutoModelForSequenceClassification, "base_model", config.base_model, num_labels=1, **load)
        model.config.pad_token_id = tokenizer.pad_token_id
        return trainer_cls(model=model, **shared), tokenizer, extra
    if method in RL_METHODS:
        reward_path, reward_result = _reward_model_for(config, out)
        extra["reward_model"] = reward_path
        if reward_result:
            extra["reward_result"] = {k: reward_result[k] for k in ("model_dir", "global_step", "mlflow_run_id")
                                      if k in reward_result}  # ranks other than 0 only know model_dir
        reward_tokenizer = _pretrained(AutoTokenizer, "reward_model", reward_path)
        if reward_tokenizer.pad_token is None:
            reward_tokenizer.pad_token = reward_tokenizer.eos_token
        model = _pretrained(AutoModelForCausalLM, "base_model", config.base_model, **load)
        trainer = trainer_cls(model=model, reward_funcs=reward_path, reward_processing_classes=reward_tokenizer,
                              **shared)
        return trainer, tokenizer, extra
    model = _pretrained(AutoModelForCausalLM, "base_model", config.base_model, **load)
    return trainer_cls(model=model, **shared), tokenizer, extra


def _log_final_model(run_id: str, method: str, config: TrainConfig, model_dir: Path, adapter_dir: Path | None) -> str:
    """The trained model on the train run: the adapter plus the base model's name, or the full weights.

    Generators are logged as the serving pyfunc (``serving/model.py``) with pinned pip requirements, so
    the run's model loads with ``mlflow.pyfunc.load_model``; a reward model as its folder.
    """
    import mlflow

    from llmops_tasks.core import tracking

    mlflow_client = tracking.client()
    mlflow_client.set_tag(run_id, "llmops.base_model", config.base_model)
    if method == "reward":
        mlflow_client.log_artifacts(run_id, str(model_dir), artifact_path="reward_model")
        return f"runs:/{run_id}/reward_model"
    weights = adapter_dir if adapter_dir is not None else model_dir
    with mlflow.start_run(run_id=run_id, log_system_metrics=False):
        info = flavor.log_generator(
            {"model": str(weights)}, adapter=adapter_dir is not None,
            metadata={"base_model": config.base_model, "method": method,
                      "weights": "lora-adapter" if adapter_dir is not None else "full"},
        )
    return info.model_uri


def run_params(config: TrainConfig, method: str) -> dict[str, Any]:
    """The train run's MLflow parameters: the pipeline's settings, then the effective trainer and model
    settings under their TRL names (house defaults included), the reward model's under ``reward_trainer.``."""
    params = {k: v for k, v in to_dict(config).items() if k not in ("trainer", "model", "reward_trainer")}
    params.update(trainer_settings(config, method))
    params.update(model_settings(config, method))
    params.update({f"reward_trainer.{k}": v for k, v in config.reward_trainer.items()})
    params["method"] = method
    return params


def train(config: TrainConfig, method: str) -> dict:
    require(method in METHODS, f"train: method must be one of {METHODS}, got {method!r}")
    started = time.monotonic()
    price = gpu_hour_price()  # a bad deployment setting is refused before anything runs
    config = for_method(config, method)
    out = Path(data.local_path(config.output_dir))
    result_path = out / "result.json"
    fingerprint = config_hash(config) + "-" + method
    if result_path.is_file():
        previous = json.loads(result_path.read_text())
        if previous.get("fingerprint") == fingerprint and Path(previous.get("model_dir", "")).is_dir():
            previous["reused"] = True
            _log_result(previous)
            return previous

    checkpoints = out / "checkpoints"
    quantization = _quantization(config, method)  # refused before any data is read or run opened
    launching = config.num_processes > 1 and not launched()
    # TRL's own checks, before the data; a launching parent leaves them (and the GPUs) to its processes
    args = None if launching else trainer_args(config, method, checkpoints)
    if args is not None:
        # The whole resolved config (defaults < recipe < flags / the trigger form), as the run stores it.
        resolved = run_params(config, method)
        log.info("train %s: %s, resolved settings (defaults < recipe < flags):\n%s", method, _qualified(type(args)),
                 "\n".join(f"  {k}: {v}" for k, v in sorted(resolved.items())))
    rows = _load_rows(config, method)
    if launching:
        return _launch_distributed(config, method, out)
    main = is_main_process()

    import contextlib

    from llmops_tasks.core import tracking

    # MLflow's work (run, system metrics, the final model) is done by a separate process, on another
    # core, while this one imports, loads and trains; only rank 0 has a run.
    run_context = tracking.background_step_run(
        f"train-{method}", params=run_params(config, method), tags={"method": method},
        system_metrics_interval=config.system_metrics_interval,
        warmups=(flavor.prepare,) if config.log_model else (),
    ) if main else contextlib.nullcontext(None)
    with run_context as run:
        to_mlflow = _mlflow_callback(run)
        callbacks = [_progress_callback(method, to_mlflow.add if run is not None else None), to_mlflow]
        ranks = _rank_callback() if launched() else None
        if ranks is not None:
            callbacks.append(ranks)
        _no_progress_bars()
        trainer, tokenizer, extra = _build_trainer(config, method, rows, args, callbacks, out, quantization)
        _quiet(trainer)
        resume = last_complete_checkpoint(checkpoints)
        if resume:
            log.info("train %s: resuming from %s", method, resume)
        if run is not None:
            log.info("train %s: MLflow run %s", method, run.run_id)  # fails here, before training, without one
        outcome = trainer.train(resume_from_checkpoint=resume)
        model_dir = out / "model"
        adapter_dir = out / "adapter" if model_config(config, method).use_peft else None
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
        if ranks is not None:
            ranks.write(out / "ranks", trainer)
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
            **training_usage(time.monotonic() - started, price),
        }
        run.log_metrics([("train_loss", result["train_loss"], result["global_step"]),
                         ("final_loss", result["final_loss"], result["global_step"]),
                         *((name, float(result[name]), result["global_step"]) for name in USAGE_METRICS
                           if name in result)])
        if result.get("cost_currency"):
            run.call(_set_tags, {"llmops.cost_currency": result["cost_currency"]})
        if config.log_model:
            result["mlflow_model_uri"] = run.call(_log_final_model, method, config, model_dir, adapter_dir)
    data.write_json(str(result_path), result)
    _log_result(result)
    return result


def command():
    from llmops_tasks.core.command import Command

    def runner(method: str):
        return lambda config: train(config, method)

    return {method: Command(config_class(method), runner(method), HELP[method]) for method in METHODS}
