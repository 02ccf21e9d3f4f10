"""The conversational rules: what TRL needs of message lists, checked on the rows that hold one.

TRL's conventions (``trl.data_utils``, and the trainers' ``tokenize_fn``): a cell is
conversational when it is a list of ``{role, content}`` messages; the roles are ``system``,
``user``, ``assistant`` and ``tool`` (``prepare_multimodal_messages`` refuses any other); an
assistant message may carry ``tool_calls`` instead of content, and ``tool`` messages hold their
results; DPO, KTO and SFT render ``prompt`` with the generation prompt and then ``prompt +
answer`` (the answer's messages appended), SFT's ``messages`` as a whole, each with the row's
``tools`` and ``chat_template_kwargs``; evaluate renders an eval prompt with the generation
prompt (``serving.generation``). The rules (each a measurement column of its own: :data:`OK`, a
sentence naming the cell and message, or None where the rule does not apply to the row):

- ``message_roles_known``: every message of every message list is a mapping whose ``role`` is
  system, user, assistant or tool.
- ``message_content_non_empty``: every message's ``content`` is text (a string, or text parts)
  that is not blank; an assistant message with ``tool_calls`` may have empty or no content.
- ``prompt_ends_with_user_turn``: a conversational prompt has messages and its last one is a user
  turn or a tool result (the answer responds to it): not an assistant turn (TRL would append the
  answer after it, training a second assistant turn or a continuation of it) nor a system one.
- ``answers_are_assistant_turns``: a conversational answer (chosen, rejected, completion,
  reference) has messages, all of them assistant turns or the tool results of their calls, and
  ends with an assistant turn; an SFT ``messages`` conversation ends with an assistant turn.
- ``tool_messages_follow_tool_calls``: in the conversation as TRL renders it (the prompt, then
  each answer; or ``messages``), a tool message comes right after an assistant message with
  ``tool_calls`` or after another tool result of those calls; ``tool_calls`` is only on assistant
  messages and is a non-empty list of calls, each naming its function (``function.name``, or
  ``name``).
- ``text_forms_match`` (preference and SFT data): a row's prompt and answers are all message
  lists or all strings (TRL joins ``prompt + answer``: a list and a string cannot be).
- ``chat_template_renders`` (``tokenizer`` set and ``check_chat_template``): the tokenizer's chat
  template renders the row as TRL (or evaluate) does: no exception, a text back.

Only rows holding a list in a checked text column are looked at, in Python: a data set of
strings pays one vectorized comparison per column and chunk.
"""

from __future__ import annotations

import json
from typing import Any

from llmops_tasks.core.config import ConfigError
from llmops_tasks.text.columns import TextColumn
from llmops_tasks.validate.config import CONVERSATION_COLUMNS

OK = "ok"  # the measurement of a conversational row that keeps the rule
ROLES = ("system", "user", "assistant", "tool")
ANSWER_COLUMNS = ("chosen", "rejected", "completion", "reference")
TRAINED_ANSWERS = ("chosen", "rejected", "completion")  # what TRL appends to the prompt
PROMPT_ENDS = ("user", "tool")
_LIMIT = 60  # characters of a data value quoted in a problem


def _quote(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _LIMIT else text[:_LIMIT] + "…"


def _turn(role: str) -> str:
    return {"assistant": "an assistant turn", "tool": "a tool result"}.get(role, f"a {role} turn")


def _role(message: Any) -> Any:
    return message.get("role") if isinstance(message, dict) else None


def conversational_rows(chunk, columns: dict[str, TextColumn]) -> list[int]:
    """Rows holding a list in one of ``columns``: only columns that were not all strings are
    looked at, and in them only the rows that are not text."""
    import numpy as np

    rows: set[int] = set()
    for column, text in columns.items():
        if text.column_wise:
            continue
        candidates = np.flatnonzero(np.not_equal(text.kinds, "text") & text.present)
        if len(candidates):
            records = chunk.records
            rows.update(i for i in candidates.tolist() if isinstance(records[i].get(column), (list, tuple)))
    return sorted(rows)


def _message_problems(column: str, cell: list) -> tuple[str | None, str | None, bool]:
    """(roles problem, content problem, whether it uses tools) of one message list: the first
    message breaking each rule."""
    roles = content = None
    tools = False
    for j, message in enumerate(cell):
        if not isinstance(message, dict):
            roles = roles or f"{column}[{j}] is not a message (a mapping with role and content)"
            continue
        role, value, calls = message.get("role"), message.get("content"), message.get("tool_calls")
        tools = tools or calls is not None or role == "tool"
        if role in ROLES and isinstance(value, str) and value and not value.isspace():
            continue  # the common message, at the cost of three lookups
        where = f"{column}[{j}]"
        if role not in ROLES:
            roles = roles or (f"{where} has no role" if role is None
                              else f"{where} has role {_quote(role)}, not one of {', '.join(ROLES)}")
        if content is not None or (role == "assistant" and calls and value in (None, "", [])):
            continue  # a tool call needs no words
        if isinstance(value, list):  # text parts: [{"type": "text", "text": ...}]
            parts = [p.get("text") if isinstance(p, dict) and p.get("type") == "text" else None for p in value]
            if not all(isinstance(p, str) for p in parts):
                content = f"{where} has content parts that are not all text"
                continue
            value = "".join(parts)
        if value is None:
            content = f"{where} has no content"
        elif not isinstance(value, str):
            content = f"{where} has content of type {type(value).__name__}, not text"
        elif not value or value.isspace():
            content = f"{where} has empty content"
    return roles, content, tools


def _call_problem(where: str, message: dict) -> str | None:
    calls = message.get("tool_calls")
    if calls is None:
        return None
    if message.get("role") != "assistant":
        return f"{where} has tool_calls but is a {_quote(message.get('role'))} message, not an assistant one"
    if not isinstance(calls, list) or not calls:
        return f"{where} has tool_calls that are not a non-empty list of calls"
    for k, call in enumerate(calls):
        if not isinstance(call, dict):
            return f"{where}.tool_calls[{k}] is not a call (a mapping naming its function)"
        # The OpenAI form {"type": "function", "function": {"name": ...}}, or the call itself named.
        function = call.get("function")
        name = function.get("name") if isinstance(function, dict) else call.get("name")
        if not isinstance(name, str) or not name.strip():
            return f"{where}.tool_calls[{k}] names no function"
    return None


def _tool_problem(parts: list[tuple[str, list]]) -> str | None:
    """The first tool message of the conversation ``parts`` (cells in the order TRL joins them)
    without a tool call before it, or the first malformed ``tool_calls``."""
    calling = False  # the previous message was an assistant's tool call, or a tool result of one
    for column, cell in parts:
        for j, message in enumerate(cell):
            if not isinstance(message, dict):
                calling = False
                continue
            where = f"{column}[{j}]"
            problem = _call_problem(where, message)
            if problem:
                return problem
            role = message.get("role")
            if role == "tool":
                if not calling:
                    return f"{where} is a tool result without an assistant tool call before it"
            else:
                calling = role == "assistant" and bool(message.get("tool_calls"))
    return None


def _answer_problem(column: str, cell: list) -> str | None:
    if not cell:
        return f"{column} has no messages"
    for j, message in enumerate(cell):
        role = _role(message)
        if role not in ("assistant", "tool") and role in ROLES:
            return f"{column}[{j}] is {_turn(role)}; an answer holds assistant turns"
    last = _role(cell[-1])
    if last != "assistant" and last in ROLES:
        return f"{column} ends with {_turn(last)}, not an assistant turn"
    return None


def check_row(record: dict[str, Any], text_columns: tuple[str, ...], kind: str) -> dict[str, str]:
    """``{rule: OK or the problem}`` for the rules that apply to one row holding a message list
    (unknown roles and non-mappings are left to ``message_roles_known``)."""
    cells = {c: record.get(c) for c in text_columns}
    lists = {c: list(v) for c, v in cells.items() if isinstance(v, (list, tuple))}
    found: dict[str, str] = {}
    roles = content = None
    tools = False
    for column, cell in lists.items():
        cell_roles, cell_content, cell_tools = _message_problems(column, cell)
        roles, content, tools = roles or cell_roles, content or cell_content, tools or cell_tools
    found["message_roles_known"] = roles or OK
    found["message_content_non_empty"] = content or OK

    prompt = lists.get("prompt")
    if prompt is not None:
        last = _role(prompt[-1]) if prompt else None
        if not prompt:
            found["prompt_ends_with_user_turn"] = "prompt has no messages"
        elif last in PROMPT_ENDS or last not in ROLES:  # an unknown role is message_roles_known's
            found["prompt_ends_with_user_turn"] = OK
        else:
            found["prompt_ends_with_user_turn"] = f"prompt ends with {_turn(last)}, not a user turn"

    answers = [c for c in ANSWER_COLUMNS if c in lists]
    problem = next(filter(None, (_answer_problem(c, lists[c]) for c in answers)), None)
    if "messages" in lists:
        conversation = lists["messages"]
        last = _role(conversation[-1]) if conversation else None
        if not conversation:
            problem = problem or "messages has no messages"
        elif last != "assistant" and last in ROLES:
            problem = problem or f"messages ends with {_turn(last)}, not an assistant turn"
    if answers or "messages" in lists:
        found["answers_are_assistant_turns"] = problem or OK

    conversations: list[list[tuple[str, list]]] = []  # none to walk when no message is or calls a tool
    if tools and "messages" in lists:
        conversations.append([("messages", lists["messages"])])
    if tools and prompt is not None:  # the prompt as TRL renders it: before each answer
        conversations += [[("prompt", prompt), (c, lists[c])] for c in answers] or [[("prompt", prompt)]]
    elif tools:
        conversations += [[(c, lists[c])] for c in answers]
    found["tool_messages_follow_tool_calls"] = next(
        filter(None, (_tool_problem(parts) for parts in conversations)), None) or OK

    if kind != "eval":  # evaluate reads a reference as text (text.records.answer_text) whatever the prompt is
        joined = [c for c in ("prompt", *TRAINED_ANSWERS) if cells.get(c) is not None]
        strings = [c for c in joined if isinstance(cells[c], str)]
        listed = [c for c in joined if c in lists]
        if listed and len(joined) > 1:
            found["text_forms_match"] = (
                f"{', '.join(listed)} {'is a message list' if len(listed) == 1 else 'are message lists'} but "
                f"{', '.join(strings)} {'is' if len(strings) == 1 else 'are'} text" if strings else OK)
    return found


class ChatTemplate:
    """The configured tokenizer's chat template, loaded on the first conversational row: a data
    set of strings needs no chat template, and pays nothing for one."""

    def __init__(self, tokenizer: str) -> None:
        self.name = tokenizer
        self._tokenizer = None

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            try:
                from transformers import AutoTokenizer

                self._tokenizer = AutoTokenizer.from_pretrained(self.name)
            except Exception as exc:  # a missing folder or hub name raises one of many types
                raise ConfigError(f"tokenizer: cannot load {self.name!r} ({type(exc).__name__}: {exc})") from exc
        return self._tokenizer

    def render(self, record: dict[str, Any], text_columns: tuple[str, ...], kind: str) -> str | None:
        """OK, the first render that failed (what was rendered, the exception), or None when the row
        has nothing TRL would render with a template (no message list in prompt or messages)."""
        lists = {c: record.get(c) for c in text_columns if isinstance(record.get(c), list)}
        renders: list[tuple[str, list, dict[str, Any]]] = []
        if "messages" in lists:
            renders.append(("messages", lists["messages"], {}))
        if "prompt" in lists:
            prompt = lists["prompt"]
            renders.append(("prompt", prompt, {"add_generation_prompt": True}))
            if kind != "eval":
                renders += [(f"prompt + {c}", prompt + lists[c], {}) for c in TRAINED_ANSWERS if c in lists]
        if not renders:
            return None
        tokenizer = self.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            return f"the tokenizer {self.name!r} has no chat template"
        tools = record.get("tools")
        try:
            tools = json.loads(tools) if isinstance(tools, str) else tools
        except ValueError as exc:
            return f"tools: not JSON ({exc})"
        extra = record.get("chat_template_kwargs") or {}
        if not isinstance(extra, dict):
            return "chat_template_kwargs: not a mapping"
        for what, conversation, options in renders:
            try:
                text = tokenizer.apply_chat_template(conversation, tools=tools or None, tokenize=False,
                                                     **options, **extra)
            except Exception as exc:  # noqa: BLE001 (a template raises what its author chose: jinja errors, ValueError)
                message = " ".join(str(exc).split())
                return f"{what}: {type(exc).__name__}: {message if len(message) <= 160 else message[:160] + '…'}"
            if not isinstance(text, str):
                return f"{what}: the template gave {type(text).__name__}, not text"
        return OK


def measure(chunk, columns: dict[str, TextColumn], text_columns: tuple[str, ...], kind: str,
            template: ChatTemplate | None) -> dict[str, Any]:
    """The conversational measurement columns of a chunk (:data:`CONVERSATION_COLUMNS`), or {} when
    no row holds a message list."""
    import numpy as np
    import pandas as pd

    rows = conversational_rows(chunk, columns)
    if not rows:
        return {}
    n = len(chunk)
    values = {rule: np.full(n, None, dtype=object) for rule in CONVERSATION_COLUMNS}
    records = chunk.records
    for i in rows:
        for rule, value in check_row(records[i], text_columns, kind).items():
            values[rule][i] = value
        if template is not None:
            values["chat_template_renders"][i] = template.render(records[i], text_columns, kind)
    return {CONVERSATION_COLUMNS[rule]: pd.Series(column, dtype=object) for rule, column in values.items()}
