"""A catalog of broken data files: each one ends `llmops validate` with exit code 1 and a message
naming the file, the rule and the rows, never a traceback from inside a library.

The CLI's ``main`` runs in this process (the same code path as the console script, minus the
interpreter start-up); one case per kind of breakage, real GX and real readers throughout.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from llmops_tasks.cli import main

pytestmark = pytest.mark.integration


def _row(i: int, **change) -> dict:
    row = {"id": f"r{i}", "prompt": f"How do I fix thing {i}?", "chosen": f"Open the panel and restart service {i}.",
           "rejected": f"No idea {i}."}
    row.update(change)
    return row


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8")


def _good(n: int = 4, **changes: dict) -> bytes:
    """``n`` good rows; ``changes`` maps ``r<i>`` to the fields that break row ``i``."""
    return _jsonl([_row(i, **changes.get(f"r{i}", {})) for i in range(n)])


def _parquet(columns: dict) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table(columns), path)

    return write


EVAL_FILE = _jsonl([{"prompt": "How do I fix thing 1?", "reference": "restart"},
                    {"prompt": "how do I FIX thing 2", "reference": "restart"}])

# (case, file name, content (bytes, or a writer), extra CLI args, rule, what the message must name)
CASES = [
    ("empty file", "data.jsonl", b"", [], "row_count", ["0 rows, expected at least 1"]),
    ("only blank lines", "data.jsonl", b"\n  \n\n", [], "row_count", ["0 rows"]),
    ("not json", "data.jsonl", _good(1) + b"prompt,chosen,rejected\n", [], "json_lines", ["line 2"]),
    ("truncated line", "data.jsonl", _good(2) + b'{"prompt": "a", "cho', [], "json_lines", ["line 3"]),
    ("deeply nested line", "data.jsonl", _good(2) + b'{"prompt": ' + b"[" * 30_000 + b"]" * 30_000 + b"}\n", [],
     "json_lines", ["line 3", "nested too deeply"]),
    ("array instead of object", "data.jsonl", b'["a", "b", "c"]\n', [], "json_objects", ["line 1"]),
    ("invalid utf-8 bytes", "data.jsonl", _good(1) + b'{"prompt": "\xff\xfe"}\n', [], "utf8", ["line 2"]),
    ("lone surrogate escape", "data.jsonl", _good(3, r1={"prompt": "bad \ud800 text"}), [], "prompt_valid_utf8",
     ["r1"]),
    ("number as prompt", "data.jsonl", _good(3, r2={"prompt": 42}), [], "prompt_is_text", ["r2"]),
    ("missing column", "data.jsonl", _jsonl([{"prompt": "a", "chosen": "b"}]), [], "rejected_present",
     ["column 'rejected' is missing"]),
    ("null value", "data.jsonl", _good(3, r0={"chosen": None}), [], "chosen_not_null", ["r0"]),
    ("empty string", "data.jsonl", _good(3, r1={"rejected": ""}), [], "rejected_not_blank", ["r1"]),
    ("whitespace only", "data.jsonl", _good(3, r2={"prompt": " \t\n "}), [], "prompt_not_blank", ["r2"]),
    ("chosen equals rejected", "data.jsonl", _good(3, r1={"rejected": "Open the panel and restart service 1."}), [],
     "chosen_differs_from_rejected", ["r1"]),
    ("duplicate rows", "data.jsonl", _good(3) + _jsonl([_row(0, id="r9")]), [], "no_duplicate_rows", ["r9"]),
    ("duplicate ids", "data.jsonl", _good(3, r2={"id": "r0"}), [], "id_unique", ["r0"]),
    ("huge row", "data.jsonl", _good(3, r1={"chosen": "word " * 10_000}), [], "chosen_length", ["r1"]),
    ("too many tokens", "data.jsonl", _good(3, r2={"chosen": "one two three four five six seven"}),
     ["--max-tokens", "6"], "chosen_tokens", ["r2"]),
    ("control characters", "data.jsonl", _good(3, r0={"prompt": "reset\x07 the \x1b[31mbox"}), [],
     "prompt_no_control_chars", ["r0"]),
    ("email address", "data.jsonl", _good(3, r1={"chosen": "Write to jane.doe@example.org for help."}), [],
     "no_pii", ["r1"]),
    ("card number", "data.jsonl", _good(3, r2={"prompt": "My card 4111 1111 1111 1111 was charged twice"}), [],
     "no_pii", ["r2"]),
    ("secret key", "data.jsonl", _good(3, r0={"chosen": "Use key AKIAIOSFODNN7EXAMPLE in the config."}), [],
     "no_pii", ["r0"]),
    ("bad conversational roles", "data.jsonl",
     _good(3, r1={"chosen": [{"content": "hi"}], "prompt": [{"role": "", "content": "q"}]}), [],
     "chosen_is_text", ["r1"]),
    ("parquet with the wrong schema", "data.parquet", _parquet({"question": ["a"], "answer": ["b"]}), [],
     "prompt_present", ["column 'prompt' is missing"]),
    ("parquet with wrong types", "data.parquet",
     _parquet({"prompt": [1, 2], "chosen": ["a", "b"], "rejected": ["c", "d"]}), [], "prompt_is_text",
     ["row 1", "row 2"]),
    ("corrupt parquet", "data.parquet", b"PAR1 this is not parquet", [], "parquet_readable", []),
    ("unsupported file type", "data.csv", b"prompt,chosen,rejected\n", [], "file_type", []),
    ("train/eval overlap", "data.jsonl", _good(3), ["--against", "{eval}"], "prompt_not_in_against", ["r1"]),
    ("normalized train/eval overlap", "data.jsonl", _good(3), ["--against", "{eval}"],
     "prompt_not_in_against_normalized", ["r2"]),
    ("length bias made blocking", "data.jsonl", _good(4), ["--set", "severity.length_bias=block",
                                                             "--max-chosen-longer-share", "0.5"],
     "length_bias", ["chosen is longer than rejected in 100.0% of pairs"]),
]


@pytest.mark.parametrize(("case", "name", "content", "args", "rule", "named"), CASES, ids=[c[0] for c in CASES])
def test_broken_file_exits_1_naming_file_rule_and_rows(tmp_path, capsys, case, name, content, args, rule, named):
    path = tmp_path / name
    if callable(content):
        content(path)
    else:
        path.write_bytes(content)
    (tmp_path / "eval.jsonl").write_bytes(EVAL_FILE)
    args = [a.replace("{eval}", str(tmp_path / "eval.jsonl")) for a in args]
    report_dir = tmp_path / "report"

    status = main(["validate", "--dataset", str(path), "--report-dir", str(report_dir), "--data-docs", "false",
                   *args])

    captured = capsys.readouterr()
    assert status == 1, captured.err
    message = captured.err
    assert "Traceback" not in message and "Traceback" not in captured.out
    assert str(path) in message
    assert rule in message
    for text in named:
        assert text in message, message
    result = json.loads(captured.out)
    assert result["valid"] is False and rule in result["failed_rules"]
    report = json.loads((report_dir / "validation.json").read_text())
    assert rule in report["failed_rules"]
    quarantine = report_dir / "quarantine.jsonl"
    rows = [json.loads(line) for line in quarantine.read_text().splitlines()] if quarantine.exists() else []
    row_ids = [r for r in named if r.startswith("r") and r[1:].isdigit()]
    for rid in row_ids:  # rows that broke a row rule are in the quarantine file, with the rule
        assert any(q["row"] == rid and rule in q["rules"] for q in rows), rows
    assert not list(report_dir.glob("*.tmp-*"))  # nothing half-written


def test_catalog_has_at_least_twenty_kinds():
    assert len({case[0] for case in CASES}) >= 20


# --- conversational data: message lists TRL would train on wrongly, or fail on mid-training ---------

def _turn(role: str, content) -> dict:
    return {"role": role, "content": content}


def _talk(i: int, **change) -> dict:
    row = {"id": f"r{i}", "prompt": [_turn("user", f"How do I fix thing {i}?")],
           "chosen": [_turn("assistant", f"Open the panel and restart service {i}.")],
           "rejected": [_turn("assistant", f"No idea {i}.")]}
    row.update(change)
    return row


def _talks(n: int = 4, **changes: dict) -> bytes:
    return _jsonl([_talk(i, **changes.get(f"r{i}", {})) for i in range(n)])


def _talk_parquet(**changes: dict) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist([_talk(i, **changes.get(f"r{i}", {})) for i in range(4)]), path)

    return write


CONVERSATION_CASES = [
    ("unknown role", "data.jsonl", _talks(r1={"prompt": [_turn("wizard", "Abracadabra?")]}), [],
     "message_roles_known", ["r1", "prompt[0] has role 'wizard'"]),
    ("chosen spoken by the user", "data.jsonl", _talks(r2={"chosen": [_turn("user", "I answer myself.")]}), [],
     "answers_are_assistant_turns", ["r2", "chosen[0] is a user turn"]),
    ("prompt ending with an assistant turn", "data.jsonl",
     _talks(r0={"prompt": [_turn("user", "Fix it?"), _turn("assistant", "Sure, first")]}), [],
     "prompt_ends_with_user_turn", ["r0", "prompt ends with an assistant turn"]),
    ("empty message content", "data.jsonl", _talks(r1={"rejected": [_turn("assistant", "")]}), [],
     "message_content_non_empty", ["r1", "rejected[0] has empty content"]),
    ("message content not a string", "data.jsonl", _talks(r2={"chosen": [_turn("assistant", {"text": "hi"})]}), [],
     "message_content_non_empty", ["r2", "chosen[0] has content of type dict"]),
    ("tool message without a tool call", "data.jsonl",
     _talks(r1={"prompt": [_turn("user", "Weather?"), _turn("tool", "sunny")]}), [],
     "tool_messages_follow_tool_calls", ["r1", "prompt[1] is a tool result without an assistant tool call"]),
    ("conversational prompt with text answers", "data.jsonl",
     _talks(r3={"chosen": "Open the panel.", "rejected": "No idea."}), [],
     "text_forms_match", ["r3", "prompt is a message list but chosen, rejected are text"]),
    ("sft messages ending with the user", "data.jsonl",
     _jsonl([{"id": f"r{i}", "messages": [_turn("user", f"hi {i}"), _turn("assistant", "hello")]
              + ([_turn("user", "and?")] if i == 1 else [])} for i in range(3)]), ["--kind", "sft"],
     "answers_are_assistant_turns", ["r1", "messages ends with a user turn"]),
    ("parquet with an unknown role", "data.parquet", _talk_parquet(r2={"prompt": [_turn("wizard", "Hm?")]}), [],
     "message_roles_known", ["r2"]),
]


@pytest.mark.parametrize(("case", "name", "content", "args", "rule", "named"), CONVERSATION_CASES,
                         ids=[c[0] for c in CONVERSATION_CASES])
def test_broken_conversation_exits_1_naming_file_rule_and_rows(tmp_path, capsys, case, name, content, args, rule,
                                                               named):
    test_broken_file_exits_1_naming_file_rule_and_rows(tmp_path, capsys, case, name, content, args, rule, named)
