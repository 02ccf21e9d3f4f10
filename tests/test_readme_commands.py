"""README's CLI examples run as written.

Every ``llmops ...`` command line of README.md's shell code blocks (``make demo`` / ``make test``
are not ``llmops`` commands) runs through ``bash``, in README's order, in a fresh working folder
that holds only the sample preference set as ``data.jsonl``: ``llmops init`` makes the home
(``./.llmops``), and each command reads what the ones before it wrote (``out/``, ``run/``). Each
must end with the exit code README documents: 0, unless its comment says ``exit N here``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from llmops_tasks import cli
from llmops_tasks.core import data
from llmops_tasks.local import samples

README = Path(__file__).resolve().parents[1] / "README.md"
SHELL_BLOCK = re.compile(r"^```(?:bash|sh|shell|console)\n(.*?)^```", re.DOTALL | re.MULTILINE)
ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=.*")
EXPECTED_EXIT = re.compile(r"#.*\bexit (\d+) here\b")
# Steps README shows but this test does not run: `up` and `serve` start servers (tests/test_services_e2e.py,
# tests/test_serving.py), and `feedback log` needs the trace id of a served answer (tests/test_feedback.py).
NOT_RUN = {"up", "serve", "feedback"}


def llmops_words(line: str) -> list[str]:
    """The words of a shell line from ``llmops`` on (after any ``VAR=value``), or [] if it runs something else."""
    words = shlex.split(line, comments=True)
    while words and ASSIGNMENT.fullmatch(words[0]):
        words = words[1:]
    return words if words and words[0] == "llmops" else []


def readme_commands(text: str) -> list[tuple[str, int]]:
    """(command line as written, the exit code it documents) for each ``llmops`` command of the shell
    blocks; a line continued with a backslash is one command."""
    commands = []
    for block in SHELL_BLOCK.findall(text):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            if (words := llmops_words(line)) and words[1] not in NOT_RUN:
                expected = EXPECTED_EXIT.search(line)
                commands.append((line.strip(), int(expected.group(1)) if expected else 0))
    return commands


@pytest.mark.unit
def test_readme_shows_a_command_of_every_step_that_works_on_files():
    text = README.read_text(encoding="utf-8")
    commands = readme_commands(text)
    steps = {llmops_words(line)[1] for line, _ in commands}
    assert set(cli.STEPS) - steps == NOT_RUN
    assert all(f"llmops {step}" in text or step == "up" for step in NOT_RUN)  # shown all the same (up: make airflow)
    issue_example = "llmops validate --dataset data.jsonl --kind preference --report-dir out/"
    assert [code for line, code in commands if line.startswith(issue_example)] == [0]  # "exit 1 = ..." is no marker
    assert [code for _, code in commands if code] == [1]  # the rollback with nothing to go back to
    assert not any(line.startswith("make ") for line, _ in commands)


@pytest.mark.integration
@pytest.mark.slow
def test_every_readme_command_runs_as_written(tmp_path):
    commands = readme_commands(README.read_text(encoding="utf-8"))
    work = tmp_path / "work"
    work.mkdir()
    data.write_jsonl(str(work / "data.jsonl"), samples.preference_rows())  # what README's `cp` makes
    bin_dir = str(Path(sys.executable).parent)  # the virtualenv's `llmops`
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "LLMOPS_", "MLFLOW_"))}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", HF_HUB_OFFLINE="1",
               MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
    for line, expected in commands:
        done = subprocess.run(["bash", "-c", line], cwd=work, env=env, capture_output=True, text=True,
                              timeout=900, check=False)
        assert done.returncode == expected, f"{line}\nexit {done.returncode}\n{done.stderr[-4000:]}"
        assert "Traceback" not in done.stderr, f"{line}\n{done.stderr[-4000:]}"

    # relative paths in, absolute paths out: what an XCom or a result file holds works from anywhere
    result = json.loads((work / "run" / "train" / "result.json").read_text())
    assert result["model_dir"] == str(work / "run" / "train" / "model")
    assert result["train_data"] == str(work / "out" / "train_sft.jsonl")
    assert result["base_model"] == str(work / ".llmops" / "models" / "tiny-base")
    validation = json.loads((work / "out" / "validation.json").read_text())
    assert validation["valid"] is True and (work / "out" / "gx").is_dir()
    decision = json.loads((work / "run" / "gate" / "decision.json").read_text())
    assert decision["passed"] is True
    assert (work / "demo-home" / "mlflow.db").is_file()  # the demo's own home
