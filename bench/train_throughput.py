"""Training throughput of ``llmops train sft``: tokens/s, MFU and peak memory, full fine-tuning vs LoRA.

    .venv/bin/python bench/train_throughput.py --size 1b [--steps 20] [--batch-size 16] [--seq-len 512]
    .venv/bin/python bench/train_throughput.py --size tiny --steps 3      # CPU smoke run

Everything is built locally (no hub): a random-weight Llama saved with ``save_pretrained``.
``tiny`` is the demo model of ``llmops init``; ``1b`` is Llama-3.2-1B's shape (hidden 2048, 16
layers, 32 heads, 8 KV heads, intermediate 8192, tied embeddings) with ``--vocab-size`` (32000)
embedding rows, saved in bf16. transformers 5 loads a checkpoint in its own dtype, so training
keeps bf16 weights and bf16 AdamW states (8 bytes per parameter instead of 16 in fp32). Its
tokenizer is ``bootstrap.train_tokenizer`` on the sample texts, which support only a few hundred
tokens; the embedding and LM head keep all ``--vocab-size`` rows anyway (ids above the
tokenizer's never occur), so the LM head and the loss cost what they cost with a real 32k
vocabulary. SFT rows are sample prompts whose completions repeat sample answers past
``--seq-len`` tokens, so truncation makes every row exactly that long.

Each mode (``--modes full,lora``) runs ``llmops_tasks.train.train(SFTTrainConfig(...), "sft")`` in a
fresh process of this script (peak memory is per mode), with MLflow on a SQLite store in the temp
folder (created beforehand, as in a deployment) and ``log_model: false``. bf16 on a GPU.

tokens/s is measured over the steady-state steps: after ``--warmup-steps``, up to the last step,
from the end of one step (CUDA synchronized) to the end of another, with the tokens the SFT trainer
counts (``num_tokens``, non-padding tokens, logged every step). ``train()`` takes no callbacks, so
the child process swaps ``trl.SFTTrainer`` for a subclass that adds its step timer; train.py
imports the class when it builds the trainer, after the swap. The whole ``trainer.train()`` figure
from ``train_results.json`` (``train_runtime``, warm-up and the final checkpoint included) is
printed next to it.

MFU = model FLOPs per token x tokens/s / the GPU's peak dense bf16 FLOP/s (from its name, or
``--peak-tflops``). Full fine-tuning: 6N (N = all parameters, embedding included, attention
score FLOPs left out). LoRA: 4N for the frozen base (forward 2N + input gradients 2N, no weight
gradients) + 6N for the adapter; its 6N figure is printed too, to compare with full. On CPU: n/a.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LLAMA_1B = {  # Llama-3.2-1B's shape
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 2048,
}
# Peak dense bf16 tensor FLOP/s (no sparsity), first match in the CUDA device name wins.
PEAK_BF16_FLOPS = [
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200 NVL", 835e12), ("H200", 989e12),
    ("GH200", 989e12), ("A100", 312e12), ("A10G", 125e12), ("L4", 121e12),
]
GIB = 1024 ** 3


def peak_flops(device_name: str) -> float | None:
    for key, flops in PEAK_BF16_FLOPS:
        if key in device_name:
            return flops
    return None


# ---------------------------------------------------------------------------------------------
# Model and data (parent process)


def build_1b_model(out_dir: Path, vocab_size: int, dtype_name: str) -> int:
    """A random-weight ~1B Llama and the sample-text tokenizer saved to ``out_dir``; returns the parameter count."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from llmops_tasks.local import bootstrap, samples

    tokenizer = bootstrap.train_tokenizer(samples.corpus_text(), vocab_size=vocab_size)
    tokenizer.model_max_length = LLAMA_1B["max_position_embeddings"]
    if len(tokenizer) > vocab_size:
        raise SystemExit(f"--vocab-size {vocab_size} is smaller than the tokenizer's {len(tokenizer)} tokens")
    print(f"tokenizer: {len(tokenizer)} tokens learned from the sample texts (asked for {vocab_size}); "
          f"embedding rows: {vocab_size}", flush=True)
    config = LlamaConfig(
        vocab_size=vocab_size, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True, **LLAMA_1B,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype_name))
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return params


def sft_rows(tokenizer, seq_len: int, count: int) -> list[dict]:
    """``count`` prompt/completion rows, each longer than ``seq_len`` tokens once tokenized."""
    from llmops_tasks.local import samples

    pairs = samples.preference_rows()
    answers = [" " + row["chosen"] for row in pairs]
    lengths = [len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers]
    rows = []
    for i in range(count):
        prompt = pairs[i % len(pairs)]["prompt"]
        parts, length, j = [], len(tokenizer(prompt)["input_ids"]), i
        while length <= seq_len + 16:  # margin: tokens merged differently across part boundaries
            parts.append(answers[j % len(answers)])
            length += lengths[j % len(answers)]
            j += 7
        rows.append({"prompt": prompt, "completion": "".join(parts)})
    shortest = min(len(tokenizer(r["prompt"] + r["completion"])["input_ids"]) for r in rows[:16])
    if shortest < seq_len:
        raise RuntimeError(f"synthetic SFT rows have {shortest} tokens, fewer than --seq-len {seq_len}")
    return rows


# ---------------------------------------------------------------------------------------------
# One mode (child process)


def run_mode(args: argparse.Namespace) -> None:
    import resource

    import torch
    import trl
    from transformers import TrainerCallback

    from llmops_tasks.train import SFTTrainConfig, train

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    class StepTimer(TrainerCallback):
        """End time of every optimizer step (after a CUDA sync), and what the model looked like."""

        def __init__(self):
            self.ends: dict[int, float] = {}
            self.log_history: list[dict] = []
            self.model_info: dict = {}

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            params = list(model.parameters())
            trainable = sum(p.numel() for p in params if p.requires_grad)
            self.model_info = {"params_total": sum(p.numel() for p in params), "params_trainable": trainable,
                               "weights_dtype": str(params[0].dtype).removeprefix("torch.")}

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step not in self.ends:  # the start of the first step counts as "end of step 0"
                if cuda:
                    torch.cuda.synchronize()
                self.ends[state.global_step] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.ends[state.global_step] = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            self.log_history = list(state.log_history)

    timer = StepTimer()

    class TimedSFTTrainer(trl.SFTTrainer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.add_callback(timer)

    trl.SFTTrainer = TimedSFTTrainer  # train() imports trl.SFTTrainer when it builds the trainer

    config = SFTTrainConfig(
        base_model=args.model_dir, train_data=args.train_data, output_dir=args.output_dir, log_model=False,
        trainer={"max_steps": args.steps, "per_device_train_batch_size": args.batch_size, "max_length": args.seq_len,
                 "logging_steps": 1, "save_steps": args.steps, "save_total_limit": 1, "bf16": args.bf16,
                 "activation_checkpointing": args.gradient_checkpointing},
        model={"use_peft": args.child == "lora"},
    )
    start = time.perf_counter()
    result = train(config, "sft")
    seconds_in_train = time.perf_counter() - start
    if not timer.ends:
        raise RuntimeError("the step timer never ran: llmops_tasks.train no longer builds its trainer from "
                           "trl.SFTTrainer at call time; update bench/train_throughput.py")
    # trainer.save_metrics writes into the Trainer's output_dir, train.py's {output_dir}/checkpoints
    train_results = json.loads((Path(args.output_dir) / "checkpoints" / "train_results.json").read_text())
    tokens = {e["step"]: e["num_tokens"] for e in timer.log_history if "num_tokens" in e}
    last, first = args.steps, args.warmup_steps
    if last not in tokens or (first != 0 and first not in tokens):
        raise RuntimeError(f"num_tokens missing from the log history at step {first} or {last}")
    window_tokens = tokens[last] - tokens.get(first, 0)
    window_seconds = timer.ends[last] - timer.ends[first]
    step_seconds = sorted(timer.ends[s] - timer.ends[s - 1] for s in range(first + 1, last + 1))
    summary = {
        "mode": args.child,
        **timer.model_info,
        "global_step": result["global_step"],
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "steady_steps": last - first,
        "tokens_per_step": window_tokens / (last - first),
        "tokens_per_s": window_tokens / window_seconds,
        "median_step_s": step_seconds[len(step_seconds) // 2],
        "first_step_s": timer.ends[1] - timer.ends[0],
        "train_runtime_s": train_results["train_runtime"],
        "whole_train_tokens_per_s": tokens[last] / train_results["train_runtime"],
        "train_call_s": seconds_in_train,
        "final_loss": result["final_loss"],
        "peak_gpu_allocated_gib": torch.cuda.max_memory_allocated() / GIB if cuda else None,
        "peak_gpu_reserved_gib": torch.cuda.max_memory_reserved() / GIB if cuda else None,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB,
    }
    Path(args.child_result).write_text(json.dumps(summary))


# ---------------------------------------------------------------------------------------------
# Orchestration (parent process)


def flops_per_token(mode: dict, lora_convention: str) -> float:
    if mode["mode"] == "full":
        return 6 * mode["params_total"]
    frozen = mode["params_total"] - mode["params_trainable"]
    if lora_convention == "6n":
        return 6 * mode["params_total"]
    return 4 * frozen + 6 * mode["params_trainable"]


def fmt(value, spec: str, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "1b"), default=None,
                        help="tiny: the demo model (CPU smoke run); 1b: Llama-3.2-1B's shape, random weights "
                             "(default: 1b with a GPU, tiny without)")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per mode")
    parser.add_argument("--warmup-steps", type=int, default=None,
                        help="steps left out of tokens/s (default: a quarter of --steps, 1 to 5)")
    parser.add_argument("--batch-size", type=int, default=None, help="rows per step (default 16 on a GPU, 4 on CPU)")
    parser.add_argument("--seq-len", type=int, default=None,
                        help="tokens per row, every row filled (default 512 on a GPU, 64 on CPU)")
    parser.add_argument("--modes", default="full,lora", help="comma-separated: full, lora")
    parser.add_argument("--vocab-size", type=int, default=32000, help="1b: embedding rows")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 mixed precision, GPU only (default: on with a GPU)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the GPU's peak dense bf16 TFLOP/s (default: from its name)")
    parser.add_argument("--lora-flops", choices=("4n", "6n"), default="4n",
                        help="LoRA MFU: 4N frozen base + 6N adapter (work done, default) or 6N (full's convention)")
    parser.add_argument("--json-out", default="", help="also write the JSON summary to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (model, data, MLflow store, logs)")
    for hidden in ("--child", "--child-result", "--model-dir", "--train-data", "--output-dir"):
        parser.add_argument(hidden, default="", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        run_mode(args)
        return

    import torch

    cuda = torch.cuda.is_available()  # NVML only: no CUDA context in this process
    args.size = args.size or ("1b" if cuda else "tiny")
    args.bf16 = cuda if args.bf16 is None else args.bf16
    if args.bf16 and not cuda:
        parser.error("--bf16 needs a GPU (transformers refuses bf16 training on CPU without use_cpu)")
    args.batch_size = args.batch_size or (16 if cuda else 4)
    args.seq_len = args.seq_len or (512 if cuda else 64)
    if args.warmup_steps is None:
        args.warmup_steps = max(1, min(5, args.steps // 4))
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in ("full", "lora") for m in modes):
        parser.error(f"--modes takes full and/or lora, got {args.modes!r}")
    if not 0 <= args.warmup_steps < args.steps:
        parser.error(f"--warmup-steps ({args.warmup_steps}) must be below --steps ({args.steps})")

    from transformers import AutoTokenizer

    from llmops_tasks.core import data
    from llmops_tasks.local import bootstrap, samples

    work = Path(tempfile.mkdtemp(prefix="llmops-bench-throughput-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
           "LLMOPS_MLFLOW_ARTIFACTS": str(work / "mlartifacts"), "LLMOPS_HOME": str(work / "home"),
           "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    for key in ("LLMOPS_DAG_ID", "LLMOPS_RUN_ID", "LLMOPS_TASK_ID", "LLMOPS_RESULT_FILE"):
        env.pop(key, None)
    # The tracking store exists before any training in a deployment: created (migrated) once, outside
    # the timings, while the model is built.
    store = subprocess.Popen([sys.executable, "-c", "from llmops_tasks.core import tracking; tracking.experiment_id()"],
                             env=env, cwd=ROOT)
    try:
        base = work / "base"
        start = time.perf_counter()
        if args.size == "tiny":
            bootstrap.build_tiny_model(base, samples.corpus_text())
            max_positions = bootstrap.TINY_ARCHITECTURE["max_position_embeddings"]
        else:
            params = build_1b_model(base, args.vocab_size, "bfloat16")
            max_positions = LLAMA_1B["max_position_embeddings"]
            print(f"1b model: {params:,} parameters", flush=True)
        print(f"built {args.size} model in {time.perf_counter() - start:.1f} s: {base}", flush=True)
        if args.seq_len > max_positions:
            parser.error(f"--seq-len {args.seq_len} is over the model's {max_positions} positions")
        train_data = work / "sft.jsonl"
        data.write_jsonl(str(train_data), sft_rows(AutoTokenizer.from_pretrained(base), args.seq_len,
                                                   args.batch_size * args.steps))
        if store.wait() != 0:
            raise SystemExit(f"creating the MLflow store {env['MLFLOW_TRACKING_URI']} failed")

        results: dict[str, dict] = {}
        for mode in modes:
            out, log = work / f"train-{mode}", work / f"{mode}.log"
            command = [sys.executable, str(Path(__file__).resolve()), "--child", mode,
                       "--child-result", str(work / f"{mode}.json"), "--model-dir", str(base),
                       "--train-data", str(train_data), "--output-dir", str(out), "--steps", str(args.steps),
                       "--warmup-steps", str(args.warmup_steps), "--batch-size", str(args.batch_size),
                       "--seq-len", str(args.seq_len), "--bf16" if args.bf16 else "--no-bf16",
                       *(["--gradient-checkpointing"] if args.gradient_checkpointing else [])]
            print(f"{mode}: training {args.steps} steps ({args.warmup_steps} warm-up), log {log}", flush=True)
            start = time.perf_counter()
            with open(log, "w") as log_file:
                code = subprocess.call(command, env=env, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT)
            wall = time.perf_counter() - start
            if code != 0:
                tail = log.read_text().splitlines()[-40:]
                raise SystemExit(f"{mode} training exited {code}; end of {log}:\n" + "\n".join(tail))
            results[mode] = {**json.loads((work / f"{mode}.json").read_text()), "wall_s": wall}
            shutil.rmtree(out, ignore_errors=True)  # a 1B checkpoint with optimizer state is several GB

        device = next(iter(results.values()))["device"]
        peak = args.peak_tflops * 1e12 if args.peak_tflops else (peak_flops(device) if cuda else None)
        for r in results.values():
            r["flops_per_token"] = flops_per_token(r, args.lora_flops)
            r["mfu"] = r["flops_per_token"] * r["tokens_per_s"] / peak if peak else None
            if r["mode"] == "lora":
                r["mfu_6n"] = 6 * r["params_total"] * r["tokens_per_s"] / peak if peak else None

        print(f"\n{args.size} sft, seq_len {args.seq_len}, batch {args.batch_size}, {args.steps} steps "
              f"(tokens/s over the last {args.steps - args.warmup_steps}), bf16 {args.bf16}, "
              f"gradient checkpointing {args.gradient_checkpointing}, device {device}, peak "
              f"{fmt(peak and peak / 1e12, '.0f', ' TFLOP/s')}")
        if cuda and peak is None:
            print(f"  MFU n/a: no peak FLOP/s known for {device!r}; pass --peak-tflops")
        print("  MFU: full 6N FLOPs/token; LoRA " + ("6N (full's convention)" if args.lora_flops == "6n" else
              "4N frozen base + 6N adapter (no weight gradients of the base; mfu_6n = full's convention)"))
        for r in results.values():
            print(f"  {r['mode']:4s}  params {r['params_total']:,} (trainable {r['params_trainable']:,}, "
                  f"{r['weights_dtype']})  tokens/step {r['tokens_per_step']:.0f}")
            print(f"        tokens/s {r['tokens_per_s']:,.0f}"
                  f"  (whole trainer.train() {r['whole_train_tokens_per_s']:,.0f})"
                  f"  MFU {fmt(r['mfu'] and 100 * r['mfu'], '.1f', '%')}"
                  + (f" (6N: {fmt(r['mfu_6n'] and 100 * r['mfu_6n'], '.1f', '%')})" if r["mode"] == "lora" else "")
                  + f"  step {r['median_step_s'] * 1000:.0f} ms median (first {r['first_step_s']:.2f} s)")
            print(f"        peak GPU memory {fmt(r['peak_gpu_allocated_gib'], '.2f', ' GiB')} allocated, "
                  f"{fmt(r['peak_gpu_reserved_gib'], '.2f', ' GiB')} reserved; peak RSS {r['peak_rss_gib']:.2f} GiB;"
                  f"  wall {r['wall_s']:.1f} s (trainer.train() {r['train_runtime_s']:.1f} s)")
        summary = {
            "size": args.size, "seq_len": args.seq_len, "batch_size": args.batch_size, "steps": args.steps,
            "warmup_steps": args.warmup_steps, "bf16": args.bf16, "gradient_checkpointing": args.gradient_checkpointing,
            "device": device, "peak_flops": peak, "lora_flops": args.lora_flops, "modes": results,
        }
        if "full" in results and "lora" in results:
            full, lora = results["full"], results["lora"]
            summary["lora_over_full"] = {
                "tokens_per_s": lora["tokens_per_s"] / full["tokens_per_s"],
                "peak_gpu_allocated": (lora["peak_gpu_allocated_gib"] / full["peak_gpu_allocated_gib"]
                                       if cuda else None),
                "wall": lora["wall_s"] / full["wall_s"],
            }
            ratios = summary["lora_over_full"]
            print(f"  LoRA / full: tokens/s {ratios['tokens_per_s']:.2f}x, peak GPU memory "
                  f"{fmt(ratios['peak_gpu_allocated'], '.2f', 'x')}, wall {ratios['wall']:.2f}x")
        text = json.dumps(summary, indent=2)
        print(text)
        if args.json_out:
            Path(args.json_out).write_text(text)
    finally:
        if store.poll() is None:
            store.kill()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
