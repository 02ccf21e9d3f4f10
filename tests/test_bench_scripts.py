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


def run_bench(script: str, tmp_path: Path, *arguments: str, timeout: int = 300, env: dict | None = None) -> dict:
    """Run ``bench/<script>`` with ``--json-out`` in ``tmp_path``, no LLMOPS_/MLFLOW_ settings of the caller's."""
    summary = tmp_path / "summary.json"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LLMOPS_", "MLFLOW_"))}
    process = subprocess.run([sys.executable, str(ROOT / "bench" / script), *arguments, "--json-out", str(summary)],
                             check=False, cwd=ROOT, env={**clean, **(env or {})}, capture_output=True, text=True,
                             timeout=timeout)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    return json.loads(summary.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("store", ["sqlite", "server"])
def test_serving_throughput_tiny(tmp_path, store):
    """All five ways run against either store; each way's rate and ratio follow from its time."""
    prompts, batch = 4, 2
    # the script's store, model and home live in a TemporaryDirectory: TMPDIR keeps them (and mlflow server's) here
    summary = run_bench("serving_throughput.py", tmp_path, "--prompts", str(prompts), "--batch-size", str(batch),
                        "--max-new-tokens", "4", "--repeats", "1", "--store", store, env={"TMPDIR": str(tmp_path)})

    assert (summary["prompts"], summary["batch_size"], summary["max_new_tokens"]) == (prompts, batch, 4)
    assert summary["store"] == store and summary["repeats"] == 1 and summary["threads"] == 1
    ways = ("bare", "server_batched", "server_single", "server_batched_untraced", "server_batched_stored")
    for way in ways:
        figures = summary[way]
        assert figures["seconds"] > 0
        assert figures["answers_per_s"] == pytest.approx(prompts / figures["seconds"])
        assert figures["ratio_to_bare"] == pytest.approx(summary["bare"]["seconds"] / figures["seconds"])
    assert summary["bare"]["ratio_to_bare"] == 1
    assert summary["trace_ms_per_answer"] > 0  # (b), (c) and (e) trace every answer
    assert summary["trace_writer_process"] is True  # written by the trace writer, not the serving process
    assert set(summary["identical_to_bare"]) == set(ways[1:])
    assert all(0 <= same <= prompts for same in summary["identical_to_bare"].values())


@pytest.mark.slow
def test_curation_scale_tiny(tmp_path):
    """Every phase runs in its own interpreter; counts follow from the records asked for, ratios from the phases."""
    records = 400  # 100 prompts of four answers; two of them carry an email address
    groups = records // 4
    summary = run_bench("curation_scale.py", tmp_path, "--records", str(records), "--keep", str(tmp_path / "store"))

    assert summary["records"] == records
    assert set(summary) >= {"populate", "read", "curate", "mine"}
    assert summary["populate"]["seconds"] > 0 and summary["populate"]["db_mib"] >= 0
    read, curate, mine = summary["read"], summary["curate"], summary["mine"]
    assert read["traces"] == records and read["assessments"] == records  # one feedback on each trace
    assert curate["written"] is True
    # each prompt: a thumbs pair, a correction pair, a pairwise pair and the correction's SFT row
    assert curate["rows"] == 3 * groups and curate["sft_rows"] == groups
    assert sum(n for name, n in curate["new_rows"].items() if name.startswith("pairs")) == curate["rows"]
    assert curate["pii_hits"]["email"] > 0
    assert (mine["pairs"], mine["kto"], mine["sft"]) == (curate["rows"], curate["kto_rows"], curate["sft_rows"])
    for phase in (read, curate, mine):
        assert phase["peak_rss_mib"] > 0 and phase["work_s"] >= 0
    for phase in (read, curate):
        assert phase["import_s"] >= 0 and phase["seconds"] == pytest.approx(phase["import_s"] + phase["work_s"], abs=0.02)
    assert summary["curate_over_read"] == pytest.approx(curate["seconds"] / read["seconds"], abs=0.006)
    assert summary["curate_work_over_read_work"] == pytest.approx(curate["work_s"] / read["work_s"], abs=0.006)
    peak = max(read["peak_rss_mib"], curate["peak_rss_mib"], mine["peak_rss_mib"])
    assert summary["targets"] == {"curate at most 3x the read": summary["curate_over_read"] <= 3,
                                  "peak RSS within 4 GB": peak <= 4096}
    assert (tmp_path / "store" / "mlflow.db").is_file()  # --keep: the store was built there


@pytest.mark.slow
def test_monitor_scale_tiny(tmp_path):
    """Every phase runs, the false-alarm windows too; counts follow from the traces asked for, ratios from the phases."""
    traces, windows, size = 400, 3, 50
    summary = run_bench("monitor_scale.py", tmp_path, "--traces", str(traces), "--clean-windows", str(windows),
                        "--window-size", str(size), "--keep", str(tmp_path / "store"))

    assert summary["traces"] == traces
    assert set(summary) >= {"populate", "read", "monitor", "compute", "false_alarms"}
    assert summary["populate"]["seconds"] > 0 and summary["populate"]["db_mib"] >= 0
    read, monitor, compute = summary["read"], summary["monitor"], summary["compute"]
    assert read["traces"] == traces and monitor["requests"] == traces  # the whole window, nothing outside it
    assert read["assessments"] == sum(i % 10 in (1, 3, 5, 8) for i in range(traces))  # the thumbed answers
    assert isinstance(monitor["fired"], list) and isinstance(compute["fired"], list)  # version 1 was judged
    for phase in (read, monitor, compute):
        assert phase["peak_rss_mib"] > 0 and phase["work_s"] >= 0
    for phase in (read, monitor):
        assert phase["import_s"] >= 0 and phase["seconds"] == pytest.approx(phase["import_s"] + phase["work_s"], abs=0.02)
    alarms = summary["false_alarms"]
    assert (alarms["windows"], alarms["requests_per_window"]) == (windows, size)
    assert 0 <= alarms["windows_that_fired"] <= windows
    assert alarms["false_alarm_rate"] == pytest.approx(alarms["windows_that_fired"] / windows, abs=1e-4)
    assert all(0 < n <= alarms["windows_that_fired"] for n in alarms["by_signal"].values())
    assert summary["monitor_over_read"] == pytest.approx(monitor["seconds"] / read["seconds"], abs=0.006)
    assert summary["monitor_work_over_read_work"] == pytest.approx(monitor["work_s"] / read["work_s"], abs=0.006)
    peak = max(read["peak_rss_mib"], monitor["peak_rss_mib"], compute["peak_rss_mib"])
    assert summary["targets"] == {"monitor at most 3x the read": summary["monitor_over_read"] <= 3,
                                  "peak RSS within 4 GB": peak <= 4096}
    assert (tmp_path / "store" / "mlflow.db").is_file()
