"""The Dockerfiles, checked without a Docker engine: every COPY source exists, the Airflow base
image matches the pinned Airflow, the trainer runs as the non-root user the pods expect, and the
shell and Python the trainer build runs do what they say (run here on the real files)."""

from __future__ import annotations

import configparser
import glob
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILES = ("Dockerfile.trainer", "Dockerfile.airflow")
CONSTRAINTS = ROOT / "constraints.txt"
HEREDOC = re.compile(r"<<-?\s*['\"]?(\w+)['\"]?")


def instructions(name: str) -> list[tuple[str, str, str]]:
    """(INSTRUCTION, arguments, heredoc body) with continuations joined and comments dropped."""
    lines = (DOCKER / name).read_text().splitlines()
    out: list[tuple[str, str, str]] = []
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        while line.endswith("\\") and i < len(lines):
            nxt = lines[i].strip()
            i += 1
            if not nxt.startswith("#"):
                line = line[:-1].rstrip() + " " + nxt
        body = []
        if match := HEREDOC.search(line):
            while i < len(lines) and lines[i].strip() != match.group(1):
                body.append(lines[i])
                i += 1
            i += 1
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), args.strip(), "\n".join(body)))
    return out


def final_stage(name: str) -> list[tuple[str, str, str]]:
    items = instructions(name)
    last_from = max(i for i, (kw, _, _) in enumerate(items) if kw == "FROM")
    return items[last_from:]


def copy_sources(args: str) -> tuple[list[str], bool]:
    """A COPY's sources, and whether it copies from another stage or image."""
    words = shlex.split(args)
    flags = [w for w in words if w.startswith("--")]
    return [w for w in words if not w.startswith("--")][:-1], any(f.startswith("--from") for f in flags)


def pinned(name: str) -> str | None:
    for line in CONSTRAINTS.read_text().splitlines():
        match = re.match(rf"^{re.escape(name)}==([^\s;]+)", line.strip(), re.IGNORECASE)
        if match:
            return match.group(1)
    return None


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_every_copy_source_exists(dockerfile):
    copies = [args for kw, args, _ in instructions(dockerfile) if kw == "COPY"]
    assert copies
    for args in copies:
        sources, from_elsewhere = copy_sources(args)
        if from_elsewhere:
            continue
        matched = []
        for source in sources:
            if source == "constraints.txt" and not CONSTRAINTS.exists():
                continue  # written by another change; test_airflow_base_image_matches_constraints skips on it
            if glob.has_magic(source):  # optional file (README.m[d]): the COPY as a whole must match something
                matched += glob.glob(str(ROOT / source))
                continue
            assert (ROOT / source).exists(), f"{dockerfile}: COPY {source} does not exist in the repository"
            matched.append(source)
        assert matched, f"{dockerfile}: COPY {args} matches nothing"


def test_airflow_base_image_matches_constraints():
    if not CONSTRAINTS.exists():
        pytest.skip("constraints.txt (the pinned freeze) is not in the repository yet")
    (base,) = [args for kw, args, _ in instructions("Dockerfile.airflow") if kw == "FROM"]
    match = re.fullmatch(r"apache/airflow:(\d+\.\d+\.\d+)-python(\d+\.\d+)", base)
    assert match, base
    assert match.group(1) == pinned("apache-airflow"), "the Airflow image tag and constraints.txt disagree"
    assert match.group(2) == f"{sys.version_info.major}.{sys.version_info.minor}"


def test_constraints_can_constrain_the_images():
    if not CONSTRAINTS.exists():
        pytest.skip("constraints.txt (the pinned freeze) is not in the repository yet")
    for package in ("apache-airflow", "apache-airflow-providers-cncf-kubernetes", "torch", "transformers", "trl"):
        assert pinned(package), f"constraints.txt pins no {package}"


def test_trainer_runs_the_cli_as_the_pods_non_root_user():
    from llmops_airflow.operators.kubernetes import UID

    stage = final_stage("Dockerfile.trainer")
    (base,) = [args for kw, args, _ in stage if kw == "FROM"]
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for kw, a, _ in instructions("Dockerfile.trainer") if kw == "ARG"}
    assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-(cudnn-)?runtime-ubuntu22\.04", args[base.strip("${}")])
    users = [args for kw, args, _ in stage if kw == "USER"]
    assert users and users[-1] == f"{UID}:{UID}"  # numeric: runAsNonRoot can verify it without /etc/passwd
    assert any(kw == "RUN" and f"useradd --uid {UID}" in a for kw, a, _ in stage)
    (entrypoint,) = [args for kw, args, _ in stage if kw == "ENTRYPOINT"]
    assert entrypoint == '["llmops"]'
    scripts = configparser.ConfigParser()
    scripts.read(ROOT / "setup.cfg")
    assert "llmops = llmops_tasks.cli:main" in scripts["options.entry_points"]["console_scripts"]


def test_airflow_image_names_its_non_root_user_and_checks_the_auth_manager():
    """USER as the last instruction: the base image's airflow uid 50000 (the chart's `uid`), said in
    this file so that the image's user does not depend on what the base left (checkov CKV_DOCKER_3);
    the build fails if the FAB auth manager that docker/helm/values.yaml configures is missing."""
    stage = final_stage("Dockerfile.airflow")
    assert stage[-1][0] == "USER" and stage[-1][1] == "50000"
    runs = [args for kw, args, _ in stage if kw == "RUN"]
    assert any('python -c "import airflow.providers.fab.auth_manager.fab_auth_manager"' in run for run in runs)


@pytest.mark.parametrize(("dockerfile", "extras"), [("Dockerfile.trainer", "train,qlora"), ("Dockerfile.airflow", "airflow")])
def test_images_install_the_package_under_the_constraints(dockerfile, extras):
    runs = [args for kw, args, _ in final_stage(dockerfile) if kw == "RUN"]
    assert any(re.search(rf'pip install .*-c constraints\.txt .*"\.\[{extras}\]"', run) for run in runs)


@pytest.mark.integration  # a subprocess: not a unit test
def test_trainer_dependency_layer_lists_the_train_extra():
    """Runs the Python the trainer build runs, on the real setup.cfg."""
    (script,) = [body for kw, args, body in final_stage("Dockerfile.trainer") if kw == "RUN" and "requirements.txt" in args
                 and body]
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    requirements = out.stdout.split()
    names = {re.split(r"[<>=!\[ ]", r)[0] for r in requirements}
    assert {"torch", "transformers", "trl", "pyyaml", "bitsandbytes"} <= names
    assert "apache-airflow" not in names
    assert pinned("bitsandbytes"), "constraints.txt pins no bitsandbytes: the trainer image would take any version"


@pytest.mark.integration  # a subprocess: not a unit test
def test_trainer_constraints_filter(tmp_path):
    """Runs the trainer build's sed expressions on a freeze like the development one."""
    (run,) = [args for kw, args, _ in final_stage("Dockerfile.trainer") if kw == "RUN" and args.startswith("sed ")]
    expressions = re.findall(r"-e '([^']*)'", run)
    freeze = tmp_path / "constraints.txt"
    freeze.write_text(
        "apache-airflow==3.3.2\n-e file:///work/main\nllmops-airflow @ file:///work/main\n"
        "llmops_airflow==0.1.0\ntorch==2.13.0+cpu\ntorchvision==0.28.0+cpu ; sys_platform == 'linux'\n"
    )
    command = ["sed", "-E", *(x for e in expressions for x in ("-e", e)), str(freeze)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["apache-airflow==3.3.2", "torch==2.13.0", "torchvision==0.28.0 ; sys_platform == 'linux'"]


@pytest.mark.parametrize("extra", ["train"])
def test_constraints_satisfy_the_extras_the_images_install(extra):
    """Each requirement of the extra an image installs is pinned in constraints.txt, at a version
    the requirement accepts: the image gets the versions the tests ran with, or the build fails."""
    if not CONSTRAINTS.exists():
        pytest.skip("constraints.txt (the pinned freeze) is not in the repository yet")
    from packaging.requirements import Requirement

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = [line.strip() for line in cfg["options.extras_require"][extra].splitlines()]
    for line in (x for x in lines if x and not x.startswith("#")):
        requirement = Requirement(line)
        version = pinned(requirement.name) or pinned(requirement.name.replace("_", "-")) or pinned(
            requirement.name.replace("-", "_"))
        assert version, f"constraints.txt pins no {requirement.name} (extra {extra})"
        assert requirement.specifier.contains(version.split("+")[0], prereleases=True), (
            f"constraints.txt pins {requirement.name}=={version}, outside {requirement} (extra {extra})")
