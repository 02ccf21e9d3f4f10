"""BLEU + ROUGE-1/2/L for N prediction/reference pairs: our metric path against raw sacrebleu + rouge_score.

    .venv/bin/python bench/metrics_throughput.py [--pairs 10000] [--repeats 3]

Three ways, each timed ``--repeats`` times in turn (best time kept, so a busy machine's noise hurts
all three alike):

- raw: ``sacrebleu.corpus_bleu`` and one ``rouge_scorer.RougeScorer.score`` per pair;
- ours: ``llmops_tasks.evaluate.score``, what the evaluate step runs (the shipped metric modules'
  computation, without ``Metric.compute``'s Arrow round trip);
- Metric.compute: the same modules through ``evaluate``'s public ``compute``, for the overhead it adds.

Prints the times, the ratios to raw (target for ours: <= 1.2x) and checks that the numbers agree.

Then the same for Chinese, Japanese, Russian and Arabic pairs, where ours tokenizes for the
references' script (``llmops_tasks/metrics/tokenization.py``): raw is sacrebleu and rouge_score
given those same tokenizers, and the line also shows what their defaults made of the text.
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


# (reference, a close answer): one word or character changed, as in a model answer
LANGUAGES = {
    "zh": [("今天天气很好，我们去公园散步吧。", "今天天气很好，我们去公园走走吧。"),
           ("请在周五之前完成这份报告。", "请在周五以前完成这份报告。"),
           ("图书馆每天早上九点开门。", "图书馆每天上午九点开门。")],
    "ja": [("今日は天気がとても良いので、公園に行きます。", "今日は天気が良いので、公園に行きました。"),
           ("金曜日までにこの報告書を完成させてください。", "金曜日までに報告書を完成させてください。"),
           ("図書館は毎朝九時に開きます。", "図書館は毎朝十時に開きます。")],
    "ru": [("Сегодня хорошая погода, пойдём гулять в парк.", "Сегодня отличная погода, пойдём гулять в парк."),
           ("Пожалуйста, закончите отчёт до пятницы.", "Пожалуйста, закончите этот отчёт до пятницы."),
           ("Библиотека открывается каждый день в девять утра.", "Библиотека открывается каждый день в десять утра.")],
    "ar": [("الطقس جميل اليوم، لنذهب إلى الحديقة.", "الطقس رائع اليوم، لنذهب إلى الحديقة."),
           ("من فضلك أكمل التقرير قبل يوم الجمعة.", "من فضلك أكمل هذا التقرير قبل يوم الجمعة."),
           ("تفتح المكتبة كل يوم في الساعة التاسعة صباحا.", "تفتح المكتبة كل يوم في الساعة العاشرة صباحا.")],
}


def raw(predictions: list[str], references: list[str], bleu_tokenizer: str = "13a", rouge_tokenizer=None):
    import sacrebleu
    from rouge_score import rouge_scorer

    class Tokens:  # the object with a tokenize() method rouge_score takes
        def tokenize(self, text):
            return rouge_tokenizer(text)

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"],
                                      tokenizer=Tokens() if rouge_tokenizer else None)
    sums = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for prediction, reference in zip(predictions, references):
        scores = scorer.score(reference, prediction)
        for key in sums:
            sums[key] += scores[key].fmeasure
    result = {"bleu": sacrebleu.corpus_bleu(predictions, [references], tokenize=bleu_tokenizer).score / 100.0}
    result.update({key: value / len(predictions) for key, value in sums.items()})
    return result


def other_languages(count: int, repeats: int) -> None:
    """Per language: the tokenization chosen, ours against raw with the same tokenizers, and the defaults."""
    from llmops_tasks.metrics import tokenization

    print(f"other languages, {count} pairs each (best of {repeats}):")
    for language, pairs in LANGUAGES.items():
        references = [pairs[i % len(pairs)][0] for i in range(count)]
        predictions = [pairs[i % len(pairs)][1] for i in range(count)]
        chosen = tokenization.choose(references)
        times = {"raw": float("inf"), "ours": float("inf")}
        for _ in range(repeats):
            start = time.perf_counter()
            theirs = raw(predictions, references, chosen.bleu, chosen.rouge_callable())
            times["raw"] = min(times["raw"], time.perf_counter() - start)
            start = time.perf_counter()
            result = ours(predictions, references)
            times["ours"] = min(times["ours"], time.perf_counter() - start)
        same = all(abs(result[k] - theirs[k]) < 1e-12 for k in theirs)
        defaults = raw(predictions, references)
        print(f"  {language} ({chosen.detected_script}: bleu {chosen.bleu}, rouge {chosen.rouge})  "
              f"ours {times['ours']:.3f} s = {times['ours'] / times['raw']:.2f}x raw, numbers equal: {same}  "
              + ", ".join(f"{k}={v:.4f}" for k, v in sorted(result.items()))
              + "  | defaults: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(defaults.items())))


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
    parser.add_argument("--language-pairs", type=int, default=1000, help="pairs per other language (0: skip)")
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
    if args.language_pairs:
        other_languages(args.language_pairs, args.repeats)


if __name__ == "__main__":
    main()
