"""The Great Expectations suite over the measurement table, and the context that runs it."""

from __future__ import annotations

from typing import Any, ClassVar

from llmops_tasks.validate.config import (
    ALLOWED_TYPES,
    CHOSEN_LONGER_COLUMN,
    CONVERSATION_COLUMNS,
    MESSAGE_SAMPLE,
    PAIR_EQUAL_COLUMN,
    PROMPT_REPEATS_COLUMN,
    TYPE_SUFFIX,
    ValidateConfig,
    family_of,
)
from llmops_tasks.validate.conversations import OK

SUITE_NAME = "llmops"
GX_SEVERITY = {"block": "critical", "warn": "warning"}

# --- the suite -------------------------------------------------------------------------------


def _statement(config: ValidateConfig, rule: str) -> str:
    """What ``rule`` asks of the data, in the words of the rules rather than of the measurement table."""
    family = family_of(rule)
    column = rule.removesuffix("_" + family)
    tokens = f"{config.min_tokens} to {config.max_tokens}" if config.max_tokens else f"at least {config.min_tokens}"
    rows = f"{config.min_rows} to {config.max_rows}" if config.max_rows else f"at least {config.min_rows}"
    statements = {
        "present": f"column {column} is present",
        "not_null": f"every row has {column}",
        "is_text": f"{column} is text or a list of messages",
        "not_blank": f"{column} is not blank",
        "length": f"{column} has {config.min_chars} to {config.max_chars} characters",
        "tokens": f"{column} has {tokens} tokens ({'of the tokenizer' if config.tokenizer else 'words'})",
        "valid_utf8": f"{column} is valid UTF-8",
        "no_control_chars": f"{column} has no control characters",
        "no_pii": f"no personal data or secrets ({', '.join(config.pii_kinds)})",
        "id_unique": "no row repeats an earlier row's id",
        "no_duplicate_rows": "no row repeats an earlier row",
        "no_normalized_duplicates": "no row repeats an earlier row once case, spacing and punctuation are normalized",
        "chosen_differs_from_rejected": "chosen differs from rejected",
        "prompt_not_in_against": "no prompt is in the against set",
        "prompt_not_in_against_normalized": "no prompt is in the against set once normalized",
        "message_roles_known": "every message is a mapping whose role is system, user, assistant or tool",
        "message_content_non_empty": "every message has text content that is not blank "
                                     "(an assistant tool call may have none)",
        "prompt_ends_with_user_turn": "a conversational prompt ends with a user turn or a tool result",
        "answers_are_assistant_turns": "conversational answers are assistant turns (and the tool results of "
                                       "their calls) ending with an assistant turn; messages end with one",
        "tool_messages_follow_tool_calls": "a tool message follows an assistant tool call (or another result "
                                           "of it); tool_calls are only on assistant messages and name functions",
        "text_forms_match": "a row's prompt and answers are all message lists or all text",
        "chat_template_renders": "the tokenizer's chat template renders the row as TRL (or, for eval data, "
                                 "evaluate) does",
        "row_count": f"row count {rows}",
        "prompt_duplication": f"at most {config.max_prompt_duplication:.1%} of rows repeat an earlier prompt",
        "length_bias": f"chosen is longer than rejected in at most {config.max_chosen_longer_share:.1%} of pairs",
    }
    return statements[family]


def _described(config: ValidateConfig, rule: str, expectation: Any, streamed: bool = False) -> Any:
    """``expectation`` carrying its rule: ``meta.rule``, severity (GX's critical / warning), ``mostly``,
    and a description in the rules' words, which Data Docs show instead of GX's own sentence about
    a measurement column. It is HTML there: only our own words go in."""
    severity, mostly = config.severity_of(rule), config.mostly_of(rule)
    expectation.meta = {"rule": rule, "severity": severity, "mostly": mostly}
    expectation.severity = GX_SEVERITY[severity]
    if mostly < 1.0 and hasattr(expectation, "mostly"):
        expectation.mostly = mostly  # the verdict is Tally's, over all batches
    share = f", in at least {mostly:.1%} of rows" if mostly < 1.0 else ""
    where = "; from the streamed totals of the whole data set, not a GX batch run" if streamed else ""
    expectation.description = f"{rule} ({severity}{share}): {_statement(config, rule)}{where}"
    return expectation


def build_suite(config: ValidateConfig, text_columns: tuple[str, ...], frame_columns: set[str],
                name: str = SUITE_NAME):
    """The Expectation Suite over the measurement table; each expectation's ``meta.rule`` is its rule."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    rules: list[Any] = []

    def add(rule: str, expectation: Any) -> None:
        rules.append(_described(config, rule, expectation))

    for column in text_columns:
        add(f"{column}_not_null", gxe.ExpectColumnValuesToNotBeNull(column=column + TYPE_SUFFIX))
        add(f"{column}_is_text",
            gxe.ExpectColumnValuesToBeInSet(column=column + TYPE_SUFFIX, value_set=list(ALLOWED_TYPES)))
        add(f"{column}_not_blank", gxe.ExpectColumnValuesToBeInSet(column=column + "__blank", value_set=[False]))
        add(f"{column}_length", gxe.ExpectColumnValuesToBeBetween(
            column=column + "__chars", min_value=config.min_chars, max_value=config.max_chars))
        if config.max_tokens or config.min_tokens:
            add(f"{column}_tokens", gxe.ExpectColumnValuesToBeBetween(
                column=column + "__tokens", min_value=config.min_tokens, max_value=config.max_tokens or None))
        add(f"{column}_valid_utf8", gxe.ExpectColumnValuesToBeInSet(column=column + "__valid_utf8", value_set=[True]))
        add(f"{column}_no_control_chars",
            gxe.ExpectColumnValuesToBeInSet(column=column + "__control_chars", value_set=[False]))
    checks = (
        ("no_pii", "pii__found", None),
        ("id_unique", "id__repeats", [False]),
        ("no_duplicate_rows", "row__duplicate", [False]),
        ("no_normalized_duplicates", "row__normalized_duplicate", [False]),
        ("chosen_differs_from_rejected", PAIR_EQUAL_COLUMN, [False]),
        ("prompt_not_in_against", "prompt__in_against", [False]),
        ("prompt_not_in_against_normalized", "prompt__in_against_normalized", [False]),
    )
    for rule, column, allowed in checks:
        if column not in frame_columns:
            continue
        if allowed is None:
            add(rule, gxe.ExpectColumnValuesToBeNull(column=column))
        else:
            # GX has no "row differs from earlier rows" expectation across batches: the measured
            # boolean column must be all False.
            add(rule, gxe.ExpectColumnValuesToBeInSet(column=column, value_set=allowed))
    return gx.ExpectationSuite(name=name, expectations=rules)


def conversation_rules(config: ValidateConfig) -> list[str]:
    """The conversational rules this check applies: chat_template_renders needs a tokenizer, and
    eval data may pair a conversational prompt with a text reference (no text_forms_match)."""
    left_out = {"chat_template_renders"} if not (config.tokenizer and config.check_chat_template) else set()
    left_out |= {"text_forms_match"} if config.kind == "eval" else set()
    return [rule for rule in CONVERSATION_COLUMNS if rule not in left_out]


def conversation_suite(config: ValidateConfig, name: str = SUITE_NAME + "_conversations"):
    """The conversational rules (:mod:`.conversations`) as a suite of their own: each column holds
    ``ok`` or the problem for a row with a message list, and is null on other rows, which GX
    counts as missing. Batches without a message list skip this suite (:meth:`SuiteRunner.run`)."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    rules = [_described(config, rule, gxe.ExpectColumnValuesToBeInSet(column=CONVERSATION_COLUMNS[rule],
                                                                        value_set=[OK]))
             for rule in conversation_rules(config)]
    return gx.ExpectationSuite(name=name, expectations=rules)


def dataset_expectation(config: ValidateConfig, rule: str):
    """The built-in expectation that states a data set rule (``report.dataset_rules``). GX does not
    evaluate it (each batch is a part of the data set): the rule's outcome comes from the streamed
    totals, and Data Docs show it as this expectation's result. Shares of rows are the mean of a
    per-row 0/1 flag: ``prompt__repeats`` (the prompt repeats an earlier row's), and
    ``chosen_longer_than_rejected__derived``."""
    import great_expectations.expectations as gxe

    if rule == "row_count":
        expectation = gxe.ExpectTableRowCountToBeBetween(min_value=config.min_rows, max_value=config.max_rows or None)
    elif rule == "prompt_duplication":
        expectation = gxe.ExpectColumnMeanToBeBetween(column=PROMPT_REPEATS_COLUMN,
                                                      max_value=config.max_prompt_duplication)
    elif rule == "length_bias":
        expectation = gxe.ExpectColumnMeanToBeBetween(column=CHOSEN_LONGER_COLUMN,
                                                      max_value=config.max_chosen_longer_share)
    elif rule.endswith("_present"):
        expectation = gxe.ExpectColumnToExist(column=rule.removesuffix("_present"))
    else:
        raise ValueError(f"no expectation states the data set rule {rule!r}")
    return _described(config, rule, expectation, streamed=True)


def gx_context(docs_root: str | None):
    """An ephemeral GX context; with ``docs_root``, its stores and Data Docs site live there."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        FilesystemStoreBackendDefaults,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    stores = FilesystemStoreBackendDefaults(root_directory=docs_root) if docs_root else InMemoryStoreBackendDefaults()
    project = DataContextConfig(
        store_backend_defaults=stores,
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
    )
    return gx.get_context(project_config=project, mode="ephemeral")


class SuiteRunner:
    """One GX context, suite and validation definition; :meth:`run` checks one batch, and
    :meth:`run_conversations` the conversational measurements of a batch holding message lists."""

    RESULT_FORMAT: ClassVar[dict[str, Any]] = {
        "result_format": "COMPLETE",
        "unexpected_index_column_names": ["id", "row"],
        "partial_unexpected_count": MESSAGE_SAMPLE,
        "return_unexpected_index_query": False,
    }

    def __init__(self, suite, conversations=None):
        # In memory: each batch's result is one part of the check; Data Docs show the whole
        # check's result (datadocs.build).
        self.context = gx_context(None)
        self.batch = (
            self.context.data_sources.add_pandas("llmops")
            .add_dataframe_asset("dataset")
            .add_batch_definition_whole_dataframe("chunk")
        )
        self.definition = self._add("validate", suite)
        self.conversations = conversations
        self.conversation_columns = [e.column for e in conversations.expectations] if conversations else []
        self.conversation_definition = None  # added on the first batch holding a message list

    def _add(self, name: str, suite):
        import great_expectations as gx

        return self.context.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=self.batch, suite=self.context.suites.add(suite)))

    def run(self, frame):
        return self.definition.run(batch_parameters={"dataframe": frame}, result_format=self.RESULT_FORMAT)

    def run_conversations(self, frame):
        if self.conversation_definition is None:
            self.conversation_definition = self._add("validate_conversations", self.conversations)
        return self.conversation_definition.run(batch_parameters={"dataframe": frame},
                                                result_format=self.RESULT_FORMAT)
