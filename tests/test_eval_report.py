"""The evaluation report is one self-contained, escaped HTML page with the numbers it was given."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from llmops_tasks import eval_report
from llmops_tasks.core import data
from llmops_tasks.gate import GateConfig, decide

pytestmark = pytest.mark.unit

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def metrics() -> dict:
    candidate = {"bleu": 0.41, "rouge1": 0.62, "rouge2": 0.40, "rougeL": 0.58, "preference_accuracy": 0.9,
                 "reward_margin": 3.5, "perplexity": 7.25, "gen_len": 21.0}
    champion = {"bleu": 0.30, "rouge1": 0.50, "rouge2": 0.31, "rougeL": 0.47, "preference_accuracy": 0.55,
                "reward_margin": 0.4, "perplexity": 19.5, "gen_len": 30.0}
    gated = [k for k in candidate if k != "gen_len"]
    return {
        "candidate": candidate,
        "champion": champion,
        "delta": {k: candidate[k] - champion[k] for k in candidate},
        "ci": {k: [candidate[k] - champion[k] - 0.05, candidate[k] - champion[k] + 0.05] for k in gated},
        "intervals": {
            "candidate": {k: [candidate[k] - 0.04, candidate[k] + 0.04] for k in gated},
            "champion": {k: [champion[k] - 0.04, champion[k] + 0.04] for k in gated},
        },
        "ci_level": 0.95,
        "bootstrap_samples": 1000,
        "lower_is_better": ["perplexity"],
        "champion_label": f"production v3 {HOSTILE}",
        "candidate_model": "/runs/x/train/model",
        "champion_model": "/cache/registry/v3",
        "n": 12,
        "eval_data": "/runs/x/split/eval.jsonl",
        "eval_hash": "ab" * 32,
    }


def rows() -> tuple[list[dict], list[dict]]:
    """Twelve examples whose ROUGE-L gain is known: example i gains (i - 5) / 10."""
    candidate, champion = [], []
    for i in range(12):
        common = {"id": f"e{i}", "prompt": f"question {i} {HOSTILE}", "reference": f"reference {i} & <b>bold</b>"}
        candidate.append({**common, "prediction": f"candidate answer {i} {HOSTILE}", "rougeL": 0.5 + (i - 5) / 20})
        champion.append({**common, "prediction": f"champion answer {i}", "rougeL": 0.5 - (i - 5) / 20})
    return candidate, champion


class Inventory(HTMLParser):
    """Every tag and attribute of the page, to look for anything loaded from elsewhere or run."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes.extend(attrs)


def test_page_is_self_contained_and_escaped():
    candidate, champion = rows()
    page = eval_report.render(metrics(), candidate, champion)
    inventory = Inventory()
    inventory.feed(page)
    assert "script" not in inventory.tags and "img" not in inventory.tags and "link" not in inventory.tags
    names = {name for name, _ in inventory.attributes}
    assert not names & {"src", "href", "onerror", "onload"}
    assert "url(" not in page and "@import" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "reference 0 &amp; &lt;b&gt;bold&lt;/b&gt;" in page
    assert inventory.tags.count("svg") == 9  # seven gated metrics + generation length + the difference chart


def test_page_shows_metrics_intervals_and_examples_side_by_side():
    candidate, champion = rows()
    page = eval_report.render(metrics(), candidate, champion)
    assert "0.4100" in page and "[0.3700, 0.4500]" in page  # candidate BLEU and its interval
    assert "[0.0600, 0.1600]" in page  # interval of the BLEU difference
    assert "Perplexity (lower is better)" in page and "Preference accuracy" in page
    best, worst = eval_report.pick_examples(candidate, champion)
    assert [i for _, i in best] == [11, 10, 9, 8, 7] and [i for _, i in worst] == [0, 1, 2, 3, 4]
    gained = page.index("Where the candidate gained most")
    lost = page.index("Where the candidate lost most")
    assert gained < page.index("champion answer 11") < lost < page.index("champion answer 0")
    assert page.index("candidate answer 11") < page.index("champion answer 11")  # same row, side by side


def test_decision_on_top_and_written_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMOPS_HOME", str(tmp_path))
    candidate, champion = rows()
    regressing = metrics()
    regressing["candidate"]["bleu"] = 0.2
    decision = decide(regressing, GateConfig())
    assert decision["passed"] is False
    path = tmp_path / "out" / "report.html"
    assert eval_report.write(str(path), regressing, candidate, champion, decision) == str(path)
    page = path.read_text()
    assert page.index("REJECTED") < page.index("<h2>Metrics</h2>")
    assert "rejected: max_regression (bleu)" in page
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # no temporary file left behind


def test_from_files_and_without_intervals(tmp_path):
    candidate, champion = rows()
    plain = metrics()
    plain.update(ci={}, intervals={"candidate": {}, "champion": {}}, bootstrap_samples=0)
    for key in ("preference_accuracy", "reward_margin", "perplexity"):  # an eval set without chosen/rejected
        for group in ("candidate", "champion", "delta"):
            plain[group].pop(key)
    data.write_jsonl(str(tmp_path / "c.jsonl"), candidate)
    data.write_jsonl(str(tmp_path / "h.jsonl"), champion)
    plain["predictions"] = {"candidate": str(tmp_path / "c.jsonl"), "champion": str(tmp_path / "h.jsonl")}
    eval_report.write_from_files(str(tmp_path / "r.html"), json.loads(json.dumps(plain)))
    page = Path(tmp_path / "r.html").read_text()
    assert "No intervals (bootstrap_samples=0)" in page and "Preference accuracy" not in page
    assert "candidate answer 11" in page
