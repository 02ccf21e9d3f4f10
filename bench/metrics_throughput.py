"""BLEU + ROUGE-1/2/L for N prediction/reference pairs: our metric path against raw sacrebleu + rouge_score.

    .venv/bin/python bench/metrics_throughput.py [--pairs 10000] [--repeats 3]

Three ways, each timed ``--repeats`` times in turn (best time kept, so a busy machine's noise hurts
all three alike):

- raw: ``sacrebleu.corpus_bleu`` and one ``rouge_scorer.RougeScorer.score`` per pair;
- ours: ``llmops_tasks.evaluate.score``, what the evaluate step runs (the shipped metric modules'
  computation, without ``Metric.compute``'s Arrow round trip);
- Metric.compute: the same modules through ``evaluate``'s public ``compute``, for the overhead it adds.

Prints the times, the ratios to raw (target for ours: <= 1.2x) and checks that the numbers agree.
"""

from __future__ import annotations

import argparse
import os
import random
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")


def make_pairs(count: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Predictions that are references with words dropped, swapped or replaced, like model answers."""
    from llmops_tasks.local import samples

    rng = random.Random(seed)
    sentences = [s for s in samples.corpus_text() if len(s.split()) >= 4]
    vocabulary = sorted({w for s in sentences for w in s.split()})
    predictions, references = [], []
    for _ in range(count):
        reference = rng.choice(sentences)
        words = reference.split()
        for _ in range(rng.randint(0, 4)):
            i = rng.randrange(len(words))
            action = rng.random()
            if action < 0.3 and len(words) > 2:
                del words[i]
            elif action < 0.6:
                words[i] = rng.choice(vocabulary)
            else:
                j = rng.randrange(len(words))
                words[i], words[j] = words[j], words[i]
        predictions.append(" ".join(words))
        references.append(reference)
    return predictions, references


def raw(predictions: list[str], references: list[str]) -> dict[str, float]:
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    sums = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for prediction, reference in zip(predictions, references):
        scores = scorer.score(reference, prediction)
        for key in sums:
            sums[key] += scores[key].fmeasure
    result = {"bleu": sacrebleu.corpus_bleu(predictions, [references]).score / 100.0}
    result.update({key: value / len(predictions) for key, value in sums.items()})
    return result


def ours(predictions: list[str], references: list[str]) -> dict[str, float]:
    from llmops_tasks.evaluate import score

    return score(predictions, references)[0]


def through_compute(predictions: list[str], references: list[str]) -> dict[str, float]:
    from llmops_tasks.evaluate import load_metric

    bleu = load_metric("sacrebleu").compute(predictions=predictions, references=[[r] for r in references])
    rouge = load_metric("rouge").compute(predictions=predictions, references=references,
                                         rouge_types=["rouge1", "rouge2", "rougeL"], use_aggregator=False)
    result = {"bleu": bleu["score"] / 100.0}
    result.update({key: sum(values) / len(values) for key, values in rouge.items()})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    predictions, references = make_pairs(args.pairs)
    from llmops_tasks.evaluate import load_metric

    load_metric("sacrebleu"), load_metric("rouge")  # module loading is a one-off, not per call
    ways = {"raw sacrebleu + rouge_score": raw, "ours (evaluate step)": ours, "evaluate Metric.compute": through_compute}
    best = {name: float("inf") for name in ways}
    values = {}
    for _ in range(args.repeats):
        for name, fn in ways.items():
            start = time.perf_counter()
            values[name] = fn(predictions, references)
            best[name] = min(best[name], time.perf_counter() - start)

    baseline = best["raw sacrebleu + rouge_score"]
    print(f"metrics for {args.pairs} prediction/reference pairs (BLEU, ROUGE-1/2/L), best of {args.repeats}:")
    for name in ways:
        print(f"  {name:30s} {best[name]:8.3f} s   {args.pairs / best[name]:9.0f} pairs/s   "
              f"{best[name] / baseline:5.2f}x raw")
    reference_values = values["raw sacrebleu + rouge_score"]
    for name, result in values.items():
        same = all(abs(result[k] - reference_values[k]) < 1e-12 for k in reference_values)
        print(f"  {name:30s} numbers equal to raw: {same}  "
              + ", ".join(f"{k}={v:.4f}" for k, v in sorted(result.items())))


if __name__ == "__main__":
    main()
