"""Data Docs of one check: every rule of ``validation.json`` as one GX validation result, rendered
by GX's site builder into pages that work without a network.

Each GX batch run sees only its part of the data set, and the data set rules (row count, columns
present, prompt duplication, length bias) come from totals streamed outside GX. So the Data Docs
show one validation result built from the rules the step reports: each batch rule's expectation
with its counts added up over the batches, and each data set rule as the built-in expectation
that states it (:func:`suite.dataset_expectation`), with the streamed total as its observed value
and a description saying so. Data Docs, ``validation.json`` and the model card count the same
rules and failures.

GX's page templates load jQuery, Bootstrap, bootstrap-table, Font Awesome and more from CDNs, and
the index's table is filled by bootstrap-table: offline, the pages lose styles and icons and the
index lists nothing. :func:`make_offline` points each page at the same versions vendored in
``docs_assets/`` (its README names versions and licences), and writes the index's rows into its
HTML too.
"""

from __future__ import annotations

import datetime
import glob
import logging
import os
import re
import shutil
from typing import Any

from llmops_tasks.core.html import esc
from llmops_tasks.validate.config import DATASET_CHECK, MESSAGE_SAMPLE, ValidateConfig
from llmops_tasks.validate.suite import SUITE_NAME, dataset_expectation, gx_context

log = logging.getLogger(__name__)

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "docs_assets")
VENDOR = "static/vendor"  # where the site keeps its copy of ASSETS
BATCH_ID = "llmops-dataset"
# What GX 1.24's templates load from CDNs -> the same file, same version, in docs_assets/.
CDN_COPIES = {
    "https://code.jquery.com/jquery-3.7.1.min.js": "jquery-3.7.1/jquery.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js": "popper.js-1.12.9/popper.min.js",
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": "bootstrap-4.3.1/js/bootstrap.min.js",
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": "bootstrap-4.3.1/css/bootstrap.min.css",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css": "bootstrap-table-1.19.1/bootstrap-table.min.css",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js": "bootstrap-table-1.19.1/bootstrap-table.min.js",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js":
        "bootstrap-table-1.19.1/extensions/filter-control/bootstrap-table-filter-control.min.js",
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css":
        "bootstrap-table-1.19.0/extensions/filter-control/bootstrap-table-filter-control.min.css",
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css":
        "bootstrap-table-1.19.0/extensions/filter-control/bootstrap-table-filter-control.css",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css":
        "bootstrap-datepicker-1.9.0/css/bootstrap-datepicker.min.css",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js":
        "bootstrap-datepicker-1.9.0/js/bootstrap-datepicker.min.js",
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css":
        "bootstrap-dark-1.1.0/css/bootstrap-prefers-dark.min.css",
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css": "fontawesome-free-6.6.0/css/all.min.css",
}
# Vega draws GX's charts; no expectation of ours renders one, so pages without a chart drop them.
CHART_SCRIPTS = ("https://cdn.jsdelivr.net/npm/vega@5", "https://cdn.jsdelivr.net/npm/vega-lite@5",
                 "https://cdn.jsdelivr.net/npm/vega-embed@6")
GX_WEB_ASSETS = "https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/"
LOGO = "static/images/logo-long.png"  # GX writes it into every site; its dark-mode logo has no local copy
_TAG = re.compile(r"<(script|link|img)\b[^>]*>")
_CHART_TAG = re.compile(r'<script src="(?:' + "|".join(map(re.escape, CHART_SCRIPTS)) + r')"></script>\n?')
_SRI = re.compile(r'\s(?:integrity|crossorigin)="[^"]*"')
_STATIC = re.compile(r'((?:src|href)=")(?:\./|(?:\.\./)+)static/')
_GX_URL = re.compile(r"""url\((['"]?)""" + re.escape(GX_WEB_ASSETS) + r"""[^'")]*\1\)""")
_REMOTE = re.compile(r"""<(?:script|img)\b[^>]*\ssrc="https?://[^"]*"|<link\b[^>]*\shref="https?://[^"]*"[^>]*>"""
                     r"""|url\(['"]?https?://""")


def build(docs_root: str, config: ValidateConfig, ran: list[Any], rules: list[dict[str, Any]],
          valid: bool, rows: int, batches: int) -> str:
    """Write the whole check's validation result into the stores under ``docs_root``, build the
    site and make it work offline; returns the index page's path. ``ran``: the expectations GX ran
    (the suites' expectations, each with its ``meta.rule``)."""
    import great_expectations as gx
    from great_expectations.core.expectation_validation_result import ExpectationSuiteValidationResult
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    checked = {e.meta["rule"]: e for e in ran}
    expectations = []
    for rule in rules:
        known = checked.get(rule["rule"])
        expectation = known.configuration.to_domain_obj() if known else dataset_expectation(config, rule["rule"])
        expectation.id = None  # a copy: this context's suite gives it its own
        expectations.append(expectation)
    context = gx_context(docs_root)
    suite = context.suites.add(gx.ExpectationSuite(name=SUITE_NAME, expectations=expectations))

    results = [_outcome(expectation, rule) for expectation, rule in zip(suite.expectations, rules, strict=True)]
    passed = sum(1 for r in results if r.success)
    now = datetime.datetime.now(datetime.UTC)
    run_id = RunIdentifier(run_time=now)
    # No text of the data set or its URI goes into meta: GX puts parts of it into pages unescaped.
    asset = "dataset"
    meta = {
        "great_expectations_version": gx.__version__,
        "run_id": run_id,
        "validation_time": now.isoformat(),
        "active_batch_definition": {"datasource_name": "llmops", "data_connector_name": "fluent",
                                    "data_asset_name": asset,
                                    "batch_identifiers": {"dataset": "the whole data set"}},
        "batch_spec": {"data_asset_name": asset, "kind": config.kind, "rows": rows,
                       "gx_batches": batches, "verdict": "valid" if valid else "invalid (a blocking rule failed)",
                       "report": "validation.json beside gx/ (the same rules, the data set's URI)"},
    }
    # The status is the step's verdict: failed only when a blocking (critical) rule failed; a
    # warning rule that failed is counted among the unsuccessful expectations all the same.
    result = ExpectationSuiteValidationResult(
        success=valid, results=results, suite_name=SUITE_NAME, meta=meta,
        statistics={"evaluated_expectations": len(results), "successful_expectations": passed,
                    "unsuccessful_expectations": len(results) - passed,
                    "success_percent": round(100.0 * passed / len(results), 4)})
    key = ValidationResultIdentifier(expectation_suite_identifier=ExpectationSuiteIdentifier(name=SUITE_NAME),
                                     run_id=run_id, batch_identifier=BATCH_ID)
    context.validation_results_store.set(key, result)
    context.build_data_docs()
    url = context.get_docs_sites_urls()[0]["site_url"]
    index = url.removeprefix("file://")
    site = os.path.dirname(index)
    pages = glob.glob(os.path.join(site, "validations", "**", "*.html"), recursive=True)  # none if GX failed to render
    index_row = {"Status": "Success" if valid else "Failed", "Run Time": now.strftime("%Y-%m-%d %H:%M:%S UTC"),
                 "Run Name": "__none__", "Asset Name": asset, "Batch ID": BATCH_ID, "Expectation Suite": SUITE_NAME,
                 "Rules": f"{len(results)} rules, {len(results) - passed} failed",
                 "_page": os.path.relpath(pages[0], site).replace(os.sep, "/") if pages else ""}
    left = make_offline(site, [index_row])
    if left:
        log.warning("Data Docs still load from the network: %s", "; ".join(left))
    return index


def _outcome(expectation: Any, rule: dict[str, Any]):
    """The expectation's result, from the rule's entry in validation.json."""
    from great_expectations.core.expectation_validation_result import ExpectationValidationResult

    config = expectation.configuration
    if rule.get("expectation") == DATASET_CHECK:
        value = rule.get("observed_value")
        result = {"observed_value": value} if isinstance(value, (int, float)) and not isinstance(value, bool) else {}
        config.description = f"{config.description}. Observed: {esc(rule['observed'])}"
    else:
        total, missing, bad = rule["element_count"], rule["missing_count"], rule["unexpected_count"]
        result = {"element_count": total, "missing_count": missing,
                  "missing_percent": round(100.0 * missing / total, 4) if total else None,
                  "unexpected_count": bad, "unexpected_percent": rule["unexpected_percent"],
                  "unexpected_percent_nonmissing": rule["unexpected_percent"],
                  "unexpected_percent_total": round(100.0 * bad / total, 4) if total else 0.0,
                  # GX writes these into the page unescaped, and a conversational rule's quote the data (a role)
                  "partial_unexpected_list": [esc(v) if isinstance(v, str) else v for v in rule["sample_values"]]}
        ids = rule["sample_ids"][:MESSAGE_SAMPLE]
        if ids:  # the result's copy only: the suite page states the rule. GX shows a description as HTML.
            config.description = f"{config.description}. Rows: {esc(', '.join(ids))}{', ...' if bad > len(ids) else ''}"
    error = rule.get("error")
    return ExpectationValidationResult(
        success=bool(rule["success"]), expectation_config=config, result=result,
        exception_info={"raised_exception": bool(error), "exception_message": error, "exception_traceback": None})


def make_offline(site: str, index_rows: list[dict[str, str]] = ()) -> list[str]:
    """Point every page of ``site`` at the vendored copies of what it loads from CDNs, fix GX's
    relative paths into ``static/``, and write ``index_rows`` into the index's table; returns the
    network references left (none with GX 1.24)."""
    shutil.copytree(ASSETS, os.path.join(site, VENDOR), dirs_exist_ok=True)
    left = []
    for path in glob.glob(os.path.join(site, "**", "*.html"), recursive=True):
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        text = _offline_page(text, os.path.dirname(path), site)
        if os.path.abspath(path) == os.path.abspath(os.path.join(site, "index.html")):
            text = _index_rows(text, index_rows)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        left += [f"{os.path.relpath(path, site)}: {m.group(0)[:120]}" for m in _REMOTE.finditer(text)]
    for path in glob.glob(os.path.join(site, "static", "styles", "*.css")):
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(_GX_URL.sub(f"url('{_relative(site, LOGO, os.path.dirname(path))}')", text))
    return left


def _relative(site: str, target: str, start: str) -> str:
    return os.path.relpath(os.path.join(site, target), start).replace(os.sep, "/")


def _offline_page(text: str, page_dir: str, site: str) -> str:
    vendor = _relative(site, VENDOR, page_dir)

    def local(match: re.Match) -> str:
        tag = match.group(0)
        attribute = "href" if match.group(1) == "link" else "src"
        found = re.search(rf'\s{attribute}="([^"]*)"', tag)
        if not found:
            return tag
        url = found.group(1)
        if url in CDN_COPIES:
            # SRI and CORS attributes would make a browser refuse a file:// copy; the copies' hashes
            # are checked by the tests instead.
            tag = _SRI.sub("", tag.replace(f'"{url}"', f'"{vendor}/{CDN_COPIES[url]}"'))
        elif url.startswith(GX_WEB_ASSETS) and match.group(1) == "img":
            tag = tag.replace(f'"{url}"', f'"{_relative(site, LOGO, page_dir)}"')
        return tag

    if "vegaEmbed(" not in text:
        text = _CHART_TAG.sub("", text)
    text = _TAG.sub(local, text)
    # GX writes "../../../static/" on validation pages four folders deep; point at the real folder.
    text = _STATIC.sub(lambda m: m.group(1) + _relative(site, "static", page_dir) + "/", text)
    return _GX_URL.sub(f"url('{_relative(site, LOGO, page_dir)}')", text)


_INDEX_TABLE = re.compile(r'(<table\b[^>]*\bge-index-page-(validation-results|expectation_suites)-table\b[^>]*>)\s*'
                          r"</table>")


def _index_rows(text: str, rows: list[dict[str, str]]) -> str:
    """The index's tables with their rows in the HTML: bootstrap-table draws them again from its
    data when its scripts run, and without them the page still lists every result."""
    columns = ("Status", "Run Time", "Run Name", "Asset Name", "Batch ID", "Expectation Suite")

    def cell(row: dict[str, str], column: str) -> str:
        if column == "Status" and row["_page"]:
            return f'<a href="{esc(row["_page"])}">{esc(row["Status"])}</a> ({esc(row["Rules"])})'
        if column == "Status":
            return f"{esc(row['Status'])} ({esc(row['Rules'])})"
        if column == "Expectation Suite":
            return f'<a href="expectations/{esc(row[column])}.html">{esc(row[column])}</a>'
        return esc(row[column])

    def fill(match: re.Match) -> str:
        if match.group(2) == "validation-results":
            head = "".join(f"<th>{esc(c)}</th>" for c in columns)
            body = "".join("<tr>" + "".join(f"<td>{cell(r, c)}</td>" for c in columns) + "</tr>" for r in rows)
        else:
            head = "<th>Expectation Suites</th>"
            body = "".join(f'<tr><td><a href="expectations/{esc(s)}.html">{esc(s)}</a></td></tr>'
                           for s in sorted({r["Expectation Suite"] for r in rows}))
        return f"{match.group(1)}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    return _INDEX_TABLE.sub(fill, text)
