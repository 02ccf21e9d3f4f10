"""The Great Expectations suite over the measurement table, and the context that runs it."""

from __future__ import annotations

from typing import Any, ClassVar

from llmops_tasks.validate.config import ALLOWED_TYPES, MESSAGE_SAMPLE, PAIR_EQUAL_COLUMN, TYPE_SUFFIX, ValidateConfig

# --- the suite -------------------------------------------------------------------------------


def build_suite(config: ValidateConfig, text_columns: tuple[str, ...], frame_columns: set[str],
                name: str = "llmops"):
    """The Expectation Suite over the measurement table; each expectation's ``meta.rule`` is its rule."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    rules: list[Any] = []

    def add(rule: str, expectation: Any) -> None:
        expectation.meta = {"rule": rule, "severity": config.severity_of(rule), "mostly": config.mostly_of(rule)}
        rules.append(expectation)

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


def _context(docs_root: str | None):
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
    """One GX context, suite and validation definition; :meth:`run` checks one chunk."""

    RESULT_FORMAT: ClassVar[dict[str, Any]] = {
        "result_format": "COMPLETE",
        "unexpected_index_column_names": ["id", "row"],
        "partial_unexpected_count": MESSAGE_SAMPLE,
        "return_unexpected_index_query": False,
    }

    def __init__(self, suite, docs_root: str | None = None):
        import great_expectations as gx

        self.context = _context(docs_root)
        batch = (
            self.context.data_sources.add_pandas("llmops")
            .add_dataframe_asset("dataset")
            .add_batch_definition_whole_dataframe("chunk")
        )
        suite = self.context.suites.add(suite)
        self.definition = self.context.validation_definitions.add(
            gx.ValidationDefinition(name="validate", data=batch, suite=suite))

    def run(self, frame):
        return self.definition.run(batch_parameters={"dataframe": frame}, result_format=self.RESULT_FORMAT)

    def build_docs(self) -> str | None:
        self.context.build_data_docs()
        urls = self.context.get_docs_sites_urls()
        url = urls[0]["site_url"] if urls else None
        return url.removeprefix("file://") if url else None
