"""The shipped `evaluate` metric modules give exactly sacrebleu's and rouge_score's numbers, offline."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from llmops_tasks.evaluate import METRICS_DIR, load_metric

pytestmark = pytest.mark.unit

# (system output, reference): real English sentences, some exact, some paraphrased, some wrong.
PAIRS = [
    ("The cat sat on the mat.", "The cat sat on the mat."),
    ("A man is playing the guitar on stage.", "A man plays a guitar on the stage."),
    ("The weather will be sunny tomorrow afternoon.", "Tomorrow afternoon the weather is expected to be sunny."),
    ("Please restart your computer before installing updates.", "Restart the computer before you install the updates."),
    ("She bought three apples and a loaf of bread.", "She bought three apples and some bread."),
    ("The meeting has been moved to Thursday.", "The meeting was rescheduled to Thursday."),
    ("Open the settings menu and select Network.", "Open Settings, then choose Network."),
    ("Our flight was delayed by two hours.", "The flight was delayed two hours."),
    ("He reads the newspaper every morning.", "Every morning he reads the newspaper."),
    ("The museum is closed on Mondays.", "The museum is closed on Mondays."),
    ("I don't know.", "Reset your password from the sign-in page."),
    ("Children were playing in the park.", "Kids were playing in the park all afternoon."),
    ("The committee approved the new budget.", "The new budget was approved by the committee."),
    ("Turn left at the second traffic light.", "At the second traffic light, turn left."),
    ("The printer on the third floor is out of paper.", "The third-floor printer has run out of paper."),
    ("We need to finish the report by Friday.", "The report must be finished by Friday."),
    ("The river flooded after heavy rain.", "Heavy rain caused the river to flood."),
    ("My phone battery drains very quickly.", "My phone's battery runs down very fast."),
    ("The train leaves at half past seven.", "The train departs at 7:30."),
    ("They celebrated their anniversary in Paris.", "They celebrated their anniversary in Paris last year."),
    ("The VPN disconnects every few minutes.", "The VPN keeps dropping the connection every few minutes."),
    ("Add the eggs and stir gently.", "Stir in the eggs gently."),
    ("The doctor recommended more sleep and exercise.", "The doctor advised getting more sleep and exercise."),
    ("Prices rose sharply last quarter.", "Prices increased sharply in the last quarter."),
    ("Buy a new laptop.", "Request a replacement laptop through the service catalog."),
    ("The library opens at nine in the morning.", "The library opens at 9 a.m."),
    ("Close all other applications and try again.", "Close the other applications, then try again."),
    ("The package was delivered to the wrong address.", "The parcel went to the wrong address."),
    ("Running every day improves your health.", "Daily running is good for your health."),
    ("Click Forgot password and follow the link in the email.", "Choose Forgot password and follow the emailed link."),
    ("The concert was cancelled because of the storm.", "Because of the storm, the concert was called off."),
    ("", "Check the status page for any ongoing incident."),
]
PREDICTIONS = [p for p, _ in PAIRS]
REFERENCES = [r for _, r in PAIRS]
SECOND_REFERENCES = [r.lower().replace(".", " !") for r in REFERENCES]


def bleu_fields(score) -> dict:
    return {
        "score": score.score, "counts": score.counts, "totals": score.totals, "precisions": score.precisions,
        "bp": score.bp, "sys_len": score.sys_len, "ref_len": score.ref_len,
    }


def test_metric_folders_are_loadable_scripts():
    for name in ("sacrebleu", "rouge"):
        assert (METRICS_DIR / name / f"{name}.py").is_file()
    with pytest.raises(ValueError, match="known metrics: rouge, sacrebleu"):
        load_metric("bleurt")


def test_sacrebleu_matches_the_hub_documentation_example():
    results = load_metric("sacrebleu").compute(
        predictions=["hello there general kenobi", "on our way to ankh morpork"],
        references=[["hello there general kenobi", "hello there !"], ["goodbye ankh morpork", "ankh morpork"]],
    )
    assert list(results) == ["score", "counts", "totals", "precisions", "bp", "sys_len", "ref_len"]
    assert round(results["score"], 1) == 39.8


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"tokenize": "intl", "lowercase": True},
        {"tokenize": "char"},
        {"smooth_method": "floor", "smooth_value": 0.2},
        {"smooth_method": "add-k", "smooth_value": 1},
        {"smooth_method": "none", "use_effective_order": True, "force": True},
    ],
    ids=["default", "intl-lowercase", "char", "floor", "add-k", "none-effective-force"],
)
def test_sacrebleu_equals_corpus_bleu(kwargs):
    ours = load_metric("sacrebleu").compute(predictions=PREDICTIONS, references=[[r] for r in REFERENCES], **kwargs)
    theirs = sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES], **kwargs)
    assert ours == bleu_fields(theirs)
    assert 0.0 < ours["score"] < 100.0


def test_sacrebleu_flat_and_multiple_references():
    metric = load_metric("sacrebleu")
    flat = metric.compute(predictions=PREDICTIONS, references=REFERENCES)
    assert flat == bleu_fields(sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]))
    two_each = [list(pair) for pair in zip(REFERENCES, SECOND_REFERENCES)]
    multi = metric.compute(predictions=PREDICTIONS, references=two_each)
    assert multi == bleu_fields(sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES, SECOND_REFERENCES]))
    with pytest.raises(ValueError, match="same number of references"):
        metric.compute(predictions=PREDICTIONS[:2], references=[[REFERENCES[0]], [REFERENCES[1], REFERENCES[0]]])


@pytest.mark.parametrize("use_stemmer", [False, True], ids=["plain", "stemmer"])
def test_rouge_equals_rouge_scorer(use_stemmer):
    types = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    scorer = rouge_scorer.RougeScorer(types, use_stemmer=use_stemmer)
    direct = [scorer.score(ref, pred) for pred, ref in zip(PREDICTIONS, REFERENCES)]
    metric = load_metric("rouge")

    per_example = metric.compute(
        predictions=PREDICTIONS, references=REFERENCES, use_stemmer=use_stemmer, use_aggregator=False
    )
    assert set(per_example) == set(types)
    for key in types:
        assert per_example[key] == [s[key].fmeasure for s in direct]

    aggregated = metric.compute(predictions=PREDICTIONS, references=REFERENCES, use_stemmer=use_stemmer)
    assert list(aggregated) == types
    for key in types:
        assert aggregated[key] == sum(s[key].fmeasure for s in direct) / len(direct)
    assert 0.0 < aggregated["rougeL"] < 1.0


def test_rouge_types_multiple_references_and_custom_tokenizer():
    metric = load_metric("rouge")
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    refs = [list(pair) for pair in zip(REFERENCES, SECOND_REFERENCES)]
    ours = metric.compute(predictions=PREDICTIONS, references=refs, rouge_types=["rougeL"], use_aggregator=False)
    assert ours == {"rougeL": [scorer.score_multi(r, p)["rougeL"].fmeasure for p, r in zip(PREDICTIONS, refs)]}

    by_whitespace = metric.compute(
        predictions=["Hello, World"], references=["hello world"], rouge_types=["rouge1"], tokenizer=str.split
    )
    assert by_whitespace == {"rouge1": 0.0}  # no default lower-casing or punctuation stripping
    same = ["hello there", "general kenobi"]
    assert metric.compute(predictions=same, references=same) == {
        "rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0, "rougeLsum": 1.0,
    }
