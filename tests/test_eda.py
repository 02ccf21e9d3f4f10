"""The eda step on a hand-made data set whose statistics are known."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from llmops_tasks.core.config import ConfigError
from llmops_tasks.core.errors import StepFailed
from llmops_tasks.eda import EdaConfig, histogram, percentile, run
from llmops_tasks.local import samples

ROWS = [
    {"id": "a", "prompt": "how do I reset it", "chosen": "open settings then reset", "rejected": "no",
     "source": "chat"},
    {"id": "b", "prompt": "how do I reset it", "chosen": "open settings then reset", "rejected": "no",
     "source": "chat"},
    {"id": "c", "prompt": "how do I log in", "chosen": "use sso", "rejected": "try the other portal please",
     "source": "tickets"},
    {"id": "d", "prompt": "<script>alert('x')</script> why", "chosen": "abcd", "rejected": "wxyz"},
    {"id": "e", "prompt": "<script>alert('x')</script> why", "chosen": "abcdefgh", "rejected": "w",
     "source": "<i>odd</i>"},
]

@pytest.fixture
def report(tmp_path) -> tuple[dict, str, dict]:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    result = run(EdaConfig(dataset=str(path), out=str(tmp_path / "eda")))
    stats = json.loads(Path(result["report_json"]).read_text(encoding="utf-8"))
    page = Path(result["report_html"]).read_text(encoding="utf-8")
    return result, page, stats


def test_eda_counts_on_a_hand_made_data_set(report):
    result, _, stats = report
    assert result["rows"] == stats["rows"] == 5
    assert stats["duplicates"]["exact_duplicate_rows"] == 1
    assert stats["duplicates"]["duplicate_values_per_column"] == {"prompt": 2, "chosen": 1, "rejected": 1}
    assert stats["prompts"]["unique"] == 3
    assert stats["prompts"]["duplication_rate"] == 0.4
    assert stats["prompts"]["most_repeated"] == [
        {"prompt": "<script>alert('x')</script> why", "count": 2},
        {"prompt": "how do I reset it", "count": 2},
    ]
    assert stats["prompts"]["top_bigrams"][:2] == [{"bigram": "do i", "count": 3}, {"bigram": "how do", "count": 3}]
    assert stats["sources"] == {"chat": 2, "tickets": 1, "(missing)": 1, "<i>odd</i>": 1}

    rejected = stats["text_columns"]["rejected"]
    assert rejected["chars"] == {"min": 1, "mean": 7.2, "p50": 2.0, "p95": 22.4, "max": 27}
    assert rejected["tokens"]["max"] == 5
    assert sum(rejected["char_histogram"]["counts"]) == 5
    assert rejected["count"] == 5 and rejected["missing"] == 0

    pairs = stats["pairs"]
    assert pairs["pairs"] == 5
    assert pairs["chosen_longer_share"] == 0.6
    assert pairs["same_length_share"] == 0.2
    assert pairs["chosen_mean_chars"] == 13.4
    assert pairs["rejected_mean_chars"] == 7.2


def test_eda_html_is_self_contained_and_escaped(report):
    _, page, _ = report
    assert page.count("<svg") >= 6
    for svg in re.findall(r"<svg.*?</svg>", page, re.DOTALL):
        ET.fromstring(svg)  # well-formed
    assert "<script" not in page.lower()
    assert "http" not in page.lower()
    assert "<link" not in page.lower() and "@import" not in page and "url(" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; why" in page
    assert "&lt;i&gt;odd&lt;/i&gt;" in page and "<i>odd" not in page


def test_eda_on_the_sample_set(tmp_path):
    dataset = samples.ensure_sample_data(tmp_path / "data")
    result = run(EdaConfig(dataset=str(dataset), out=str(tmp_path / "eda")))
    stats = json.loads(Path(result["report_json"]).read_text())
    assert stats["rows"] == len(samples.preference_rows())
    assert stats["pairs"]["chosen_longer_share"] > 0.5
    assert len(stats["prompts"]["top_bigrams"]) == 20
    assert sum(stats["sources"].values()) == stats["rows"]


def test_eda_unreadable_file_is_a_step_failure(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": \n', encoding="utf-8")
    with pytest.raises(StepFailed, match=r"rule json_lines failed: line 2 is not valid JSON"):
        run(EdaConfig(dataset=str(path), out=str(tmp_path / "eda")))


def test_eda_config_requires_a_dataset():
    with pytest.raises(ConfigError, match="dataset: required"):
        EdaConfig()


def test_statistics_helpers():
    assert percentile([1, 2, 3, 4], 0.5) == 2.5
    assert percentile([7], 0.95) == 7
    assert histogram([1, 1, 5], 2) == {"edges": [1, 4, 7], "counts": [2, 1]}
    assert histogram([], 5) == {"edges": [], "counts": []}


@pytest.mark.integration  # a subprocess: not a unit test
def test_eda_through_the_cli(tmp_path):
    dataset = samples.ensure_sample_data(tmp_path / "data")
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from llmops_tasks.cli import main; sys.exit(main())",
         "eda", "--dataset", str(dataset), "--out", str(tmp_path / "eda")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["rows"] == len(samples.preference_rows())
    assert Path(result["report_html"]).is_file() and Path(result["report_json"]).is_file()


def test_small_chunks_give_the_same_statistics(tmp_path):
    from llmops_tasks.eda import describe

    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    one = run(EdaConfig(dataset=str(path), out=str(tmp_path / "one")))
    many = run(EdaConfig(dataset=str(path), out=str(tmp_path / "many"), chunk_rows=2))
    assert Path(one["report_json"]).read_text() == Path(many["report_json"]).read_text()
    assert describe(ROWS, "preference")["duplicates"] == json.loads(Path(one["report_json"]).read_text())["duplicates"]


def test_pii_hits_length_difference_and_source_breakdown(tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[2]["chosen"] = "use sso or mail it@example.com"
    rows[3]["prompt"] = "my card 4111 1111 1111 1111 and ip 10.0.0.1"
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    result = run(EdaConfig(dataset=str(path), out=str(tmp_path / "eda")))
    stats = json.loads(Path(result["report_json"]).read_text())
    assert stats["pii"] == {"rows_with_hits": 2, "rows_by_kind": {"credit_card": 1, "email": 1, "ipv4": 1}}
    assert stats["pairs"]["char_difference"]["max"] == 22
    assert sum(stats["pairs"]["char_difference_histogram"]["counts"]) == 5
    assert stats["source_breakdown"]["chat"] == {"rows": 2, "pairs": 2, "chosen_longer_share": 1.0}
    page = Path(result["report_html"]).read_text()
    assert "rows with a hit, by kind" in page and "chosen minus rejected characters" in page


def test_change_against_the_previous_snapshot(tmp_path, report):
    first, _, before = report
    path = tmp_path / "next.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS[:3] + [{**ROWS[0], "lang": "en"}]), encoding="utf-8")
    result = run(EdaConfig(dataset=str(path), out=str(tmp_path / "next"), previous=first["report_json"]))
    change = json.loads(Path(result["report_json"]).read_text())["change"]
    figures = {f["figure"]: f for f in change["figures"]}
    assert figures["rows"] == {"figure": "rows", "previous": 5, "current": 4, "change": -1}
    assert figures["exact duplicate rows"]["change"] == 1
    assert change["columns_added"] == ["lang"] and change["previous_dataset_hash"] == before["dataset_hash"]
    assert "Change against the previous snapshot" in Path(result["report_html"]).read_text()
    with pytest.raises(StepFailed, match="previous report cannot be read"):
        run(EdaConfig(dataset=str(path), out=str(tmp_path / "x"), previous=str(tmp_path / "missing.json")))


def test_token_lengths_use_the_configured_tokenizer(tmp_path):
    from llmops_tasks.local.bootstrap import train_tokenizer

    tokenizer = train_tokenizer(samples.corpus_text()[:40], vocab_size=300)
    tokenizer.save_pretrained(tmp_path / "tok")
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    result = run(EdaConfig(dataset=str(path), out=str(tmp_path / "eda"), tokenizer=str(tmp_path / "tok")))
    stats = json.loads(Path(result["report_json"]).read_text())
    expected = max(len(tokenizer(r["rejected"], add_special_tokens=False)["input_ids"]) for r in ROWS)
    assert stats["text_columns"]["rejected"]["tokens"]["max"] == expected
    assert stats["tokenizer"] == str(tmp_path / "tok")


def test_column_wise_file_read_gives_the_statistics_of_records(tmp_path):
    """The Arrow-read file and the same rows as records (the row-by-row path) agree, Unicode included."""
    from llmops_tasks.eda import describe

    rows = [dict(r) for r in ROWS] + [
        {"id": "f", "prompt": "Wie setze ich ÜBER das Konto zurück?", "chosen": "Öffne die Einstellungen\u3000jetzt",
         "rejected": "ﬁle", "source": "chat"},
        {"id": "g", "prompt": "how do I reset it", "chosen": "mail ops@example.com", "rejected": " ", "source": ""},
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    result = run(EdaConfig(dataset=str(path), out=str(tmp_path / "eda"), chunk_rows=3))
    stats = json.loads(Path(result["report_json"]).read_text())
    records = [{**r, "_line": i + 1} for i, r in enumerate(rows)]
    expected = json.loads(json.dumps(describe(records, "preference"), sort_keys=True))
    assert {k: v for k, v in stats.items() if k not in ("dataset", "dataset_hash")} == expected
    assert stats["text_columns"]["rejected"]["blank"] == 1
    assert stats["text_columns"]["chosen"]["tokens"]["max"] == 4  # U+3000 separates words, as in str.split()
    assert {"bigram": "das konto", "count": 1} in describe(records, "preference", top_k=100)["prompts"]["top_bigrams"]
    assert stats["pii"]["rows_by_kind"] == {"email": 1}


def _bigrams_by_counter(rows: list[dict], chunk_rows: int, cap: int, top_k: int) -> list[dict]:
    """The prompt bigrams as eda counted them before BigramCounter: a Counter per data set, updated
    chunk by chunk and pruned with ``most_common`` past ``cap``: the reference for the fast path."""
    import heapq
    import itertools
    from collections import Counter

    from llmops_tasks.text.records import prompt_cell

    counter: Counter[str] = Counter()
    for start in range(0, len(rows), chunk_rows):
        for row in rows[start:start + chunk_rows]:
            text, _ = prompt_cell(row.get("prompt"))
            if text is None:
                continue
            words = [w for w in re.findall(r"[\w']+", text.lower())]
            counter.update(f"{a} {b}" for a, b in itertools.pairwise(words))
        if len(counter) > cap:
            counter = Counter(dict(counter.most_common(cap // 2)))
    ranked = heapq.nsmallest(top_k, counter.items(), key=lambda item: (-item[1], item[0]))
    return [{"bigram": gram, "count": n} for gram, n in ranked]


@pytest.mark.parametrize("cap", [10_000, 60])  # 60: pruned several times, ties decided by insertion order
def test_bigram_counts_match_a_counter_with_its_pruning(tmp_path, monkeypatch, cap):
    from llmops_tasks import eda

    rows = samples.preference_rows() + [dict(r) for r in ROWS] + [
        {"id": "u", "prompt": "Wie setze ich das Konto zurück? Das Konto!", "chosen": "a", "rejected": "b"},
        {"id": "v", "prompt": [{"role": "user", "content": "how do I reset it"}], "chosen": "a", "rejected": "b"},
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    monkeypatch.setattr(eda, "BIGRAM_CAP", cap)
    result = run(EdaConfig(dataset=str(path), out=str(tmp_path / "eda"), chunk_rows=7, top_k=40))
    stats = json.loads(Path(result["report_json"]).read_text())
    assert stats["prompts"]["top_bigrams"] == _bigrams_by_counter(rows, 7, cap, 40)


def test_block_reader_gives_the_chunks_of_the_line_reader(tmp_path):
    """JSONL read in blocks (the usual layout) and line by line (blank lines, a line Arrow would read
    differently) give the same chunks, line numbers and records as iter_chunks."""
    from llmops_tasks.core import data

    lines = [json.dumps(r) for r in ROWS * 4]
    layouts = {
        "usual.jsonl": "".join(line + "\n" for line in lines),
        "no_final_newline.jsonl": "\n".join(lines),
        "blank_later.jsonl": "".join(line + "\n" for line in lines[:9]) + "\n \n" + "".join(
            line + "\n" for line in lines[9:]),
        "scalar_later.jsonl": "".join(line + "\n" for line in lines[:11]) + '"x"\n',
    }
    for name, text in layouts.items():
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        for rows in (1, 4, 6, 100):
            try:
                expected = list(data.iter_chunks(str(path), rows))
            except data.DataError as exc:
                with pytest.raises(data.DataError, match=re.escape(str(exc))):
                    list(data.read_chunks(str(path), rows))
                continue
            chunks = list(data.read_chunks(str(path), rows))
            assert [c.records for c in chunks] == expected, (name, rows)
            assert [list(c.lines) for c in chunks] == [[r["_line"] for r in chunk] for chunk in expected]


def test_read_ahead_keeps_order_raises_where_the_reader_raised_and_stops_when_left():
    """prefetch: the items in order; the reader's error at its own position; a consumer that stops
    early stops the reading thread and closes the reader there."""
    import threading

    from llmops_tasks.core import data

    assert list(data.prefetch(iter(range(50)), ahead=3)) == list(range(50))
    assert list(data.prefetch(iter([]))) == []

    def failing():
        yield 1
        yield 2
        raise data.DataError("line 3: not JSON")

    reading = data.prefetch(failing())
    assert [next(reading), next(reading)] == [1, 2]
    with pytest.raises(data.DataError, match="line 3: not JSON"):
        next(reading)

    closed = threading.Event()

    def endless():
        try:
            n = 0
            while True:
                n += 1
                yield n
        finally:
            closed.set()

    reading = data.prefetch(endless(), ahead=2)
    assert [next(reading), next(reading)] == [1, 2]
    reading.close()
    assert closed.is_set()
    assert not any(t.name == "llmops-read-ahead" and t.is_alive() for t in threading.enumerate())
