"""Bench scripts run end to end: each is started as a subprocess, as a person would run it.

The figures themselves are not asserted (a benchmark prints them); what is checked is that the
script finishes and its JSON summary holds what it promises.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
THROUGHPUT = ROOT / "bench" / "train_throughput.py"


def run_throughput(tmp_path: Path, *arguments: str, timeout: int) -> dict:
    summary = tmp_path / "summary.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMOPS_", "MLFLOW_"))}
    process = subprocess.run([sys.executable, str(THROUGHPUT), *arguments, "--json-out", str(summary)],
                             check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    assert "tokens/s" in process.stdout
    return json.loads(summary.read_text())


@pytest.mark.slow
def test_train_throughput_tiny_on_cpu(tmp_path):
    summary = run_throughput(tmp_path, "--size", "tiny", "--steps", "3", timeout=300)

    assert set(summary["modes"]) == {"full", "lora"}
    for mode in summary["modes"].values():
        assert mode["global_step"] == 3
        assert mode["steady_steps"] == 2  # one warm-up step left out
        assert mode["tokens_per_s"] > 0
        assert mode["tokens_per_step"] == summary["batch_size"] * summary["seq_len"]  # every row filled
    full, lora = summary["modes"]["full"], summary["modes"]["lora"]
    assert full["params_trainable"] == full["params_total"]
    assert 0 < lora["params_trainable"] == lora["params_total"] - full["params_total"]  # the adapter only
    assert summary["lora_over_full"]["tokens_per_s"] == pytest.approx(lora["tokens_per_s"] / full["tokens_per_s"])
    if summary["device"] == "cpu":
        assert full["mfu"] is None and full["peak_gpu_allocated_gib"] is None  # n/a without a GPU


@pytest.mark.gpu
@pytest.mark.slow
def test_train_throughput_1b_on_gpu(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    summary = run_throughput(tmp_path, "--size", "1b", "--steps", "20", timeout=900)

    assert set(summary["modes"]) == {"full", "lora"}
    for mode in summary["modes"].values():
        assert 0.9e9 < mode["params_total"] < 1.2e9
        assert mode["weights_dtype"] == "bfloat16"
        assert mode["tokens_per_s"] > 0
        assert mode["peak_gpu_allocated_gib"] > 2  # at least the bf16 weights
        if summary["peak_flops"]:
            assert 0 < mode["mfu"] < 1
    assert summary["modes"]["lora"]["peak_gpu_allocated_gib"] < summary["modes"]["full"]["peak_gpu_allocated_gib"]


@pytest.mark.slow
def test_validate_scale_tiny(tmp_path):
    """Every phase runs; each step's figures carry both ratios, its import time and the fixed cost."""
    summary_path = tmp_path / "summary.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMOPS_", "MLFLOW_"))}
    process = subprocess.run([sys.executable, str(ROOT / "bench" / "validate_scale.py"), "--rows", "400",
                              "--fixed-rows", "50", "--json-out", str(summary_path)],
                             check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    phases = summary["phases"]
    assert set(phases) == {"pyarrow", "pandas", "validate", "eda"}
    for name in ("validate", "eda"):
        step = phases[name]
        assert step["rows"] == 400 and step["peak_mib"] > 0 and step["import_s"] > 0
        assert {"ratio_pyarrow", "ratio_pandas", "work_ratio_pyarrow", "work_ratio_pandas", "target_met"} <= set(step)
        assert summary["fixed"][name]["rows"] == 50
    assert phases["validate"]["docs_s"] > 0
    assert "ratio to pyarrow" not in process.stdout and "/pyarrow" in process.stdout
