"""Two promotions of one model at the same moment, in two processes, against one SQLite MLflow store.

The documented rule (``registry`` module): alias moves of a model are serialized by its registry
lock, and a promotion moves ``production`` only if it still holds the version its gate compared
against. So when two candidates race from the same champion exactly one wins, the other is refused
and recorded, and ``production`` never ends on the stale one; two runs promoting the same version
make one move. Each process waits at a file barrier, so both reach the registry together.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmops_tasks import registry
from llmops_tasks.core import tracking

pytestmark = pytest.mark.integration

RIVALS = "rival-candidates"  # v2 and v3 both compared against production v1
TWINS = "twin-runs"  # two runs promote the same v2

RACER = """
import json, os, sys, time
from pathlib import Path
from llmops_tasks import registry
from llmops_tasks.core import tracking
from llmops_tasks.core.errors import StepFailed
barrier = Path(sys.argv[1])
tracking.client().search_registered_models()  # store opened before the barrier
Path(str(barrier) + "." + sys.argv[2]).touch()
while not barrier.exists():
    time.sleep(0.01)
outcomes = []
for model, version in json.loads(sys.argv[3]):
    try:
        result = registry.promote(registry.PromoteConfig(version=version, expected_production="1", model_name=model))
        outcomes.append([0, result, ""])
    except StepFailed as exc:
        outcomes.append([1, exc.result, str(exc)])
print(json.dumps(outcomes))
"""


def race(folder: Path, *plans: list[tuple[str, str]]) -> list[list]:
    """One process per plan ([(model, version), ...] promoted in order), all released together.

    Returns, per plan, [exit code as the CLI would give it, result JSON, refusal message] per promotion.
    """
    barrier = folder / "go"
    procs = []
    for number, plan in enumerate(plans):
        env = {**os.environ, "LLMOPS_ACTOR": f"racer-{number}", "LLMOPS_DAG_ID": "llm_retraining",
               "LLMOPS_RUN_ID": f"manual__race-{number}"}
        procs.append(subprocess.Popen([sys.executable, "-c", RACER, str(barrier), str(number), json.dumps(plan)],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    deadline = time.monotonic() + 120
    while not all(Path(f"{barrier}.{n}").exists() for n in range(len(plans))):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "a racer did not start"
        time.sleep(0.05)
    barrier.touch()
    outcomes = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-3000:]
        outcomes.append(json.loads(out.strip().splitlines()[-1]))
    return outcomes


@pytest.fixture(scope="module")
def raced(module_store):
    """Two processes released together; each promotes on both models, rivals first."""
    folder, _ = module_store
    client = tracking.client()
    source = folder / "weights"
    source.mkdir()
    for model in (RIVALS, TWINS):
        client.create_registered_model(model)
        for _ in range(3):  # promotion moves aliases only; it never opens the weights
            version = client.create_model_version(model, str(source)).version
            client.set_model_version_tag(model, version, "llmops.gate_passed", "true")
        registry.promote(registry.PromoteConfig(version="1", expected_production="none", approved_by="setup",
                                                model_name=model))
    first, second = race(folder, [(RIVALS, "2"), (TWINS, "2")], [(RIVALS, "3"), (TWINS, "2")])
    return {RIVALS: [first[0], second[0]], TWINS: [first[1], second[1]]}


def test_two_candidates_from_the_same_champion_exactly_one_wins(raced):
    outcomes = raced[RIVALS]
    codes = sorted(code for code, _, _ in outcomes)
    assert codes == [0, 1], outcomes
    winner = next(result for code, result, _ in outcomes if code == 0)
    _, loser, loser_err = next(o for o in outcomes if o[0] == 1)
    assert winner["changed"] is True and winner["replaced"] == "1"
    assert loser == {"model_name": RIVALS, "version": loser["version"], "changed": False,
                     "production": winner["version"]}
    assert "stale candidate" in loser_err
    aliases = registry.alias_versions(RIVALS)
    assert aliases["production"] == winner["version"] and aliases["previous-production"] == "1"
    events = [(e["action"], e["version"]) for e in registry.audit_events(RIVALS)]
    # a hand promotion records its promoter's approval first; the refused one records none
    assert events == [("approved", "1"), ("promoted", "1"), ("approved", winner["version"]),
                      ("promoted", winner["version"]), ("promotion_refused", loser["version"])]
    assert tracking.client().search_registered_models(filter_string=f"name = '{RIVALS}.registry-lock'") == []


def test_two_runs_promoting_the_same_version_make_one_move(raced):
    outcomes = raced[TWINS]
    assert [code for code, _, _ in outcomes] == [0, 0], outcomes
    assert sorted(result["changed"] for _, result, _ in outcomes) == [False, True]
    assert registry.alias_versions(TWINS) == {"production": "2", "previous-production": "1"}
    assert [(e["action"], e["version"]) for e in registry.audit_events(TWINS)] == [
        ("approved", "1"), ("promoted", "1"), ("approved", "2"), ("promoted", "2")]
