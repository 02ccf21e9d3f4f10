"""Greedy generation for evaluation: batched (left padding) against one prompt at a time, on the tiny model.

    .venv/bin/python bench/generation_batching.py [--prompts 64] [--batch-size 16] [--max-new-tokens 32]

Both ways run ``llmops_tasks.serving.generation.generate`` (what the evaluate step runs) on the same prompts
from the sample data, in turn, ``--repeats`` times; the best time of each is kept. Prints prompts/s,
the speed-up of batching, and how many answers are identical either way (greedy decoding with left
padding should not change an answer; float rounding on padded batches rarely can).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: steady on a shared CPU)")
    parser.add_argument("--model", default="", help="model folder; default: a fresh tiny model from the sample data")
    args = parser.parse_args()

    import torch

    from llmops_tasks.local import bootstrap, samples
    from llmops_tasks.serving.generation import generate

    torch.set_num_threads(args.threads)
    rows = samples.preference_rows()
    prompts = [rows[i % len(rows)]["prompt"] for i in range(args.prompts)]
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(bootstrap.build_tiny_model(Path(tmp) / "tiny", samples.corpus_text()))
        generate(model, prompts[:2], max_new_tokens=4, batch_size=2, seed=0)  # warm-up: imports, first load
        ways = {"one prompt at a time": 1, f"batched ({args.batch_size})": args.batch_size}
        best = {name: float("inf") for name in ways}
        answers = {}
        for _ in range(args.repeats):
            for name, batch_size in ways.items():
                start = time.perf_counter()
                answers[name] = generate(model, prompts, max_new_tokens=args.max_new_tokens,
                                         batch_size=batch_size, seed=0)
                best[name] = min(best[name], time.perf_counter() - start)

    single, batched = ways
    print(f"greedy generation, {args.prompts} prompts, max_new_tokens={args.max_new_tokens}, "
          f"{args.threads} torch thread(s), {'cuda' if torch.cuda.is_available() else 'cpu'}, best of {args.repeats}:")
    for name in ways:
        print(f"  {name:22s} {best[name]:8.3f} s   {args.prompts / best[name]:8.1f} prompts/s")
    print(f"  batched / one-at-a-time throughput: {best[single] / best[batched]:.2f}x")
    same = sum(a == b for a, b in zip(answers[single], answers[batched]))
    print(f"  identical answers: {same}/{args.prompts}")


if __name__ == "__main__":
    main()
