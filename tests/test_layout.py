"""The package layout holds what docs/ARCHITECTURE.md says of it, checked on the source (ast).

- No module imports another module's underscore names.
- Dependencies point down: ``core`` imports no other part of ``llmops_tasks``; ``text`` only
  ``core``; nothing below the CLI imports ``local`` (the embedded mode) or the CLI itself;
  ``llmops_tasks`` imports no Airflow.
- Every package folder is listed in setup.cfg, so a non-editable install (the images) has it.
"""

from __future__ import annotations

import ast
import configparser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"llmops_tasks": ROOT / "llmops_tasks", "llmops_airflow": ROOT / "plugins" / "llmops_airflow",
           "llmops_dags": ROOT / "dags"}

pytestmark = pytest.mark.unit


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the three packages."""
    found = {}
    for package, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module imported from, names imported, line) for each import statement of a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, [], node.lineno) for alias in node.names)
    return found


def test_no_module_imports_another_modules_private_names():
    ours = modules()
    offences = [
        f"{path.relative_to(ROOT)}:{line}: from {module} import {name}"
        for name_of, path in ours.items()
        for module, names, line in imports(path)
        if module in ours and module != name_of
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert not offences, "\n".join(offences)


LAYERS = {
    # package prefix -> prefixes it must not import
    "llmops_tasks.core": ("llmops_tasks.text", "llmops_tasks.validate", "llmops_tasks.registry",
                          "llmops_tasks.serving", "llmops_tasks.local", "llmops_tasks.cli", "llmops_tasks.eda",
                          "llmops_tasks.split", "llmops_tasks.train", "llmops_tasks.evaluate", "llmops_tasks.gate",
                          "llmops_tasks.eval_report", "llmops_tasks.snapshots"),
    "llmops_tasks.text": ("llmops_tasks.validate", "llmops_tasks.registry", "llmops_tasks.serving",
                          "llmops_tasks.local", "llmops_tasks.cli", "llmops_tasks.eda", "llmops_tasks.split",
                          "llmops_tasks.train", "llmops_tasks.evaluate", "llmops_tasks.gate"),
    "llmops_tasks": ("airflow", "llmops_airflow", "llmops_dags"),
}
# Modules allowed to reach the embedded mode: the CLI (and `python -m llmops_tasks`) registers its
# commands, local/ is itself.
MAY_IMPORT_LOCAL = ("llmops_tasks.cli", "llmops_tasks.__main__", "llmops_tasks.local")


@pytest.mark.parametrize("module", sorted(modules()))
def test_dependencies_point_down(module):
    path = modules()[module]
    imported = [(target, line) for target, _, line in imports(path)]
    for layer, forbidden in LAYERS.items():
        if module == layer or module.startswith(layer + "."):
            bad = [f"line {line}: {target}" for target, line in imported
                   if any(target == f or target.startswith(f + ".") for f in forbidden)]
            assert not bad, f"{module} ({layer}) must not import: {bad}"
    if module.startswith("llmops_tasks.") and not module.startswith(MAY_IMPORT_LOCAL):
        bad = [f"line {line}: {target}" for target, line in imported
               if target.startswith(("llmops_tasks.local", "llmops_tasks.cli"))]
        assert not bad, f"{module} must not import the embedded mode or the CLI: {bad}"


def test_every_package_is_listed_in_setup_cfg():
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    listed = set(parser["options"]["packages"].split())
    on_disk = {name for name, path in modules().items() if path.name == "__init__.py"}
    assert on_disk <= listed, f"packages missing from setup.cfg [options] packages: {sorted(on_disk - listed)}"
