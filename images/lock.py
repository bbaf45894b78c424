"""Regenerate images/constraints.txt: exact pins of repeatlab's runtime dependency closure as installed in a venv.

    .venv/bin/python images/lock.py            # rewrite images/constraints.txt
    .venv/bin/python images/lock.py --check    # exit 1 if the file differs from what the venv would give

Runtime = `repeatlab[gcs,s3,k8s,torchx]` and everything those pull in, for Linux x86_64 / CPython 3.11. Dev-only tools
(pytest, ruff, kubernetes-validate, test servers) are not in the images and not pinned here. torch is pinned without its
local label (2.13.0, not 2.13.0+cpu): the CPU image installs 2.13.0+cpu from the PyTorch CPU index, the CUDA image keeps
its base image's 2.13.0+cuXXX, and `==2.13.0` accepts both (PEP 440 ignores the local label).
"""

from __future__ import annotations

import importlib.metadata as md
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT_DIST = "repeatlab"
RUNTIME_EXTRAS = {"gcs", "s3", "k8s", "torchx"}
OUT = Path(__file__).with_name("constraints.txt")
ENV = {
    "python_version": "3.11",
    "python_full_version": "3.11.10",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}


def closure() -> dict[str, str]:
    seen: dict[str, tuple[str, set[str]]] = {}
    stack: list[tuple[str, set[str]]] = [(ROOT_DIST, set(RUNTIME_EXTRAS))]
    while stack:
        name, extras = stack.pop()
        dist = md.distribution(name)  # PackageNotFoundError: the venv is incomplete; `make install` first
        key = canonicalize_name(dist.metadata["Name"])
        prev = seen.get(key)
        if prev is not None and extras <= prev[1]:
            continue
        extras = extras | (prev[1] if prev else set())
        seen[key] = (dist.version, extras)
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or any(req.marker.evaluate({**ENV, "extra": e}) for e in extras | {""}):
                stack.append((req.name, set(req.extras)))
    seen.pop(canonicalize_name(ROOT_DIST))
    return {k: v.split("+")[0] for k, (v, _) in sorted(seen.items())}


def render(pins: dict[str, str]) -> str:
    head = (
        "# Exact pins of repeatlab's runtime dependencies (repeatlab[gcs,s3,k8s,torchx] and their closure),\n"
        "# as resolved in the project venv. Used by images/Dockerfile.* as a pip constraints file (-c).\n"
        "# Regenerate with: .venv/bin/python images/lock.py   (checked by tests/test_images.py)\n"
    )
    return head + "".join(f"{k}=={v}\n" for k, v in pins.items())


def main(argv: list[str]) -> int:
    text = render(closure())
    if "--check" in argv:
        if OUT.read_text() != text:
            print(f"{OUT} is out of date with the venv; run: python images/lock.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT} ({text.count(chr(10)) - 3} pins)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
