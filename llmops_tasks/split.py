"""``llmops split``: derive the train and eval files from one preference data set.

Rows are assigned by a hash of their prompt's :func:`~llmops_tasks.text.records.prompt_key` (the
normalized form validate's contamination check compares too), so the split is stable across runs and
snapshots (a prompt never moves between train and eval when new rows arrive) and the eval set
shares no prompt with training. From the preference rows it writes:

- ``train_preference.jsonl`` (prompt, chosen, rejected) for DPO / reward modelling,
- ``train_sft.jsonl`` (prompt, completion = chosen) for SFT,
- ``eval.jsonl`` (prompt, reference = chosen, chosen, rejected) for evaluation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from llmops_tasks.core import data, tracking
from llmops_tasks.core.config import field, require
from llmops_tasks.core.errors import StepFailed
from llmops_tasks.core.settings import RunContext
from llmops_tasks.text.records import answer_text, prompt_key


@dataclass
class SplitConfig:
    dataset: str = field("", path="input", help="preference data set (JSONL or Parquet URI)")
    eval_fraction: float = field(0.2, help="share of distinct prompts held out for evaluation")
    salt: str = field("llmops", help="changes which prompts land in eval; keep it fixed to keep the eval set frozen")
    out_dir: str = field("", path="output", help="output folder (default: the run's split/ folder)")

    def __post_init__(self) -> None:
        require(bool(self.dataset), "split: dataset is required (a JSONL or Parquet URI)")
        require(0.0 < self.eval_fraction < 1.0, f"split: eval_fraction must be between 0 and 1, got {self.eval_fraction}")
        self.out_dir = self.out_dir or RunContext.from_env().step_dir("split")


def in_eval(prompt, fraction: float, salt: str) -> bool:
    digest = hashlib.sha256(f"{salt}\0{prompt_key(prompt)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def run(config: SplitConfig) -> dict:
    """The whole step: write the three files and record the step's MLflow run (sizes, outputs)."""
    try:
        result, failure = split(config), None
    except StepFailed as exc:
        result, failure = exc.result, exc
    result["mlflow_run_url"] = tracking.record_step(
        "split", {"dataset": config.dataset, "eval_fraction": config.eval_fraction, "salt": config.salt,
                  "out_dir": config.out_dir, "ok": failure is None},
        {k: result[k] for k in ("train_rows", "eval_rows") if k in result}, [])
    if failure is not None:
        raise failure
    return result


def split(config: SplitConfig) -> dict:
    """Assign every row by its prompt; write train_preference / train_sft / eval JSONL under out_dir."""
    try:
        rows = data.read_records(config.dataset)
    except data.DataError as exc:
        raise StepFailed(f"split: {exc}") from exc
    required = data.REQUIRED_COLUMNS["preference"]
    for row in rows:
        missing = [c for c in required if c not in row or row[c] is None]
        if missing:
            raise StepFailed(
                f"split: {config.dataset} line {row['_line']} lacks {', '.join(missing)}; "
                f"a preference data set needs {', '.join(required)}"
            )
    train, held_out = [], []
    for row in rows:
        (held_out if in_eval(row["prompt"], config.eval_fraction, config.salt) else train).append(row)
    if not train or not held_out:
        raise StepFailed(
            f"split: {config.dataset} has {len(rows)} rows; eval_fraction={config.eval_fraction} leaves "
            f"{len(train)} for training and {len(held_out)} for evaluation; both need at least one row"
        )
    out = config.out_dir.rstrip("/")
    paths = {
        "train_preference": f"{out}/train_preference.jsonl",
        "train_sft": f"{out}/train_sft.jsonl",
        "eval": f"{out}/eval.jsonl",
    }
    keep = ("id", "source")
    data.write_jsonl(
        paths["train_preference"],
        ({"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"], **{k: r[k] for k in keep if k in r}}
         for r in train),
    )
    data.write_jsonl(
        paths["train_sft"],
        ({"prompt": r["prompt"], "completion": r["chosen"], **{k: r[k] for k in keep if k in r}} for r in train),
    )
    data.write_jsonl(
        paths["eval"],
        ({"prompt": r["prompt"], "reference": answer_text(r["chosen"]), "chosen": r["chosen"], "rejected": r["rejected"],
          **{k: r[k] for k in keep if k in r}} for r in held_out),
    )
    return {**paths, "train_rows": len(train), "eval_rows": len(held_out), "eval_hash": data.content_hash(paths["eval"])}


def command():
    from llmops_tasks.core.command import Command

    return Command(SplitConfig, run, "split a preference data set into train / eval files, by prompt")
