"""The model card renders from the pipeline's own files; the registry attaches it (test_registry.py)."""

from __future__ import annotations

import pytest

from llmops_tasks.registry import modelcard

pytestmark = pytest.mark.unit

TRAIN = {"method": "dpo", "global_step": 200, "final_loss": 0.4213, "adapter_dir": "/runs/x/train/adapter",
         "mlflow_run_id": "abc123"}
METRICS = {
    "candidate": {"bleu": 0.52, "rougeL": 0.61}, "champion": {"bleu": 0.50, "rougeL": 0.60},
    "delta": {"bleu": 0.02, "rougeL": 0.01}, "ci": {"bleu": [-0.01, 0.05]}, "ci_level": 0.95,
    "bootstrap_samples": 1000, "champion_label": "production v3", "n": 43,
}
LINEAGE = {"llmops.base_model": "meta-llama/Llama-3.2-1B", "llmops.base_model_hash": "",
           "llmops.dataset_hash": "d" * 64, "llmops.source_run": "llm_retraining/manual__1",
           "llmops.config_hash": "cfg", "llmops.package_version": "0.1.0"}


def card(validation=None, **overrides) -> str:
    arguments = {"model_name": "helpdesk", "version": "4", "train": TRAIN, "metrics": METRICS,
                 "decision": {"passed": True, "reason": "passed all 7 rules"}, "validation": validation,
                 "lineage": LINEAGE, "hyperparameters": {"learning_rate": "5e-05", "beta": "0.1", "output_dir": "/x"}}
    return modelcard.render(**{**arguments, **overrides})


def test_the_card_names_the_adapter_and_its_base():
    text = card()
    assert text.startswith("# helpdesk v4\n")
    assert "**dpo** (LoRA adapter, merged for serving) from base model `meta-llama/Llama-3.2-1B`" in text
    assert "sha256 `unknown`" in text  # a hub id has no local folder to hash


def test_metrics_show_the_change_and_its_interval_or_say_there_is_none():
    text = card()
    assert "| bleu | 0.5200 | 0.5000 | +0.0200 | [-0.0100, +0.0500] |" in text
    assert "| rougeL | 0.6100 | 0.6000 | +0.0100 | not computed |" in text
    assert "Against the champion **production v3** on 43 held-out prompts" in text


def test_only_the_listed_hyperparameters_are_shown():
    text = card()
    assert "| learning_rate | 5e-05 |" in text and "| beta | 0.1 |" in text
    assert "output_dir" not in text
    assert "All parameters: MLflow run `abc123`." in text


def test_data_quality_reports_failed_rules_and_pii_findings():
    validation = {"valid": True, "rows": 1200, "rules": [
        {"rule": "prompt_not_blank", "success": False, "unexpected_count": 3},
        {"rule": "pii_email", "success": True}, {"rule": "pii_phone", "success": False, "unexpected_count": 1}],
        "skipped_rules": [{"rule": "id_unique", "reason": "column 'id' is missing"}]}
    text = card(validation)
    assert "1200 rows" in text
    assert "Great Expectations: 3 rules, 2 failed (valid: true)." in text
    assert "- failed `prompt_not_blank`: 3 rows" in text
    assert "PII checks: 2 rules, findings in `pii_phone`." in text
    assert "- skipped `id_unique`: column 'id' is missing" in text


def test_without_a_validation_report_the_card_says_so():
    text = card()
    assert "No validation report was given for this version." in text
    assert "unknown rows" in text


def test_intended_use_and_limitations_can_be_replaced():
    text = card(intended_use="Internal FAQ drafts only.", limitations="English only.")
    assert "## Intended use\n\nInternal FAQ drafts only." in text
    assert "## Limitations\n\nEnglish only." in text


def test_a_long_card_is_cut_to_fit_the_version_description():
    long_card = "x" * 9000
    cut = modelcard.as_description(long_card, "artifact model_card.md of run r1")
    assert len(cut) == modelcard.DESCRIPTION_LIMIT
    assert cut.endswith("(cut; the full card is artifact model_card.md of run r1)\n")
    assert modelcard.as_description("short", "x") == "short"


# What outside values can hold: each tries to end a code span, split a table row, start a block,
# make a link, an image, an autolink or HTML.
HOSTILE = [
    "a`b", "``x``", "`", " lead and trail ", "[x](javascript:alert(1))", "![i](http://evil.example/p.png)",
    "<script>alert(1)</script>", "<http://evil.example>", "http://evil.example/login", "www.evil.example",
    "a | b || c", "line1\n# heading\r\n- item\n\n[r]: javascript:alert(1)", "&lt;b&gt; &#106;avascript",
    "*bold* _it_ ~~gone~~ \\", "1. list", "---", "<!-- comment -->",
]


def markdown():
    """A real CommonMark renderer (markdown-it-py), GFM-like: tables, strikethrough and bare-URL
    autolinks (linkify) on, and raw HTML on too (MLflow's renderer passes HTML to a sanitizer):
    the escaping must not rely on a renderer that refuses HTML."""
    from markdown_it import MarkdownIt

    return MarkdownIt("gfm-like", {"html": True, "linkify": True})


def tokens(md, text: str) -> list:
    found = []
    for token in md.parse(text):
        found.append(token)
        found.extend(token.children or [])
    return found


@pytest.mark.parametrize("value", HOSTILE)
def test_code_span_shows_the_value_verbatim_in_one_code_node(value):
    md = markdown()
    for in_table in (False, True):
        span = modelcard.code_span(value, in_table=in_table)
        text = f"| a |\n| --- |\n| {span} |\n" if in_table else f"before {span} after\n"
        parsed = tokens(md, text)
        codes = [t for t in parsed if t.type == "code_inline"]
        assert [c.content for c in codes] == [modelcard._one_line(value)]
        assert not [t for t in parsed if t.type in ("link_open", "image", "html_inline", "html_block")]


@pytest.mark.parametrize("value", HOSTILE)
def test_md_text_renders_as_its_own_text_and_nothing_else(value):
    md = markdown()
    escaped = modelcard.md_text(value)
    for text, blocks in ((f"{escaped}\n", {"paragraph"}), (f"- {escaped}\n", {"bullet_list", "list_item", "paragraph"}),
                         (f"| a |\n| --- |\n| {escaped} |\n", {"table", "thead", "tbody", "tr", "th", "td"})):
        parsed = tokens(md, text)
        assert {t.type.removesuffix("_open").removesuffix("_close") for t in parsed if t.nesting} <= blocks, text
        inline = [t for t in parsed if t.type == "inline"][-1]
        assert {c.type for c in inline.children} <= {"text"}, text
        shown = "".join(c.content for c in inline.children)
        assert shown == modelcard._one_line(value).strip()


def governance_tags(**overrides) -> dict:
    return {"llmops.approval": "waived", "llmops.approval_by": "airflow", "llmops.approval_at": "2026-01-02T03:04:05Z",
            "llmops.approval_comment": "auto: require_approval=false", "llmops.gate_policy": "policies/team_gate.yaml",
            "llmops.gate_policy_standard": "false",
            "llmops.gate_overrides": '{"max_regression": {"standard": 0.02, "value": 0.05}}',
            "llmops.exceptions": ("approval waived by airflow (deployment allows waivers: LLMOPS_ALLOW_APPROVAL_WAIVER); "
                                  "non-standard gate policy: max_regression=0.05 (standard 0.02) "
                                  "(deployment allows it: LLMOPS_ALLOW_GATE_OVERRIDE)"),
            **overrides}


def test_the_governance_section_names_decision_policy_overrides_and_each_exception_in_bold():
    text = "\n".join(modelcard.governance_section(governance_tags()))
    assert text.startswith("## Governance\n\n- approval: **waived** by airflow at 2026-01-02T03:04:05Z\n")
    assert "- comment: auto: require\\_approval=false" in text
    assert "- gate policy: `policies/team_gate.yaml` (**not the deployment's standard policy**)" in text
    assert "- gate settings overridden at trigger time: max\\_regression=0.05 (standard 0.02)" in text
    assert ("- **exception: approval waived by airflow (deployment allows waivers: LLMOPS\\_ALLOW\\_APPROVAL\\_WAIVER)**"
            in text)
    assert "- **exception: non-standard gate policy: max\\_regression=0.05 (standard 0.02)" in text
    standard = "\n".join(modelcard.governance_section({"llmops.gate_policy": "gate.yaml",
                                                         "llmops.gate_policy_standard": "true",
                                                         "llmops.gate_overrides": "{}", "llmops.exceptions": ""}))
    assert "- approval: pending (no decision recorded yet)" in standard
    assert "(the deployment's standard policy)" in standard
    assert "overridden at trigger time: none" in standard and "- exceptions: none" in standard


def test_render_includes_the_governance_section_known_at_register_time():
    text = card(lineage={**LINEAGE, "llmops.gate_policy": "gate.yaml", "llmops.gate_policy_standard": "true",
                         "llmops.gate_overrides": "{}", "llmops.exceptions": ""})
    assert text.index("## Governance") < text.index("## Lineage")
    assert "- approval: pending (no decision recorded yet)" in text
    assert "- gate policy: `gate.yaml` (the deployment's standard policy)" in text


def test_with_governance_replaces_the_section_in_place_and_is_idempotent():
    registered = modelcard.as_description(card(), "artifact model_card.md of run r1")
    decided = modelcard.with_governance(registered, governance_tags())
    assert decided.count("## Governance") == 1
    assert "pending" not in decided and "- approval: **waived** by airflow" in decided
    assert decided.index("## Governance") < decided.index("## Lineage")
    assert decided.split("## Governance")[0] == registered.split("## Governance")[0]
    assert decided.split("## Lineage")[1] == registered.split("## Lineage")[1]
    assert modelcard.with_governance(decided, governance_tags()) == decided
    rejected = modelcard.with_governance(decided, governance_tags(**{"llmops.approval": "rejected",
                                                                     "llmops.exceptions": ""}))
    assert "- approval: **rejected** by airflow" in rejected and "exception:" not in rejected
    # A description without a section (a version registered before governance) gets one after its summary.
    old = "# helpdesk v1\n\nFine-tuned.\n\n## Lineage\n\n- x\n"
    inserted = modelcard.with_governance(old, governance_tags())
    assert inserted.startswith("# helpdesk v1\n\nFine-tuned.\n\n## Governance\n\n")
    assert inserted.endswith("## Lineage\n\n- x\n")
    assert modelcard.with_governance(inserted, governance_tags()) == inserted


def test_with_governance_stays_within_the_limit_cutting_the_rest_never_the_section():
    long_card = card(limitations="long " * 2000, lineage={**LINEAGE, "llmops.model_card_run": "r9"})
    assert len(long_card) > modelcard.DESCRIPTION_LIMIT
    tags = governance_tags(**{"llmops.approval_comment": "why " * 1000, "llmops.model_card_run": "r9"})
    decided = modelcard.with_governance(long_card, tags)
    assert len(decided) <= modelcard.DESCRIPTION_LIMIT
    section = "\n".join(modelcard.governance_section(tags))
    assert section in decided
    assert decided.endswith("(cut; the full card is artifact model_card.md of run r9)\n")
    assert modelcard.with_governance(decided, tags) == decided
    # A description cut at registration keeps its own pointer, and the section.
    described = modelcard.as_description(long_card, "artifact model_card.md of run r1")
    assert len(described) <= modelcard.DESCRIPTION_LIMIT and "## Governance" in described
    again = modelcard.with_governance(described, tags)
    assert len(again) <= modelcard.DESCRIPTION_LIMIT and section in again
    assert again.endswith("(cut; the full card is artifact model_card.md of run r1)\n")


def test_a_card_of_hostile_values_renders_with_no_link_image_html_or_extra_structure():
    """Every value from outside (names, paths, reasons, comments, rule names, data set facts) set to
    something hostile; a real CommonMark renderer must produce only the card's own structure."""
    evil = "`x` | [x](javascript:alert(1)) <script>alert(1)</script>\n# h http://evil.example"
    lineage = {key: evil for key in (*LINEAGE, "llmops.train_data_hash", "llmops.eval_data_hash",
                                     "llmops.code_revision", "llmops.gate_policy")}
    lineage.update(governance_tags(**{key: evil for key in ("llmops.approval_by", "llmops.approval_comment",
                                                            "llmops.exceptions", "llmops.gate_policy")}))
    validation = {"valid": evil, "rows": evil, "rules": [{"rule": evil, "success": False, "unexpected_count": evil},
                                                         {"rule": "pii_" + evil, "success": False}],
                  "skipped_rules": [{"rule": evil, "reason": evil}]}
    metrics = {**METRICS, "champion_label": evil, "n": evil, "candidate": {evil: 0.5, "bleu": evil}}
    text = modelcard.render(
        model_name=evil, version=evil, train={**TRAIN, "method": evil, "mlflow_run_id": evil, "global_step": evil},
        metrics=metrics, decision={"passed": True, "reason": evil}, validation=validation, lineage=lineage,
        hyperparameters={"learning_rate": evil, "beta": "0.1"}, intended_use=evil, limitations=evil)
    md = markdown()
    parsed = tokens(md, text)
    assert not [t for t in parsed if t.type in ("link_open", "image", "html_inline", "html_block")]
    headings = [parsed[i + 1].content for i, t in enumerate(parsed) if t.type == "heading_open"]
    assert headings[1:] == ["Governance", "Lineage", "Training", "Evaluation", "Data quality", "Intended use",
                            "Limitations"]
    rendered = md.render(text)
    assert "<script" not in rendered and "<a " not in rendered and "<img" not in rendered
    # Each table keeps its columns: the hostile value stays in its cell.
    rows = [t for t in parsed if t.type == "tr_open"]
    cells = [sum(1 for _ in group) for group in _cells_per_row(parsed)]
    assert len(rows) == len(cells) and set(cells) <= {2, 5}
    param_row = next(r for r in _row_texts(parsed) if r[0] == "learning_rate")
    assert param_row[1] == modelcard._one_line(evil)


def _cells_per_row(parsed):
    row = None
    for token in parsed:
        if token.type == "tr_open":
            row = []
        elif token.type in ("td_open", "th_open"):
            row.append(token)
        elif token.type == "tr_close":
            yield row


def _row_texts(parsed):
    row, inside = None, False
    for token in parsed:
        if token.type == "tr_open":
            row = []
        elif token.type in ("td_open", "th_open"):
            inside = True
        elif token.type == "inline" and inside and row is not None:
            row.append("".join(c.content for c in token.children or []))
            inside = False
        elif token.type == "tr_close":
            yield row


def test_the_governance_section_fits_a_description_whatever_the_tags_hold():
    """Escaping makes a value up to five times longer (``&`` is ``&amp;``): each value is cut
    before it is escaped, and at most a few exceptions are listed, so the section plus the
    pointer always fit in the description with room for the card's title."""
    worst = {key: "&<" * 3000 for key in ("llmops.approval", "llmops.approval_by", "llmops.approval_at",
                                          "llmops.approval_comment", "llmops.gate_overrides")}
    worst.update({"llmops.gate_policy": "`" * 3000, "llmops.exceptions": "; ".join(["&<" * 3000] * 10)})
    section = "\n".join(modelcard.governance_section(worst))
    assert len(section) < modelcard.DESCRIPTION_LIMIT - 500
    assert "- **exception: 6 more (tag llmops.exceptions)**" in section
    decided = modelcard.with_governance("# m v1\n\nSummary.\n\n## Lineage\n\n" + "y " * 5000, worst)
    assert len(decided) <= modelcard.DESCRIPTION_LIMIT and section in decided and decided.startswith("# m v1")
    parsed = tokens(markdown(), section)
    assert not [t for t in parsed if t.type in ("link_open", "image", "html_inline", "html_block")]


def test_the_card_names_the_tokenization_and_what_could_not_be_measured():
    from llmops_tasks.registry.modelcard import _tokenization_line

    metrics = {"tokenization": {"summary": "BLEU zh, ROUGE char (script Han, detected)"},
               "unmeasurable": {"bleu": "no reference has a token under 13a"}}
    line = _tokenization_line(metrics)
    assert line.startswith("Tokenization: BLEU zh, ROUGE char (script Han, detected).")
    assert "**bleu not measured**: no reference has a token under 13a." in line
    assert _tokenization_line({}) == "Tokenization: not recorded (sacrebleu 13a, rouge\\_score default)."


def test_a_version_trained_on_a_curated_snapshot_says_how_much_came_from_feedback(tmp_path):
    """Lineage from the snapshot's manifest (the registry reads it), then the card's lines."""
    from llmops_tasks.core import data
    from llmops_tasks.registry import _snapshot_lineage

    manifest = tmp_path / "v0002-bbbbbbbbbbbb" / "manifest.json"
    manifest.parent.mkdir()
    data.write_json(str(manifest), {  # the shape llmops curate writes (curation/step.py)
        "version": "v0002-bbbbbbbbbbbb", "content_hash": "b" * 64,
        "files": {"preference": "data.parquet", "kto": "kto.parquet", "sft": "sft.parquet", "traces": "traces.txt"},
        "counts": {"rows": 140, "feedback_rows": 12, "rows_by_source": {"base": 128, "correction": 12}}})
    lineage = _snapshot_lineage(str(manifest))
    assert lineage["llmops.data_snapshot"] == str(manifest.parent / "data.parquet")
    assert lineage["llmops.data_snapshot_hash"] == "b" * 64
    assert lineage["llmops.data_snapshot_feedback_rows"] == "12" and lineage["llmops.data_snapshot_rows"] == "140"
    assert _snapshot_lineage("") == {}
    text = card(lineage={**LINEAGE, **lineage, "llmops.trigger": "new preference snapshot (12 from feedback)"})
    assert "curated preference snapshot `v0002-bbbbbbbbbbbb`" in text
    assert "140 rows, 12 of them from production feedback" in text
    assert "started by: new preference snapshot" in text
    assert "curated preference snapshot" not in card()
