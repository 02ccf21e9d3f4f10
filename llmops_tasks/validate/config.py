"""The ``validate`` step's settings and rule names."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from llmops_tasks.core import data
from llmops_tasks.core.config import field, require
from llmops_tasks.text import pii
from llmops_tasks.text.records import TEXT_COLUMNS

# Measurement columns are named ``{column}__{measure}``; the double underscore keeps them apart
# from data columns.
TYPE_SUFFIX = "__type"
PAIR_EQUAL_COLUMN = "chosen_equals_rejected__derived"
# Per-row flags whose mean is a data set rule's share (Data Docs name them; they are totalled while streaming).
PROMPT_REPEATS_COLUMN = "prompt__repeats"
CHOSEN_LONGER_COLUMN = "chosen_longer_than_rejected__derived"
DATASET_CHECK = "data set statistic"  # the ``expectation`` of a data set rule in validation.json
ALLOWED_TYPES = ("text", "messages")
MESSAGE_SAMPLE = 5  # row ids named per failed rule in the error message
REPORT_SAMPLE = 100  # row ids kept per rule in validation.json
SEVERITIES = ("block", "warn")

# Rule families: a rule is named ``{column}_{family}`` for per-column rules, else by its family.
# ``severity`` and ``mostly`` settings take a family (all columns) or an exact rule name.
COLUMN_FAMILIES = ("present", "not_null", "is_text", "not_blank", "length", "tokens", "valid_utf8",
                   "no_control_chars")
# The conversational rules (validate/conversations.py) and their measurement columns: checked only
# where a row holds a message list, by a GX suite of their own (batches without one skip it).
CONVERSATION_COLUMNS = {
    "message_roles_known": "conversation__roles",
    "message_content_non_empty": "conversation__content",
    "prompt_ends_with_user_turn": "conversation__prompt_end",
    "answers_are_assistant_turns": "conversation__answer_roles",
    "tool_messages_follow_tool_calls": "conversation__tool_calls",
    "text_forms_match": "conversation__forms",
    "chat_template_renders": "conversation__chat_template",
}
ROW_FAMILIES = ("no_pii", "id_unique", "no_duplicate_rows", "no_normalized_duplicates",
                "chosen_differs_from_rejected", "prompt_not_in_against", "prompt_not_in_against_normalized",
                *CONVERSATION_COLUMNS)
DATASET_FAMILIES = ("row_count", "prompt_duplication", "length_bias")
FAMILIES = COLUMN_FAMILIES + ROW_FAMILIES + DATASET_FAMILIES
# Statistics that describe rather than condemn: reported, but a run goes on unless told otherwise.
DEFAULT_SEVERITY = {"no_normalized_duplicates": "warn", "prompt_duplication": "warn", "length_bias": "warn"}

def family_of(rule: str) -> str:
    if rule in FAMILIES:
        return rule
    for family in COLUMN_FAMILIES:
        if rule.endswith("_" + family) and rule[: -len(family) - 1] in TEXT_COLUMNS:
            return family
    return rule


def _share(where: str, value: Any) -> float:
    """A value from 0 to 1 (YAML gives a number, ``--set`` gives text)."""
    try:
        share = float(value) if not isinstance(value, bool) else -1.0
    except (TypeError, ValueError):
        share = -1.0
    require(0.0 <= share <= 1.0, f"{where}: expected a share from 0 to 1, got {value!r}")
    return share


def _check_rule_keys(setting: str, mapping: dict[str, Any]) -> None:
    for key in mapping:
        require(
            family_of(str(key)) in FAMILIES,
            f"{setting}: unknown rule {key!r}; use a rule family ({', '.join(FAMILIES)}) "
            f"or an exact rule name such as prompt_not_blank",
        )


@dataclasses.dataclass
class ValidateConfig:
    """Settings of the ``validate`` step."""

    dataset: str = field("", path="input",
                         help="data set to check: path or URI of a .jsonl or .parquet file (required)")
    kind: Literal["preference", "sft", "eval"] = field(
        "preference", help="kind of data set; decides the required columns and rules"
    )
    report_dir: str = field("", path="output", help="folder for validation.json, quarantine.jsonl and Data Docs "
                                                    "(default: the run's validate step folder)")
    against: str = field("", path="input", help="data set whose prompts must not appear here (e.g. the eval split): "
                                                "contamination check, exact and normalized; empty = no check")
    against_policy: str = field("", path="config",
                                help="policy the `against` set is itself validated with first (a fixed eval "
                                     "set: validate_eval.yaml), a path or the name of a packaged policy; "
                                     "its report goes under {report_dir}/eval_set; empty = only read")
    min_rows: int = field(1, help="fewest rows the data set may have")
    max_rows: int = field(0, help="most rows the data set may have; 0 = no limit")
    min_chars: int = field(1, help="fewest characters a text field may have (message lists: their joined content)")
    max_chars: int = field(20000, help="most characters a text field may have (message lists: their joined content)")
    tokenizer: str = field("", path="model", help="tokenizer folder or name for token lengths (AutoTokenizer); "
                                                 "empty = whitespace-separated words")
    min_tokens: int = field(0, help="fewest tokens a text field may have; 0 = no lower bound")
    max_tokens: int = field(0, help="most tokens a text field may have; 0 = no token rule")
    check_chat_template: bool = field(
        True, help="with `tokenizer` set: render every row holding a message list with the tokenizer's chat "
                   "template as TRL does (prompt with the generation prompt, prompt + each answer, messages), "
                   "rule chat_template_renders; costs a few template renders per conversational row (about "
                   "0.1 to 1 ms each, by template), strings cost nothing; false = no render")
    check_duplicates: bool = field(True, help="fail on rows repeating an earlier row's prompt and response text")
    pii_kinds: list[str] = field(default_factory=lambda: list(pii.KINDS),
                                 help=f"kinds of personal data and secrets to look for ({', '.join(pii.KINDS)}); "
                                      "empty = no PII rule")
    max_prompt_duplication: float = field(
        0.5, help="largest share of rows whose prompt repeats an earlier row's (0 to 1)")
    max_chosen_longer_share: float = field(
        0.95, help="length bias limit: largest share of pairs whose chosen answer is longer than the rejected one")
    severity: dict[str, str] = field(
        default_factory=dict,
        help="block | warn per rule family or exact rule name, e.g. {no_pii: warn}; "
             f"defaults: block, except {', '.join(f'{k}={v}' for k, v in DEFAULT_SEVERITY.items())}")
    mostly: dict[str, float] = field(
        default_factory=dict,
        help="share of rows (0 to 1) that must pass a row rule, per family or exact rule name; default 1.0")
    chunk_rows: int = field(50_000, help="rows read and checked at a time; bounds memory for large data sets")
    gx_batch_rows: int = field(
        250_000, help="rows per Great Expectations batch: the measurements of consecutive chunks (whole chunks) "
                      "are checked together, as each GX run has a fixed cost (about 0.4 s)")
    data_docs: bool = field(True, help="build Great Expectations Data Docs (HTML) under {report_dir}/gx")

    def __post_init__(self) -> None:
        require(
            bool(self.dataset and str(self.dataset).strip()),
            "dataset: required; give the path or URI of a .jsonl or .parquet file (--dataset PATH)",
        )
        require(self.kind in data.KINDS, f"kind: expected one of {list(data.KINDS)}, got {self.kind!r}")
        require(self.min_rows >= 0, f"min_rows: expected 0 or more, got {self.min_rows}")
        require(self.max_rows >= 0, f"max_rows: expected 0 (no limit) or more, got {self.max_rows}")
        require(
            self.max_rows == 0 or self.max_rows >= self.min_rows,
            f"max_rows ({self.max_rows}) must be 0 (no limit) or at least min_rows ({self.min_rows})",
        )
        require(self.min_chars >= 0, f"min_chars: expected 0 or more, got {self.min_chars}")
        require(
            self.max_chars >= max(self.min_chars, 1),
            f"max_chars: expected at least min_chars ({self.min_chars}) and 1, got {self.max_chars}",
        )
        require(self.min_tokens >= 0, f"min_tokens: expected 0 or more, got {self.min_tokens}")
        require(
            self.max_tokens == 0 or self.max_tokens >= self.min_tokens,
            f"max_tokens: expected 0 (no limit) or at least min_tokens ({self.min_tokens}), got {self.max_tokens}",
        )
        unknown = sorted(set(self.pii_kinds) - set(pii.KINDS))
        require(not unknown, f"pii_kinds: unknown kind(s) {unknown}; known kinds are {list(pii.KINDS)}")
        for name in ("max_prompt_duplication", "max_chosen_longer_share"):
            value = getattr(self, name)
            require(0.0 <= value <= 1.0, f"{name}: expected a share from 0 to 1, got {value}")
        _check_rule_keys("severity", self.severity)
        for key, value in self.severity.items():
            require(value in SEVERITIES, f"severity.{key}: expected one of {list(SEVERITIES)}, got {value!r}")
        _check_rule_keys("mostly", self.mostly)
        self.mostly = {key: _share(f"mostly.{key}", value) for key, value in self.mostly.items()}
        require(self.chunk_rows >= 1, f"chunk_rows: expected 1 or more, got {self.chunk_rows}")
        require(self.gx_batch_rows >= 1, f"gx_batch_rows: expected 1 or more, got {self.gx_batch_rows}")

    def severity_of(self, rule: str) -> str:
        family = family_of(rule)
        return self.severity.get(rule) or self.severity.get(family) or DEFAULT_SEVERITY.get(family, "block")

    def mostly_of(self, rule: str) -> float:
        value = self.mostly.get(rule, self.mostly.get(family_of(rule), 1.0))
        return float(value)
