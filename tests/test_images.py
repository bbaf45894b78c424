"""Checks of images/: Dockerfile lint (digest-pinned, overridable bases, non-root numeric USER, offline installs from
the wheelhouse under the constraints, the build context), the constraints file (covers every runtime dependency,
matches the venv, resolves on the package index), build.sh (fails clearly without a container engine) and the trainer
command's interpreter. No container engine is needed here: images/check.sh (`make image-check`, run by .ci/run) builds
the CPU image for real and runs the tiny study inside it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "images"
DOCKERFILES = [IMAGES / "Dockerfile.cpu", IMAGES / "Dockerfile.cuda"]
RUNTIME_EXTRAS = ("gcs", "s3", "k8s", "torchx")
TORCH = "2.13.0"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        buf += line.rstrip("\\").strip() + " " if line.rstrip().endswith("\\") else line.strip()
        if not line.rstrip().endswith("\\"):
            word, _, rest = buf.partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def base_image(path: Path) -> str:
    """The default of the Dockerfile's BASE_IMAGE build argument (every stage is FROM ${BASE_IMAGE})."""
    (default,) = [
        args.split("=", 1)[1] for word, args in instructions(path) if word == "ARG" and args.startswith("BASE_IMAGE=")
    ]
    return default


def stages(path: Path) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions(path):
        if ins[0] == "ARG" and not result:
            continue  # global build arguments before the first FROM
        if ins[0] == "FROM":
            result.append([])
        assert result, f"{path.name}: an instruction before the first FROM"
        result[-1].append(ins)
    return result


def constraints() -> dict[str, str]:
    pins = {}
    for line in (IMAGES / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version
    return pins


def runtime_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in RUNTIME_EXTRAS:
        reqs += project["optional-dependencies"][extra]
    return [Requirement(r) for r in reqs]


# ---------------------------------------------------------------------------------------------------------------------
# Dockerfiles


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_lint(path):
    all_stages = stages(path)
    assert len(all_stages) >= 2, "multi-stage: build in one stage, copy the venv into a clean final stage"
    for stage in all_stages:
        assert stage[0][1].split()[0] == "${BASE_IMAGE}", "every stage builds on the BASE_IMAGE build argument"
    image = base_image(path)
    name, _, digest = image.partition("@")
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"BASE_IMAGE {image} is not pinned by digest"
    tag = name.rsplit(":", 1)[1]
    assert re.match(r"\d+\.\d+\.\d+", tag) and tag != "latest", f"BASE_IMAGE {image}: name a full version tag"
    final = all_stages[-1]
    users = [args for word, args in final if word == "USER"]
    assert users, "the final stage must set USER"
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]), f"USER {users[-1]} must be numeric and non-root"
    assert users[-1].split(":")[0] == "1000"
    words = [word for word, _ in final]
    assert "WORKDIR" in words and "ENTRYPOINT" not in words
    env = " ".join(args for word, args in final if word == "ENV")
    assert "HOME=/home/repeatlab" in env
    assert any(word == "COPY" and "--from=" in args for word, args in final), "the final stage copies the built venv"
    for stage in all_stages:
        for word, args in stage:
            if word == "RUN":
                for cmd in re.split(r"&&|;|\|\|", args):
                    if re.search(r"\bpip3? install\b", cmd):
                        assert "--no-cache-dir" in cmd, f"{path.name}: pip install without --no-cache-dir: {cmd}"
                        # offline: only the wheelhouse staged on the host by build.sh, under the exact pins
                        assert "--no-index --find-links /wheelhouse" in cmd, f"{path.name}: install from an index"
                        if "repeatlab" in cmd or "/src" in cmd:
                            assert "-c /tmp/constraints.txt" in cmd, f"{path.name}: install without constraints"
                assert "apt-get install" not in args or "rm -rf /var/lib/apt/lists" in args
    assert any(word == "COPY" and "images/constraints.txt" in args for stage in all_stages for word, args in stage)
    # the build context holds what pyproject.toml maps into the package: repeatlab.components and repeatlab.pipelines
    copied = {
        args.split()[0] for stage in all_stages for word, args in stage if word == "COPY" and "--from" not in args
    }
    assert {"repeatlab", "components", "pipelines", "pyproject.toml"} <= copied
    # the default corpus ships in the image, where repeatlab.default_corpus looks for it
    assert any(
        word == "COPY" and args.startswith("images/build/corpus/ /opt/repeatlab/cache/default-corpus/")
        for word, args in final
    )
    assert "REPEATLAB_CACHE=/opt/repeatlab/cache" in env
    # The final stage installs nothing (no compilers, no caches).
    assert not any(word == "RUN" and re.search(r"pip3? install|apt-get|conda install", args) for word, args in final)


def test_cuda_image_keeps_the_base_torch():
    text = (IMAGES / "Dockerfile.cuda").read_text()
    base = base_image(IMAGES / "Dockerfile.cuda").split("@")[0]
    assert base.startswith(f"docker.io/pytorch/pytorch:{TORCH}-cuda") and base.endswith("-runtime")
    assert "--system-site-packages" in text
    runs = [args for word, args in instructions(IMAGES / "Dockerfile.cuda") if word == "RUN"]
    assert not [r for r in runs if re.search(r"pip3? install[^&;]*\btorch\b", r)], "the CUDA image reinstalls torch"
    assert "images/build/wheelhouse/torch-*.whl" in (IMAGES / "Dockerfile.cuda.dockerignore").read_text()
    # the venv's python is the one on the PATH (the trainer command's `python -m torch.distributed.run`)
    assert 'test "$(command -v python)" = /opt/venv/bin/python' in text
    cpu = (IMAGES / "Dockerfile.cpu").read_text()
    assert '"torch==${TORCH_VERSION}+cpu"' in cpu and "ARG TORCH_VERSION=" + TORCH in cpu


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_build_context_is_an_allow_list(path):
    ignore = Path(f"{path}.dockerignore").read_text().split()
    assert ignore[ignore.index("*")] == "*" and "!images/constraints.txt" in ignore
    copied = {
        src for word, args in instructions(path) if word == "COPY" and "--from" not in args for src in args.split()[:-1]
    }
    for src in copied:
        assert f"!{src.rstrip('/')}" in ignore or f"!{src.rstrip('/')}/" in ignore, f"{src} is not in the context"


# ---------------------------------------------------------------------------------------------------------------------
# constraints.txt


def test_constraints_cover_every_runtime_dependency():
    pins = constraints()
    for req in runtime_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} (pyproject.toml) is not pinned in images/constraints.txt"
        assert req.specifier.contains(Version(pins[name]), prereleases=True), f"{name}=={pins[name]} violates {req}"
    assert pins["torch"] == TORCH and pins["kfp"] == "2.17.3" and pins["kubernetes"] == "30.1.0"
    assert "repeatlab" not in pins and not {"pytest", "ruff", "kubernetes-validate"} & set(pins)


def test_constraints_match_the_venv():
    out = subprocess.run(
        [sys.executable, str(IMAGES / "lock.py"), "--check"], capture_output=True, text=True, check=False, timeout=60
    )
    assert out.returncode == 0, out.stderr


@pytest.mark.network
def test_constraints_resolve_on_the_index(tmp_path):
    """What the image build does, as a dry run: resolve the runtime dependencies from the index (ignoring what this
    venv has) under the constraints, and require a closed lock: every package pip picks is pinned, at that version.
    torch is left out: the images install it separately (CPU index / CUDA base image)."""
    reqs = [str(r) for r in runtime_requirements() if canonicalize_name(r.name) != "torch"]
    (tmp_path / "requirements.txt").write_text("\n".join(reqs) + "\n")
    report = tmp_path / "report.json"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--report",
            str(report),
            "-r",
            str(tmp_path / "requirements.txt"),
            "-c",
            str(IMAGES / "constraints.txt"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env=env,
    )
    if out.returncode != 0 and re.search(r"(?i)(connection|network|resolve host|timed out)", out.stderr):
        pytest.skip(f"package index unreachable: {out.stderr.strip().splitlines()[-1]}")
    assert out.returncode == 0, out.stderr[-3000:]
    pins = constraints()
    picked = {
        canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"]
        for i in json.loads(report.read_text())["install"]
    }
    assert "torch" not in picked
    unpinned = {n: v for n, v in picked.items() if pins.get(n) != v}
    assert not unpinned, f"resolved outside the constraints: {unpinned}"
    assert set(picked) >= {canonicalize_name(r.name) for r in runtime_requirements()} - {"torch"}


# ---------------------------------------------------------------------------------------------------------------------
# build.sh


def run_build(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(IMAGES / "build.sh"), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, **env},
        cwd=ROOT,
    )


def test_build_sh_without_engine_exits_3():
    out = run_build(ENGINES="no-such-engine")
    assert out.returncode == 3 and "no container engine on this machine" in out.stderr


def test_build_sh_print_commands():
    out = run_build("--print")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines == [
        "DOCKER_BUILDKIT=1 docker build --pull -f images/Dockerfile.cpu -t ghcr.io/repeatlab/repeatlab:0.1.0 .",
        "DOCKER_BUILDKIT=1 docker build --pull -f images/Dockerfile.cuda -t ghcr.io/repeatlab/repeatlab-cuda:0.1.0 .",
    ]
    out = run_build("--print", "cuda", ENGINE="buildah", REGISTRY="example.com/me", TAG="dev")
    assert out.stdout.strip() == (
        "buildah bud --pull --layers -f images/Dockerfile.cuda --ignorefile "
        "images/Dockerfile.cuda.dockerignore -t example.com/me/repeatlab-cuda:dev ."
    )
    assert run_build("bogus").returncode == 2


def test_base_image_is_overridable():
    """A mirror or a stand-in base (images/check.sh) replaces the pinned default through the build argument; no
    --pull then (a local image is not in any registry)."""
    for engine, start in (
        ("docker", "DOCKER_BUILDKIT=1 docker build --build-arg"),
        ("buildah", "buildah bud --layers"),
        ("podman", "podman build --build-arg"),
    ):
        out = run_build(
            "--print",
            "cpu",
            ENGINE=engine,
            BASE_IMAGE="localhost/repeatlab-base:bookworm",
            BUILD_ARGS="TORCH_VERSION=2.13.0",
        )
        assert out.returncode == 0, out.stderr
        line = out.stdout.strip()
        assert line.startswith(start) and "--pull" not in line
        assert "--build-arg BASE_IMAGE=localhost/repeatlab-base:bookworm --build-arg TORCH_VERSION=2.13.0 " in line


def test_trainjob_workers_run_the_venv_python():
    """The TrainJob's trainer command, run with this venv first on the PATH (as the image's ENV PATH does): every
    torchrun worker is this venv's interpreter and imports repeatlab (images/check.sh runs the same inside the
    image)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    out = subprocess.run(
        [sys.executable, str(IMAGES / "check_workers.py")],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["command"][:3] == ["python", "-m", "torch.distributed.run"]
    assert len(report["workers"]) == 2 and all(w["prefix"] == sys.prefix for w in report["workers"])


def test_image_names_match_cluster_config_defaults():
    from repeatlab.config import ClusterConfig

    out = run_build("--print").stdout
    assert ClusterConfig().image in out and ClusterConfig().train_image in out
