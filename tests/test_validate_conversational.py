"""The conversational rules of validate (message roles, turn order, content, tool calls, the chat
template) on real Great Expectations and real files: JSONL and Parquet in tmp_path.

The tiny model's tokenizer has no chat template (``llmops init`` trains a bare BPE tokenizer), so
the chat template tests give a copy of it one: :data:`TEMPLATE`, which, like Gemma's, refuses a
system message.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmops_tasks.core.errors import StepFailed
from llmops_tasks.validate import ValidateConfig, run
from llmops_tasks.validate.config import CONVERSATION_COLUMNS
from llmops_tasks.validate.conversations import OK, check_row

pytestmark = pytest.mark.integration

CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ raise_exception('System role not supported') }}{%- endif -%}"
    "<|{{ message['role'] }}|>"
    "{%- if message.tool_calls -%}{%- for call in message.tool_calls -%}<call>{{ call.function.name }}</call>"
    "{%- endfor -%}{%- endif -%}"
    "{{ message['content'] or '' }}</s>"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def preference_row(i: int, **change) -> dict:
    row = {"id": f"r{i}", "prompt": [user(f"How do I fix thing {i}?")],
           "chosen": [assistant(f"Open the panel and restart service {i}.")], "rejected": [assistant(f"No idea {i}.")]}
    row.update(change)
    return row


def good_preference(n: int = 6) -> list[dict]:
    """Conversational preference rows TRL takes: a system prompt, several turns, a tool call
    (without content, as TRL documents it) and its result inside the chosen answer, parallel tool
    calls ending the prompt with their results."""
    rows = [preference_row(i) for i in range(n)]
    rows[1]["prompt"] = [{"role": "system", "content": "Be brief."}, user("Hi"), assistant("Hello!"), user("Fix 1?")]
    rows[3]["chosen"] = [{"role": "assistant", "tool_calls": [CALL]}, {"role": "tool", "content": "sunny"},
                         assistant("It is sunny in Paris.")]
    rows[4]["prompt"] = [user("Weather?"), {"role": "assistant", "content": "", "tool_calls": [CALL, CALL]},
                         {"role": "tool", "content": "sunny"}, {"role": "tool", "content": "warm"}]
    return rows


def write(path: Path, rows: list[dict]) -> str:
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pa.Table.from_pylist(rows)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            pytest.skip("Parquet holds one type per column and struct field: these rows cannot be written")
        pq.write_table(table, path)
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def validate(dataset: str, tmp_path: Path, **settings) -> dict:
    settings.setdefault("data_docs", False)
    return run(ValidateConfig(dataset=dataset, report_dir=str(tmp_path / "report"), **settings))


def report_of(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "report" / "validation.json").read_text())


def rules_of(tmp_path: Path) -> dict[str, dict]:
    return {r["rule"]: r for r in report_of(tmp_path)["rules"]}


def _with(rows: list[dict], changes: dict[int, dict]) -> list[dict]:
    for index, change in changes.items():
        rows[index].update(change)
    return rows


def sft_rows(n: int = 4) -> list[dict]:
    return [{"id": f"s{i}", "messages": [user(f"hi {i}"), assistant(f"hello {i}")]} for i in range(n)]


def eval_rows(n: int = 4) -> list[dict]:
    return [{"id": f"e{i}", "prompt": [user(f"question {i}")], "reference": f"answer {i}"} for i in range(n)]


# (case, kind, rows, rule, row ids, words of the problem the report quotes)
BAD_CASES = [
    ("unknown role", "preference", _with(good_preference(), {2: {"prompt": [{"role": "wizard", "content": "Hm?"}]}}),
     "message_roles_known", ["r2"], "prompt[0] has role 'wizard'"),
    ("message without role", "preference", _with(good_preference(), {5: {"chosen": [{"content": "hi"}]}}),
     "message_roles_known", ["r5"], "chosen[0] has no role"),
    ("chosen spoken by the user", "preference", _with(good_preference(), {1: {"chosen": [user("I say so")]}}),
     "answers_are_assistant_turns", ["r1"], "chosen[0] is a user turn"),
    ("answer ends with a tool result", "preference",
     _with(good_preference(), {0: {"rejected": [{"role": "assistant", "tool_calls": [CALL]},
                                                {"role": "tool", "content": "sunny"}]}}),
     "answers_are_assistant_turns", ["r0"], "rejected ends with a tool result"),
    ("empty answer list", "preference", _with(good_preference(), {4: {"rejected": []}}),
     "answers_are_assistant_turns", ["r4"], "rejected has no messages"),
    ("prompt ends with an assistant turn", "preference",
     _with(good_preference(), {0: {"prompt": [user("Fix it?"), assistant("Sure, here is")]},
                               5: {"prompt": [user("Fix it?"), {"role": "system", "content": "Be nice."}]}}),
     "prompt_ends_with_user_turn", ["r0", "r5"], "prompt ends with an assistant turn"),
    ("empty content", "preference", _with(good_preference(), {3: {"rejected": [assistant("  ")]}}),
     "message_content_non_empty", ["r3"], "rejected[0] has empty content"),
    ("content not a string", "preference", _with(good_preference(), {1: {"chosen": [assistant(42)]}}),
     "message_content_non_empty", ["r1"], "chosen[0] has content of type int"),
    ("tool message without a tool call", "preference",
     _with(good_preference(), {2: {"prompt": [user("Weather?"), {"role": "tool", "content": "sunny"}]}}),
     "tool_messages_follow_tool_calls", ["r2"], "prompt[1] is a tool result without an assistant tool call"),
    ("tool call on a user message", "preference",
     _with(good_preference(), {0: {"prompt": [{"role": "user", "content": "Go", "tool_calls": [CALL]}]}}),
     "tool_messages_follow_tool_calls", ["r0"], "prompt[0] has tool_calls but is a 'user' message"),
    ("tool call naming no function", "preference",
     _with(good_preference(), {5: {"chosen": [{"role": "assistant", "tool_calls": [{"type": "function"}]},
                                              {"role": "tool", "content": "?"}, assistant("Done.")]}}),
     "tool_messages_follow_tool_calls", ["r5"], "chosen[0].tool_calls[0] names no function"),
    ("string prompt with message answers", "preference",
     _with(good_preference(), {3: {"prompt": "How do I fix thing 3?"}}),
     "text_forms_match", ["r3"], "chosen, rejected are message lists but prompt is text"),
    ("sft messages ending with the user", "sft", _with(sft_rows(), {1: {"messages": [user("hi"), assistant("yo"),
                                                                                        user("and?")]}}),
     "answers_are_assistant_turns", ["s1"], "messages ends with a user turn"),
    ("sft messages with an unknown role", "sft",
     _with(sft_rows(), {3: {"messages": [{"role": "wizard", "content": "hi"}, assistant("hello")]}}),
     "message_roles_known", ["s3"], "messages[0] has role 'wizard'"),
    ("sft completion spoken by the user", "sft",
     [{"id": f"c{i}", "prompt": [user(f"q{i}")], "completion": [assistant(f"a{i}") if i else user("a0")]}
      for i in range(3)],
     "answers_are_assistant_turns", ["c0"], "completion[0] is a user turn"),
    ("eval prompt ending with an assistant turn", "eval",
     _with(eval_rows(), {2: {"prompt": [user("q"), assistant("I think")]}}),
     "prompt_ends_with_user_turn", ["e2"], "prompt ends with an assistant turn"),
]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
@pytest.mark.parametrize(("case", "kind", "rows", "rule", "named", "problem"), BAD_CASES,
                         ids=[c[0] for c in BAD_CASES])
def test_bad_conversations_fail_naming_rule_rows_and_problem(tmp_path, suffix, case, kind, rows, rule, named,
                                                             problem):
    with pytest.raises(StepFailed) as caught:
        validate(write(tmp_path / f"data{suffix}", rows), tmp_path, kind=kind)
    message = str(caught.value)
    assert f"{rule} ({len(named)} row{'s' if len(named) > 1 else ''}: {', '.join(named)})" in message
    assert "Traceback" not in message
    entry = rules_of(tmp_path)[rule]
    assert entry["success"] is False and entry["severity"] == "block"
    assert entry["unexpected_count"] == len(named) and sorted(entry["sample_ids"]) == sorted(named)
    assert entry["element_count"] == len(rows)
    assert any(problem in value for value in entry["sample_values"]), entry["sample_values"]
    quarantined = [json.loads(line) for line in (tmp_path / "report" / "quarantine.jsonl").read_text().splitlines()]
    assert sorted(q["row"] for q in quarantined if rule in q["rules"]) == sorted(named)
    assert all(q["blocking"] for q in quarantined)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_good_conversational_data_passes_every_conversational_rule(tmp_path, suffix):
    """TRL's conversational forms (system prompts, several turns, text parts, tool calls and their
    results) for preference, SFT (messages, prompt/completion) and eval data are valid."""
    sft = sft_rows()
    sft[2]["messages"] = [{"role": "system", "content": "Be brief."}, user("Weather?"),
                          {"role": "assistant", "tool_calls": [CALL]}, {"role": "tool", "content": "sunny"},
                          assistant("Sunny.")]
    completions = [{"id": f"c{i}", "prompt": [user(f"q{i}")], "completion": [assistant(f"a{i}")]} for i in range(3)]
    evals = eval_rows()
    preference = good_preference()
    # evaluate reads a reference as text either way; Parquet holds one type per column and struct field
    for row in evals[1:2] if suffix == ".jsonl" else evals:
        row["reference"] = [assistant(row["reference"])]
    if suffix == ".jsonl":
        preference[2]["rejected"] = [{"role": "assistant", "content": [{"type": "text", "text": "No idea 2."}]}]
    for name, kind, rows in (("preference", "preference", preference), ("sft", "sft", sft),
                             ("completion", "sft", completions), ("eval", "eval", evals)):
        result = validate(write(tmp_path / f"{name}{suffix}", rows), tmp_path / name, kind=kind)
        assert result["valid"], (name, result)
        rules = rules_of(tmp_path / name)
        expected = [r for r in CONVERSATION_COLUMNS if r != "chat_template_renders"]
        if kind == "eval":
            expected.remove("text_forms_match")
        assert [r for r in rules if r in CONVERSATION_COLUMNS] == expected, name
        if name == "sft":  # a messages conversation has no prompt, nor a prompt and answers to match
            expected = [r for r in expected if r not in ("prompt_ends_with_user_turn", "text_forms_match")]
        for rule in expected:
            assert rules[rule]["success"] and rules[rule]["checked_rows"] > 0, (name, rule)
        if kind != "eval":
            assert report_of(tmp_path / name)["text_forms"] == ["messages"], name


def test_plain_text_data_has_no_conversational_rules_and_needs_no_chat_template(tmp_path):
    rows = [{"id": f"t{i}", "prompt": f"How do I fix thing {i}?", "chosen": f"Restart service {i}.",
             "rejected": f"No idea {i}."} for i in range(4)]
    result = validate(write(tmp_path / "data.jsonl", rows), tmp_path, tokenizer=str(tmp_path / "not-loaded"))
    assert result["valid"]
    assert not set(rules_of(tmp_path)) & set(CONVERSATION_COLUMNS)  # nothing to check: not listed, not loaded


def test_message_lists_after_a_plain_first_chunk_are_checked(tmp_path):
    """The conversational suite runs on the GX batches holding a message list, whichever chunk it
    is in; the other batches count as missing rows, as GX would have counted them."""
    rows = [{"id": f"t{i}", "prompt": f"How do I fix thing {i}?", "chosen": f"Restart service {i}.",
             "rejected": f"No idea {i}."} for i in range(4)]
    rows += [preference_row(4), preference_row(5, prompt=[{"role": "wizard", "content": "Hm?"}])]
    with pytest.raises(StepFailed, match=r"message_roles_known \(1 row: r5\)"):
        validate(write(tmp_path / "data.jsonl", rows), tmp_path, chunk_rows=2, gx_batch_rows=2)
    entry = rules_of(tmp_path)["message_roles_known"]
    assert (entry["element_count"], entry["missing_count"], entry["checked_rows"]) == (6, 4, 2)
    assert report_of(tmp_path)["text_forms"] == ["messages", "text"]


def test_conversational_rules_in_data_docs_with_data_shown_as_text(tmp_path):
    """The conversational rules are in the Data Docs with the counts of validation.json; the role a
    row's problem quotes reaches the page as text, never as markup."""
    hostile = "<img src=x onerror=alert(1)>"
    rows = _with(good_preference(), {1: {"prompt": [{"role": hostile, "content": "Hm?"}]}})
    with pytest.raises(StepFailed) as caught:
        validate(write(tmp_path / "data.jsonl", rows), tmp_path, data_docs=True, chunk_rows=3, gx_batch_rows=3)
    report = report_of(tmp_path)
    stored = next((tmp_path / "report" / "gx" / "uncommitted" / "validations").rglob("*.json"))
    results = {r["expectation_config"]["meta"]["rule"]: r for r in json.loads(stored.read_text())["results"]}
    assert [r["rule"] for r in report["rules"]] == list(results)
    for rule in CONVERSATION_COLUMNS:
        if rule == "chat_template_renders":
            continue
        entry = next(r for r in report["rules"] if r["rule"] == rule)
        assert results[rule]["result"]["unexpected_count"] == entry["unexpected_count"], rule
        assert results[rule]["result"]["element_count"] == len(rows), rule
    assert results["message_roles_known"]["success"] is False
    site = Path(caught.value.result["data_docs"]).parent
    for page in site.rglob("*.html"):
        assert "<img src=x" not in page.read_text(encoding="utf-8"), page.name


@pytest.fixture(scope="module")
def chat_tokenizer(tiny_model, tmp_path_factory) -> str:
    """The tiny model's tokenizer with :data:`TEMPLATE` (it has no chat template of its own)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    assert not tokenizer.chat_template
    tokenizer.chat_template = TEMPLATE
    folder = tmp_path_factory.mktemp("chat") / "tokenizer"
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_chat_template_renders_every_conversational_row(tmp_path, chat_tokenizer):
    rows = good_preference()
    rows[1]["prompt"] = rows[1]["prompt"][1:]  # the template refuses the system message; the rest passes
    rows[5]["prompt"] = [{"role": "system", "content": "Be brief."}, user("Fix 5?")]  # valid, but not here
    with pytest.raises(StepFailed) as caught:
        validate(write(tmp_path / "data.jsonl", rows), tmp_path, tokenizer=chat_tokenizer)
    assert "chat_template_renders (1 row: r5)" in str(caught.value)
    assert caught.value.result["failed_rules"] == ["chat_template_renders"]
    entry = rules_of(tmp_path)["chat_template_renders"]
    assert entry["checked_rows"] == len(rows)
    assert entry["sample_values"] == ["prompt: TemplateError: System role not supported"]
    quarantined = [json.loads(line) for line in (tmp_path / "report" / "quarantine.jsonl").read_text().splitlines()]
    assert [(q["row"], q["rules"]) for q in quarantined] == [("r5", ["chat_template_renders"])]

    # SFT messages are rendered whole, eval prompts with the generation prompt, as evaluate does.
    sft = sft_rows()
    sft[0]["messages"] = [{"role": "system", "content": "Be brief."}, *sft[0]["messages"]]
    with pytest.raises(StepFailed, match=r"chat_template_renders \(1 row: s0\)"):
        validate(write(tmp_path / "sft.jsonl", sft), tmp_path / "sft", kind="sft", tokenizer=chat_tokenizer)
    assert validate(write(tmp_path / "eval.jsonl", eval_rows()), tmp_path / "eval", kind="eval",
                    tokenizer=chat_tokenizer)["valid"]
    assert validate(write(tmp_path / "off.jsonl", rows), tmp_path / "off", tokenizer=chat_tokenizer,
                    check_chat_template=False)["valid"]
    assert "chat_template_renders" not in rules_of(tmp_path / "off")


def test_a_tokenizer_without_chat_template_fails_conversational_rows_only(tmp_path, tiny_model):
    with pytest.raises(StepFailed, match=r"chat_template_renders \(6 rows: r0, r1, r2, r3, r4, \.\.\.\)"):
        validate(write(tmp_path / "data.jsonl", good_preference()), tmp_path, tokenizer=str(tiny_model))
    assert rules_of(tmp_path)["chat_template_renders"]["sample_values"][0].endswith("has no chat template")
    plain = [{"prompt": f"q{i}", "chosen": f"a{i}", "rejected": f"b{i}"} for i in range(3)]
    assert validate(write(tmp_path / "plain.jsonl", plain), tmp_path / "plain", tokenizer=str(tiny_model))["valid"]


@pytest.mark.unit
def test_row_checks_state_trl_conventions():
    """Edge cases of the rules' semantics, on one row at a time."""
    columns = ("prompt", "chosen", "rejected")
    ok = {"prompt": [user("q")], "chosen": [assistant("a")], "rejected": [assistant("b")]}
    assert set(check_row(ok, columns, "preference").values()) == {OK}
    # A prompt may end with tool results (the answer responds to them), several after parallel calls.
    tools = {**ok, "prompt": [user("q"), {"role": "assistant", "tool_calls": [CALL, CALL]},
                              {"role": "tool", "content": "1"}, {"role": "tool", "content": "2"}]}
    assert set(check_row(tools, columns, "preference").values()) == {OK}
    # A call without "function" that names itself is the other form chat templates take.
    named = {**ok, "chosen": [{"role": "assistant", "tool_calls": [{"name": "f", "arguments": {}}]}]}
    assert check_row(named, columns, "preference")["tool_messages_follow_tool_calls"] == OK
    # An unknown role is one rule's failure, not every rule's.
    wizard = {**ok, "prompt": [{"role": "wizard", "content": "q"}]}
    found = check_row(wizard, columns, "preference")
    assert [rule for rule, value in found.items() if value != OK] == ["message_roles_known"]
    # Eval data may pair a conversational prompt with a text reference.
    found = check_row({"prompt": [user("q")], "reference": "a"}, ("prompt", "reference"), "eval")
    assert "text_forms_match" not in found and set(found.values()) == {OK}
    # A tool result cannot answer a tool call across a user turn.
    late = {**ok, "prompt": [user("q"), {"role": "assistant", "tool_calls": [CALL]}, user("?"),
                             {"role": "tool", "content": "1"}]}
    assert check_row(late, columns, "preference")["tool_messages_follow_tool_calls"].startswith("prompt[3]")
