"""What `llmops train dpo` costs on top of TRL itself.

The same DPO training (tiny local model, same data, steps, batch, seed, checkpoint and logging
cadence) runs in a fresh interpreter twice per round: through the CLI (config loading, data
checks, an MLflow child run with params, batched metrics and system metrics written by its
logging process, resume check, final model saved and logged on the run) and through a bare TRL
script that only trains and saves. The bare script's DPOConfig gets exactly the settings the CLI
resolves from the recipe (``train.trainer_settings``: the house layer under the recipe's
``trainer:`` section), so both sides train the same way. The MLflow store is created before the timings, as in a
deployment. Rounds alternate the order so that a busy machine penalizes neither side. Prints each
wall time, the medians, their difference (the fixed cost of the CLI) and their ratio.
Target: ratio <= 1.05.

    python bench/train_overhead.py [--steps 60] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BARE_TRL = """
import sys
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer
import json

base, data_file, out, settings_file = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
rows = [json.loads(line) for line in open(data_file)]
rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows]
settings = json.loads(open(settings_file).read())
torch.manual_seed(settings.get("seed", 42))
tokenizer = AutoTokenizer.from_pretrained(base)
model = AutoModelForCausalLM.from_pretrained(base)
args = DPOConfig(output_dir=out + "/checkpoints", **settings)
trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
trainer.train()
trainer.model.save_pretrained(out + "/model")
tokenizer.save_pretrained(out + "/model")
"""


def timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="DPO steps per training (default 60, the tiny recipe)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (CLI, bare TRL) runs, order alternating")
    args = parser.parse_args()

    from llmops_tasks import split, train
    from llmops_tasks.core import data, settings
    from llmops_tasks.core.config import load
    from llmops_tasks.local import bootstrap, samples

    work = Path(tempfile.mkdtemp(prefix="llmops-bench-train-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
           "LLMOPS_MLFLOW_ARTIFACTS": str(work / "mlartifacts"), "PYTHONWARNINGS": "ignore"}
    for key in ("LLMOPS_DAG_ID", "LLMOPS_RUN_ID", "LLMOPS_TASK_ID", "LLMOPS_RESULT_FILE"):
        env.pop(key, None)
    os.environ.update({k: env[k] for k in ("MLFLOW_TRACKING_URI", "LLMOPS_MLFLOW_ARTIFACTS")})  # split records a run
    base = bootstrap.build_tiny_model(work / "base", samples.corpus_text())
    data.write_jsonl(str(work / "preference.jsonl"), samples.preference_rows())
    train_file = split.run(split.SplitConfig(dataset=str(work / "preference.jsonl"), out_dir=str(work / "split")))[
        "train_preference"]
    # The tracking store exists before any training in a deployment: create and migrate it once,
    # outside the timings, as `llmops init` / the MLflow server would.
    subprocess.run([sys.executable, "-c", "from llmops_tasks.core import tracking; tracking.experiment_id()"],
                   env=env, check=True, cwd=ROOT)
    script = work / "bare_trl_dpo.py"
    script.write_text(BARE_TRL)
    recipe = settings.packaged_recipe("dpo_tiny.yaml")
    resolved = load(train.config_class("dpo"), recipe, {"base_model": str(base), "train_data": train_file,
                                                         "output_dir": str(work / "resolved"),
                                                         "trainer": {"max_steps": args.steps}})
    settings_file = work / "dpo_settings.json"
    settings_file.write_text(json.dumps(train.trainer_settings(resolved, "dpo")))

    times: dict[str, list[float]] = {"llmops": [], "trl": []}
    for round_ in range(args.rounds):
        cli = [sys.executable, "-m", "llmops_tasks.cli", "train", "dpo", "--config", recipe,
               "--base-model", str(base), "--train-data", train_file,
               "--output-dir", str(work / f"llmops-{round_}"), "--set", f"trainer.max_steps={args.steps}"]
        bare = [sys.executable, str(script), str(base), train_file, str(work / f"trl-{round_}"), str(settings_file)]
        order = [("llmops", cli), ("trl", bare)] if round_ % 2 == 0 else [("trl", bare), ("llmops", cli)]
        for name, command in order:
            seconds = timed(command, env)
            times[name].append(seconds)
            print(f"round {round_ + 1} {name:7s} {seconds:7.2f} s", flush=True)

    llmops, trl = statistics.median(times["llmops"]), statistics.median(times["trl"])
    print(json.dumps({
        "steps": args.steps, "rounds": args.rounds,
        "llmops_train_dpo_s": [round(t, 2) for t in times["llmops"]],
        "bare_trl_dpo_s": [round(t, 2) for t in times["trl"]],
        "median_llmops_s": round(llmops, 2), "median_trl_s": round(trl, 2),
        "overhead_s": round(llmops - trl, 2), "ratio": round(llmops / trl, 3), "target": 1.05,
    }, indent=2))


if __name__ == "__main__":
    main()
