"""The validate step on real Great Expectations (ephemeral context) and tiny files in tmp_path."""

from __future__ import annotations

import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from llmops_tasks.core import config as config_module
from llmops_tasks.core.config import ConfigError
from llmops_tasks.core.errors import StepFailed
from llmops_tasks.local import samples
from llmops_tasks.validate import ValidateConfig, run

RECIPE = Path(__file__).resolve().parents[1] / "llmops_tasks" / "policies" / "validate_preference.yaml"
# The console-script entry point, run as a real process: same code path as `llmops validate ...`.
CLI = [sys.executable, "-c", "import sys; from llmops_tasks.cli import main; sys.exit(main())"]


def good_rows(n: int = 4) -> list[dict]:
    return [
        {"id": f"r{i}", "prompt": f"How do I fix thing {i}?", "chosen": f"Open the panel and restart service {i}.",
         "rejected": f"No idea {i}."}
        for i in range(n)
    ]


def write_rows(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def validate(dataset: str, tmp_path: Path, **settings) -> dict:
    settings.setdefault("data_docs", False)  # built once, in their own test: they cost seconds
    return run(ValidateConfig(dataset=dataset, report_dir=str(tmp_path / "report"), **settings))


def expect_failure(dataset: str, tmp_path: Path, **settings) -> tuple[str, dict]:
    with pytest.raises(StepFailed) as caught:
        validate(dataset, tmp_path, **settings)
    report = json.loads((tmp_path / "report" / "validation.json").read_text())
    assert report["valid"] is False
    assert caught.value.result["valid"] is False
    assert caught.value.result["failed_rules"] == report["failed_rules"]
    return str(caught.value), report


@pytest.fixture(scope="module")
def sample_path(tmp_path_factory) -> str:
    return str(samples.ensure_sample_data(tmp_path_factory.mktemp("sample")))


def test_sample_data_set_is_valid(sample_path, tmp_path):
    result = validate(sample_path, tmp_path)
    assert result["valid"] is True
    assert result["rows"] == len(samples.preference_rows())
    assert result["failed_rules"] == []
    assert len(result["dataset_hash"]) == 64
    report = json.loads(Path(result["report"]).read_text())
    rules = {r["rule"]: r for r in report["rules"]}
    for name in ("row_count", "prompt_present", "chosen_not_null", "rejected_not_blank", "prompt_length",
                 "chosen_is_text", "no_duplicate_rows", "chosen_differs_from_rejected", "id_unique"):
        assert rules[name]["success"] is True, name
    assert rules["chosen_differs_from_rejected"]["unexpected_count"] == 0


def test_same_input_gives_the_same_report(sample_path, tmp_path):
    first = validate(sample_path, tmp_path)
    text = Path(first["report"]).read_text()
    again = validate(sample_path, tmp_path)
    # Each attempt is its own MLflow step run; everything else is the same.
    assert again.pop("mlflow_run_url") != first.pop("mlflow_run_url")
    assert again == first
    assert Path(first["report"]).read_text() == text


def test_conversational_preference_rows_are_flattened_and_valid(tmp_path):
    rows = [
        {"prompt": [{"role": "user", "content": f"question {i}"}],
         "chosen": [{"role": "assistant", "content": f"helpful answer {i}"}],
         "rejected": [{"role": "assistant", "content": [{"type": "text", "text": f"rude answer {i}"}]}]}
        for i in range(3)
    ]
    result = validate(write_rows(tmp_path / "conv.jsonl", rows), tmp_path)
    assert result["valid"] and result["rows"] == 3
    report = json.loads(Path(result["report"]).read_text())
    assert report["text_forms"] == ["messages"]


def test_sft_messages_and_eval_kinds_are_valid(tmp_path):
    sft = [{"messages": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": "hello"}]}
           for i in range(2)]
    assert validate(write_rows(tmp_path / "sft.jsonl", sft), tmp_path, kind="sft")["valid"]
    evals = [{"prompt": f"q{i}", "reference": f"a{i}"} for i in range(2)]
    assert validate(write_rows(tmp_path / "eval.jsonl", evals), tmp_path, kind="eval")["valid"]


def _rows_with(changes: dict[int, dict]) -> list[dict]:
    rows = good_rows()
    for index, change in changes.items():
        rows[index].update(change)
    return rows


# (case, rows, settings, rule the message must name, row ids it must name)
# More kinds of broken rows are in test_bad_input_catalog.py, through the CLI.
ROW_CASES = [
    ("chosen equals rejected", _rows_with({0: {"rejected": "Open the panel and restart service 0."},
                                           2: {"chosen": "No idea 2."}}), {}, "chosen_differs_from_rejected",
     ["r0", "r2"]),
    ("too long", _rows_with({3: {"chosen": "x" * 60}}), {"max_chars": 50}, "chosen_length", ["r3"]),
    ("too few rows", good_rows(3), {"min_rows": 5}, "row_count", ["3 rows, expected at least 5"]),
    ("too many rows", good_rows(4), {"max_rows": 2}, "row_count", ["4 rows, expected 1 to 2"]),
]


@pytest.mark.parametrize(("case", "rows", "settings", "rule", "named"), ROW_CASES, ids=[c[0] for c in ROW_CASES])
def test_broken_rows_fail_naming_rule_and_rows(tmp_path, case, rows, settings, rule, named):
    message, report = expect_failure(write_rows(tmp_path / "data.jsonl", rows), tmp_path, **settings)
    assert rule in message and rule in report["failed_rules"]
    for text in named:
        assert text in message
    assert "Traceback" not in message
    failed = next(r for r in report["rules"] if r["rule"] == rule)
    assert failed["success"] is False
    if "unexpected_count" in failed:
        assert failed["unexpected_count"] == len(named)
        assert sorted(failed["sample_ids"]) == sorted(named)


def test_missing_column_fails(tmp_path):
    rows = [{k: v for k, v in row.items() if k != "rejected"} for row in good_rows()]
    message, report = expect_failure(write_rows(tmp_path / "data.jsonl", rows), tmp_path)
    assert "rejected_present (column 'rejected' is missing)" in message
    assert report["failed_rules"] == ["rejected_present"]


def test_duplicate_rows_are_named_and_rows_without_id_get_their_line(tmp_path):
    rows = [{k: v for k, v in row.items() if k != "id"} for row in good_rows()]
    rows.append(dict(rows[1]))  # line 5 repeats line 2: the repeat is named, the first one is kept
    message, report = expect_failure(write_rows(tmp_path / "data.jsonl", rows), tmp_path)
    assert report["failed_rules"] == ["no_duplicate_rows"]
    assert "no_duplicate_rows (1 row: line 5)" in message


def test_duplicate_ids_fail(tmp_path):
    rows = _rows_with({3: {"id": "r0"}})
    message, _ = expect_failure(write_rows(tmp_path / "data.jsonl", rows), tmp_path)
    assert "id_unique (1 row: r0)" in message  # the row at line 4 reuses r0


def test_message_lists_at_most_five_ids(tmp_path):
    rows = good_rows(8)
    for row in rows:
        row["rejected"] = row["chosen"]
    message, report = expect_failure(write_rows(tmp_path / "data.jsonl", rows), tmp_path)
    assert "chosen_differs_from_rejected (8 rows: r0, r1, r2, r3, r4, ...)" in message
    assert len(next(r for r in report["rules"] if r["rule"] == "chosen_differs_from_rejected")["sample_ids"]) == 8


LOAD_CASES = [
    ("not json", b'{"prompt": "a", "chosen": "b", "rejected": "c"}\nprompt,chosen,rejected\n', "json_lines", "line 2"),
    ("truncated line", b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "cho', "json_lines",
     "line 2"),
    ("invalid utf-8", b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "\xff\xfe"}\n', "utf8", "line 2"),
    ("array not object", b'["a", "b"]\n', "json_objects", "line 1"),
]


@pytest.mark.parametrize(("case", "raw", "rule", "where"), LOAD_CASES, ids=[c[0] for c in LOAD_CASES])
def test_unreadable_files_fail_naming_file_rule_and_line(tmp_path, case, raw, rule, where):
    path = tmp_path / "data.jsonl"
    path.write_bytes(raw)
    message, report = expect_failure(str(path), tmp_path)
    assert message.startswith(f"{path}: rule {rule} failed: {where} ")
    assert report["failed_rules"] == [rule]
    assert report["rules"][0]["error"].startswith(where)


def test_missing_file_fails(tmp_path):
    message, report = expect_failure(str(tmp_path / "nope.jsonl"), tmp_path)
    assert "nope.jsonl: rule file_exists failed: file not found" in message
    assert report["dataset_hash"] is None


def test_parquet_with_wrong_schema_fails(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"question": ["a", "b"], "answer": ["c", "d"]}), path)
    message, report = expect_failure(str(path), tmp_path)
    assert set(report["failed_rules"]) == {"prompt_present", "chosen_present", "rejected_present"}
    assert "column 'prompt' is missing" in message


def test_parquet_rows_without_id_are_named_by_row_number(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"], "chosen": ["c", "d"], "rejected": ["e", "d"]}), path)
    message, _ = expect_failure(str(path), tmp_path)
    assert "chosen_differs_from_rejected (1 row: row 2)" in message


def test_config_rejects_bad_settings():
    with pytest.raises(ConfigError, match="dataset: required"):
        ValidateConfig()
    with pytest.raises(ConfigError, match="kind"):
        ValidateConfig(dataset="x.jsonl", kind="chat")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_rows"):
        ValidateConfig(dataset="x.jsonl", min_rows=10, max_rows=5)
    with pytest.raises(ConfigError, match="unknown setting"):
        config_module.load(ValidateConfig, overrides={"dataset": "x.jsonl", "min_row": 3})


def test_shipped_recipes_parse():
    loaded = config_module.load(ValidateConfig, RECIPE)
    assert loaded.kind == "preference" and loaded.dataset
    assert loaded.severity_of("length_bias") == "warn" and loaded.severity_of("no_pii") == "block"
    kinds = {config_module.load(ValidateConfig, path).kind for path in RECIPE.parent.glob("validate_*.yaml")}
    assert kinds == {"preference", "sft", "eval"}


def test_cli_exits_1_without_traceback_on_invalid_rows(tmp_path, capsys):
    from llmops_tasks.cli import main

    rows = _rows_with({1: {"rejected": "Open the panel and restart service 1."}})
    dataset = write_rows(tmp_path / "data.jsonl", rows)
    # without --config the packaged policy applies (at least 100 rows): this small file sets its own floor
    status = main(["validate", "--dataset", dataset, "--kind", "preference", "--report-dir", str(tmp_path / "cli"),
                   "--data-docs", "false", "--min-rows", "1"])
    captured = capsys.readouterr()
    assert status == 1, captured.err
    assert "Traceback" not in captured.err
    assert "chosen_differs_from_rejected (1 row: r1)" in captured.err
    result = json.loads(captured.out)
    assert result["valid"] is False and result["failed_rules"] == ["chosen_differs_from_rejected"]
    assert (tmp_path / "cli" / "validation.json").is_file()


@pytest.mark.integration  # a subprocess: not a unit test
def test_cli_exits_1_without_traceback_on_unreadable_file(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"prompt": "\xff"}\n')
    proc = subprocess.run(
        [*CLI, "validate", "--dataset", str(path), "--report-dir", str(tmp_path / "cli")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "rule utf8 failed: line 1" in proc.stderr


@pytest.fixture(scope="module")
def docs_run(tmp_path_factory) -> tuple[Path, StepFailed]:
    """One check with Data Docs (they cost seconds), in two GX batches: two blocking failures and a
    length bias warning (3 of 4 chosen answers are longer, limit 50%)."""
    tmp_path = tmp_path_factory.mktemp("docs")
    rows = _rows_with({1: {"rejected": "Open the panel and restart service 1."},
                       3: {"chosen": "Mail the admin at ops@example.com."}})
    dataset = write_rows(tmp_path / "data.jsonl", rows)
    with pytest.raises(StepFailed) as caught:
        validate(dataset, tmp_path, data_docs=True, chunk_rows=2, gx_batch_rows=2, max_chosen_longer_share=0.5)
    return tmp_path, caught.value


def test_data_docs_quarantine_and_blocking_message(docs_run):
    tmp_path, failure = docs_run
    message, result = str(failure), failure.result
    assert "chosen_differs_from_rejected (1 row: r1)" in message and "no_pii (1 row: r3)" in message
    assert f"failing rows in {tmp_path / 'report' / 'quarantine.jsonl'}" in message
    quarantined = [json.loads(line) for line in Path(result["quarantine"]).read_text().splitlines()]
    assert [(q["row"], q["rules"], q["blocking"]) for q in quarantined] == [
        ("r1", ["chosen_differs_from_rejected"], True), ("r3", ["no_pii"], True)]
    assert quarantined[1]["record"]["chosen"] == "Mail the admin at ops@example.com."
    assert result["quarantined_rows"] == 2
    docs = Path(result["data_docs"])
    assert docs == tmp_path / "report" / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
    assert docs.is_file() and list((docs.parent / "validations").rglob("*.html"))
    report = json.loads((tmp_path / "report" / "validation.json").read_text())
    assert report["pii_hits"] == {"email": 1}


def _visible_text(page: Path) -> str:
    import html
    import re

    text = re.sub(r"<(script|style)\b.*?</\1>", " ", page.read_text(encoding="utf-8"), flags=re.DOTALL)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", text)))


def test_data_docs_validation_json_and_model_card_count_the_same_rules(docs_run):
    """The rules computed outside GX (row count, columns, prompt duplication, length bias) are in
    the Data Docs too: one validation result of the whole data set, not one per GX batch."""
    from llmops_tasks.registry.modelcard import _data_quality  # read only: what the model card prints

    tmp_path, failure = docs_run
    report = json.loads((tmp_path / "report" / "validation.json").read_text())
    rules = report["rules"]
    failed = [r["rule"] for r in rules if not r["success"]]
    assert sorted(failed) == ["chosen_differs_from_rejected", "length_bias", "no_pii"]
    stored = list((tmp_path / "report" / "gx" / "uncommitted" / "validations").rglob("*.json"))
    assert len(stored) == 1  # the whole check, though GX ran two batches
    gx_result = json.loads(stored[0].read_text())
    assert gx_result["meta"]["batch_spec"]["gx_batches"] == 2
    results = gx_result["results"]
    assert [r["expectation_config"]["meta"]["rule"] for r in results] == [r["rule"] for r in rules]
    assert [r["success"] for r in results] == [r["success"] for r in rules]
    assert gx_result["statistics"]["evaluated_expectations"] == len(rules)
    assert gx_result["statistics"]["unsuccessful_expectations"] == len(failed)
    assert gx_result["success"] is report["valid"] is False  # the status is the step's verdict
    for outcome, rule in zip(results, rules, strict=True):
        if "unexpected_count" in rule:  # GX batch rules: totals over both batches
            assert outcome["result"]["unexpected_count"] == rule["unexpected_count"], rule["rule"]
            assert outcome["result"]["element_count"] == 4, rule["rule"]
    bias = next(r for r in results if r["expectation_config"]["meta"]["rule"] == "length_bias")
    assert bias["expectation_config"]["type"] == "expect_column_mean_to_be_between"
    assert bias["result"]["observed_value"] == 0.75 and bias["expectation_config"]["severity"] == "warning"
    assert "streamed totals" in bias["expectation_config"]["description"]

    card = _data_quality(report)[0]
    assert card == f"Great Expectations: {len(rules)} rules, {len(failed)} failed (valid: false)."
    page = _visible_text(next((Path(failure.result["data_docs"]).parent / "validations").rglob("*.html")))
    assert (f"Evaluated Expectations {len(rules)} Successful Expectations {len(rules) - len(failed)} "
            f"Unsuccessful Expectations {len(failed)}") in page
    for rule in rules:
        assert f"{rule['rule']} ({rule['severity']}" in page, rule["rule"]


class _References(HTMLParser):
    """What a page loads (not where its links go): scripts, stylesheets, icons, images, url()s."""

    def __init__(self) -> None:
        super().__init__()
        self.loads: list[str] = []
        self.in_style = False

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "link" and attributes.get("href"):
            self.loads.append(attributes["href"])
        elif tag in ("script", "img", "source", "iframe", "embed") and attributes.get("src"):
            self.loads.append(attributes["src"])
        self.loads += _css_urls(attributes.get("style") or "")
        self.in_style = tag == "style"

    def handle_endtag(self, tag):
        self.in_style = False

    def handle_data(self, data):
        if self.in_style:
            self.loads += _css_urls(data)


def _css_urls(css: str) -> list[str]:
    import re

    return [u for u in re.findall(r"""url\(\s*['"]?([^'")]+)['"]?\s*\)""", css) if not u.startswith("data:")]


def _local_file(base: Path, reference: str) -> Path:
    return (base / reference.split("#")[0].split("?")[0]).resolve()


def test_data_docs_render_offline(docs_run):
    """Every page of a real check's Data Docs loads only files of the site, and they exist; the
    index lists the result in its HTML, not only through bootstrap-table's script."""
    tmp_path, failure = docs_run
    index = Path(failure.result["data_docs"])
    site = index.parent.resolve()
    pages = sorted(site.rglob("*.html"))
    assert len(pages) == 3  # index, the suite, the one validation result
    stylesheets = set()
    for page in pages:
        parser = _References()
        parser.feed(page.read_text(encoding="utf-8"))
        assert parser.loads, page
        assert "vegaEmbed(" not in page.read_text(encoding="utf-8")  # no chart: Vega is not vendored
        for reference in parser.loads:
            assert not reference.startswith(("http://", "https://", "//")), f"{page.name} loads {reference}"
            local = _local_file(page.parent, reference)
            assert local.is_file() and local.is_relative_to(site), f"{page.name}: {reference} is missing"
            stylesheets |= {local} if local.suffix == ".css" else set()
        loaded = {_local_file(page.parent, r).name for r in parser.loads}
        assert {"jquery.min.js", "bootstrap.min.js", "bootstrap-table.min.js", "all.min.css"} <= loaded
    for css in stylesheets:  # fonts and images of the stylesheets (Font Awesome ships WOFF2, not TTF)
        for reference in _css_urls(css.read_text(encoding="utf-8")):
            local = _local_file(css.parent, reference)
            assert local.is_file() or (local.suffix == ".ttf" and local.with_suffix(".woff2").is_file()), \
                f"{css.name}: {reference} is missing"

    text = index.read_text(encoding="utf-8")
    table = text[text.index("ge-index-page-validation-results-table"):]
    body = table[table.index("<tbody>"):table.index("</tbody>")]
    report = json.loads((tmp_path / "report" / "validation.json").read_text())
    failed = sum(1 for r in report["rules"] if not r["success"])
    assert f"Failed</a> ({len(report['rules'])} rules, {failed} failed)" in body
    link = body.split('href="')[1].split('"')[0]
    assert (site / link).is_file() and link.startswith("validations/")


def test_data_docs_show_row_ids_and_paths_as_text(tmp_path):
    """Row ids (data) and the data set's path reach the pages as text, never as markup: GX puts a
    description and parts of a result's meta into its pages without escaping them."""
    hostile = "<img src=x onerror=alert(1)>"
    folder = tmp_path / "<b>set"
    folder.mkdir()
    rows = [{"id": f"{hostile}{i}", "prompt": f"p{i}", "chosen": "same", "rejected": "same"} for i in range(2)]
    with pytest.raises(StepFailed) as caught:
        validate(write_rows(folder / "d<u>.jsonl", rows), tmp_path, data_docs=True)
    site = Path(caught.value.result["data_docs"]).parent
    pages = {page.name: page.read_text(encoding="utf-8") for page in site.rglob("*.html")}
    assert len(pages) == 3
    for name, text in pages.items():
        assert "<img src=x" not in text and "<b>set" not in text and "d<u>" not in text, name
    assert "Rows: &lt;img src=x onerror=alert(1)&gt;0" in pages["llmops-dataset.html"]


def test_vendored_assets_are_the_files_gx_templates_load(tmp_path):
    """docs_assets/ holds, unchanged, what GX's templates load from CDNs (sums in SHA256SUMS, the
    templates' own SRI hashes where they give one), every file ships with the package, and
    make_offline names what it cannot serve locally."""
    import base64
    import configparser
    import hashlib
    import re

    import great_expectations

    from llmops_tasks.validate import datadocs

    assets = Path(datadocs.ASSETS)
    for line in (assets / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        assert hashlib.sha256((assets / name).read_bytes()).hexdigest() == digest, name
    assert all((assets / local).is_file() for local in datadocs.CDN_COPIES.values())

    templates = Path(great_expectations.__file__).parent / "render" / "view" / "templates"
    tags = [m.group(0) for t in templates.glob("*.j2") for m in re.finditer(r"<(?:script|link)\b[^>]*>", t.read_text())]
    remote = [(re.search(r'(?:src|href)="(https?://[^"]+)"', tag), tag) for tag in tags]
    remote = [(m.group(1), tag) for m, tag in remote if m]
    assert remote
    for url, tag in remote:
        assert url in datadocs.CDN_COPIES or url in datadocs.CHART_SCRIPTS, f"GX loads {url}: vendor it"
        integrity = re.search(r'integrity="sha384-([^"]+)"', tag)
        if integrity:
            data = (assets / datadocs.CDN_COPIES[url]).read_bytes()
            assert base64.b64encode(hashlib.sha384(data).digest()).decode() == integrity.group(1), url

    parser = configparser.ConfigParser()
    parser.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    package = assets.parents[1]
    shipped = {p for pattern in parser["options.package_data"]["llmops_tasks"].split() for p in package.glob(pattern)}
    assert {p for p in assets.rglob("*") if p.is_file()} <= shipped

    (tmp_path / "index.html").write_text(
        '<link rel="stylesheet" href="https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css"/>'
        '<script src="https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js" integrity="sha384-x" '
        'crossorigin="anonymous"></script><script src="https://cdn.example/new.js"></script>')
    assert datadocs.make_offline(str(tmp_path)) == ['index.html: <script src="https://cdn.example/new.js"']
    page = (tmp_path / "index.html").read_text()
    assert 'href="static/vendor/bootstrap-4.3.1/css/bootstrap.min.css"' in page
    assert '<script src="static/vendor/bootstrap-4.3.1/js/bootstrap.min.js"></script>' in page
    assert (tmp_path / "static" / "vendor" / "jquery-3.7.1" / "jquery.min.js").is_file()


def test_warn_severity_reports_without_failing_and_clears_stale_quarantine(tmp_path):
    rows = _rows_with({2: {"prompt": "My IP is 10.20.30.40, why is it blocked?"}})
    dataset = write_rows(tmp_path / "data.jsonl", rows)
    result = validate(dataset, tmp_path, severity={"no_pii": "warn"})
    assert result["valid"] is True and result["failed_rules"] == []
    assert "no_pii" in result["warnings"]
    assert [json.loads(line)["blocking"] for line in Path(result["quarantine"]).read_text().splitlines()] == [False]
    clean = validate(write_rows(tmp_path / "clean.jsonl", good_rows()), tmp_path)
    assert clean["quarantine"] is None and not (tmp_path / "report" / "quarantine.jsonl").exists()


def test_mostly_tolerates_a_share_of_failing_rows(tmp_path):
    dataset = write_rows(tmp_path / "data.jsonl", _rows_with({1: {"rejected": "   "}}))
    result = validate(dataset, tmp_path, mostly={"not_blank": 0.7})
    assert result["valid"] is True
    rule = next(r for r in json.loads(Path(result["report"]).read_text())["rules"] if r["rule"] == "rejected_not_blank")
    assert rule["success"] is True and rule["unexpected_count"] == 1 and rule["mostly"] == 0.7
    with pytest.raises(StepFailed, match=r"rejected_not_blank \(1 row, more than 10% allowed: r1\)"):
        validate(dataset, tmp_path, mostly={"rejected_not_blank": 0.9})


def test_small_chunks_give_the_same_verdict_as_one_chunk(tmp_path):
    rows = good_rows(7)
    rows.append({**rows[1], "id": "r7b"})  # repeats row r1 in a later chunk
    rows.append({**rows[5], "id": "r8", "prompt": "how do i FIX thing 5"})  # a normalized repeat of r5
    dataset = write_rows(tmp_path / "data.jsonl", rows)
    reports = []
    for chunk_rows in (5, 1000):
        with pytest.raises(StepFailed) as caught:
            validate(dataset, tmp_path, chunk_rows=chunk_rows, severity={"no_normalized_duplicates": "block"})
        assert "no_duplicate_rows (1 row: r7b)" in str(caught.value)
        assert "no_normalized_duplicates (1 row: r8)" in str(caught.value)
        report = json.loads((tmp_path / "report" / "validation.json").read_text())
        reports.append([(r["rule"], r["success"], r.get("unexpected_count"), r.get("sample_ids")) for r in report["rules"]])
    assert reports[0] == reports[1]


def test_length_bias_and_prompt_duplication_are_reported(tmp_path):
    result = validate(write_rows(tmp_path / "data.jsonl", good_rows()), tmp_path)
    rules = {r["rule"]: r for r in json.loads(Path(result["report"]).read_text())["rules"]}
    assert rules["length_bias"]["observed_value"] == 1.0 and rules["length_bias"]["severity"] == "warn"
    assert rules["length_bias"]["pairs"] == 4
    assert result["valid"] is True and result["warnings"] == ["length_bias"]
    assert rules["prompt_duplication"]["observed_value"] == 0.0 and rules["prompt_duplication"]["success"]


def test_token_rule_counts_with_the_configured_tokenizer(tmp_path):
    from llmops_tasks.local.bootstrap import train_tokenizer

    tokenizer = train_tokenizer(samples.corpus_text()[:40], vocab_size=300)
    tokenizer.save_pretrained(tmp_path / "tok")
    rows = _rows_with({2: {"chosen": "Supercalifragilistic expialidocious antidisestablishmentarianism"}})
    counts = [len(tokenizer(r["chosen"], add_special_tokens=False)["input_ids"]) for r in rows]
    limit = max(c for i, c in enumerate(counts) if i != 2)
    assert counts[2] > limit
    message, _ = expect_failure(write_rows(tmp_path / "data.jsonl", rows), tmp_path,
                                tokenizer=str(tmp_path / "tok"), max_tokens=limit)
    assert "chosen_tokens (1 row: r2)" in message
    with pytest.raises(ConfigError, match="tokenizer: cannot load"):
        validate(write_rows(tmp_path / "data.jsonl", rows), tmp_path, tokenizer=str(tmp_path / "nope"), max_tokens=5)


def test_config_rejects_bad_severity_and_mostly():
    with pytest.raises(ConfigError, match="severity: unknown rule 'no_pie'"):
        ValidateConfig(dataset="x.jsonl", severity={"no_pie": "warn"})
    with pytest.raises(ConfigError, match=r"severity.no_pii: expected one of \['block', 'warn'\]"):
        ValidateConfig(dataset="x.jsonl", severity={"no_pii": "ignore"})
    with pytest.raises(ConfigError, match="mostly.not_blank: expected a share from 0 to 1"):
        ValidateConfig(dataset="x.jsonl", mostly={"not_blank": 1.5})
    with pytest.raises(ConfigError, match="pii_kinds: unknown kind"):
        ValidateConfig(dataset="x.jsonl", pii_kinds=["ssn"])
    loaded = config_module.load(ValidateConfig, overrides=["dataset=x.jsonl", "mostly.prompt_length=0.99",
                                                          "severity.no_pii=warn"])
    assert loaded.mostly == {"prompt_length": 0.99} and loaded.severity_of("no_pii") == "warn"
    assert loaded.mostly_of("prompt_length") == 0.99 and loaded.mostly_of("chosen_length") == 1.0


# Texts where a column-wise measure could drift from its row-by-row definition: Unicode and ASCII
# control whitespace, NFKC and casefold, U+FFFD, PII, empty and long text.
AWKWARD_TEXTS = [
    "", " ", "\t\n", "\x1c\x1d", "a\u3000b", "  Hello,  World!! ", "ﬁle", "Ümlaut CAFÉ", "x\x07y", "\x85",
    "bad \ufffd", "4111 1111 1111 1111", "mail a@b.io", "ip 10.0.0.1", "tab\tsep", "under_score", "multi\n\nline",
    "Ǆ ß straße", "x" * 1000, "  lead", "trail  ", "a  b\u00a0c", "--", "don't stop", "ＡＢＣ１２３", "日本語 テキスト", None,
]


def _reference(text: str) -> dict:
    from llmops_tasks.text import pii
    from llmops_tasks.text.records import BAD_UTF8, CONTROL, normalize

    return {"chars": len(text), "blank": not text.strip(), "control_chars": CONTROL.search(text) is not None,
            "valid_utf8": BAD_UTF8.search(text) is None, "words": len(text.split()), "pii": pii.kinds_in(text),
            "normalized": normalize(text)}


@pytest.mark.parametrize("via", ["arrow", "records"])
def test_column_measures_equal_their_row_definitions(via):
    import pandas as pd
    import pyarrow as pa

    from llmops_tasks.core import data
    from llmops_tasks.text.columns import TextColumn, text_keys

    texts = list(AWKWARD_TEXTS)
    if via == "records":  # the row-by-row reader; a lone surrogate (a JSON \ud800 escape) cannot be Arrow text
        texts.append("lone \ud800 surrogate")
        chunk = data.Chunk.from_records([{"t": t, "_line": i + 1} for i, t in enumerate(texts)])
    else:
        chunk = data.Chunk(list(range(1, len(texts) + 1)), table=pa.table({"t": pa.array(texts, pa.string())}))
    column = TextColumn.of(chunk, "t")
    measured = {"chars": column.chars(), "blank": column.blank(), "control_chars": column.control_chars(),
                "valid_utf8": column.valid_utf8(), "words": column.word_counts()}
    hits = column.pii(None)
    normalized, keys = column.normalized_keys(), column.keys()
    for i, text in enumerate(texts):
        if text is None:
            assert column.kinds[i] is None and measured["blank"][i] is pd.NA and measured["words"][i] == 0
            continue
        expected = _reference(text)
        got = {name: values[i] for name, values in measured.items()}
        got["pii"] = hits.get(i, [])
        assert {k: v for k, v in expected.items() if k != "normalized"} == got, repr(text)
        expected_key = text_keys([expected["normalized"].encode("utf-8", "surrogatepass")])[0]
        assert normalized[i] == expected_key, repr(text)
        assert keys[i] == text_keys([text.encode("utf-8", "surrogatepass")])[0], repr(text)


def test_byte_level_measures_equal_their_row_definitions_on_random_ascii():
    import random

    import pyarrow as pa

    from llmops_tasks.core import data
    from llmops_tasks.text.columns import TextColumn, text_keys
    from llmops_tasks.text.records import CONTROL, normalize

    rng = random.Random(3)
    texts = ["".join(rng.choice("aZ09 _-.,\t\n!'\x07\x1c\x7f\r") for _ in range(rng.randint(0, 24)))
             for _ in range(3000)]
    chunk = data.Chunk(list(range(1, len(texts) + 1)), table=pa.table({"t": pa.array(texts)}))
    column = TextColumn.of(chunk, "t")
    assert column.all_ascii  # the byte-level paths
    assert column.normalized_keys().tolist() == text_keys([normalize(t) for t in texts]).tolist()
    assert column.word_counts().tolist() == [len(t.split()) for t in texts]
    assert column.control_chars().tolist() == [CONTROL.search(t) is not None for t in texts]
    assert column.blank().tolist() == [not t.strip() for t in texts]


def test_column_wise_reader_gives_the_rows_and_errors_of_the_line_reader(tmp_path):
    from llmops_tasks.core import data

    lines = [json.dumps({"id": i, "prompt": f"p{i} ünï", "chosen": "c", "rejected": "r"}) for i in range(7)]
    lines[2] = "  " + lines[2] + "\r"  # leading blanks and a CRLF ending
    lines.insert(4, "")  # a blank line keeps its number
    lines[5] = json.dumps({"prompt": [{"role": "user", "content": "hi"}], "chosen": 3, "rejected": None})
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for rows in (2, 3, 100):
        chunks = list(data.iter_table_chunks(str(path), rows))
        assert [len(c) for c in chunks] == [len(c) for c in data.iter_chunks(str(path), rows)]
        assert [c.record(i) for c in chunks for i in range(len(c))] == data.read_records(str(path))

    # lines of only whitespace (str.isspace(), Unicode included) are blank for both readers
    path.write_bytes(b'{"a": "x"}\n\xc2\xa0\n\x1c\r\n\xe2\x80\xa8\n{"a": "y"}\n{"a": "z"}\n')
    for rows in (1, 2, 3):
        assert [c.lines for c in data.iter_table_chunks(str(path), rows)] == [
            [r["_line"] for r in c] for c in data.iter_chunks(str(path), rows)]
    assert [r["_line"] for r in data.read_records(str(path))] == [1, 5, 6]

    deep = b'{"a": ' + b"[" * 30_000 + b"]" * 30_000 + b"}\n"  # pyarrow would crash the process on it
    for bad, message in ((deep, "line 2 is not valid JSON (nested too deeply to read)"),
                         (b'{"a": 1} {"a": 2}\n', "line 2 is not valid JSON"),
                         (b"null\n", "line 2 is a JSON NoneType, expected an object"),
                         (b'{"a": "\\ud800"}\n{"a": 1, "a": 2}\n{"a": NaN}\n[1]\n', "line 5 is a JSON list")):
        path.write_bytes(b'{"a": "x"}\n' + bad)
        with pytest.raises(data.DataError) as expected:
            data.read_records(str(path))
        with pytest.raises(data.DataError) as columnar:
            list(data.iter_table_chunks(str(path), 10))
        assert str(columnar.value) == str(expected.value) and message in str(expected.value)


def test_whitespace_is_what_str_split_uses():
    from llmops_tasks.text.columns import WHITESPACE

    assert WHITESPACE == "".join(chr(c) for c in range(0x110000) if chr(c).isspace())


def test_a_prompt_is_its_last_turn_for_duplication_and_contamination(tmp_path):
    """Conversations that differ only in their system prompt ask the same question: validate's
    prompt rules and split's assignment (text.records.prompt_key) agree on that."""
    from llmops_tasks.text.records import prompt_key

    def conversation(system: str, question: str) -> list[dict]:
        return [{"role": "system", "content": system}, {"role": "user", "content": question}]

    def answer(text: str) -> list[dict]:  # conversational prompt, conversational answers (TRL's form)
        return [{"role": "assistant", "content": text}]

    rows = [{"prompt": conversation(f"style {i}", "How do I reset my VPN token?"),
             "chosen": answer(f"Open the portal, then step {i}."), "rejected": answer(f"No idea {i}.")}
            for i in range(4)]
    dataset = write_rows(tmp_path / "conv.jsonl", rows)
    result = validate(dataset, tmp_path, max_prompt_duplication=1.0, severity={"length_bias": "warn"})
    report = json.loads(Path(result["report"]).read_text())
    duplication = next(r for r in report["rules"] if r["rule"] == "prompt_duplication")
    assert duplication["observed_value"] == 0.75 and duplication["unique_prompts"] == 1
    # the eval set asks it without a system prompt, and with other punctuation: still contamination
    against = write_rows(tmp_path / "eval.jsonl", [{"prompt": "how do I reset my VPN token", "reference": "x"}])
    message, report = expect_failure(dataset, tmp_path / "against", against=against,
                                     max_prompt_duplication=1.0, severity={"length_bias": "warn"})
    assert "prompt_not_in_against_normalized (4 rows" in message
    assert len({prompt_key(r["prompt"]) for r in rows} | {prompt_key("how do I reset my VPN token")}) == 1
