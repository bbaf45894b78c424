"""Check that the TrainJob's trainer command starts the right Python in every torchrun worker.

Runs the command `repeatlab.launch.build_trainjob` puts in the TrainJob, with the training module swapped for a probe
(one node, --standalone, 2 workers): each worker reports its sys.executable and whether repeatlab imports. Every
worker must be the interpreter that `python` on the PATH is (the image's venv, /opt/venv/bin/python), never the base
image's own Python (the CUDA base's conda Python has a `torchrun` script on the PATH but no repeatlab).
Used by images/check.sh inside the built image and by tests/test_images.py in the project venv.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

PROBE = """import json, os, sys
try:
    import repeatlab
    ok = repeatlab.__file__
except ImportError as exc:
    ok = None
with open(os.path.join(sys.argv[1], "rank-" + os.environ["RANK"] + ".json"), "w") as fh:
    json.dump({"executable": sys.executable, "prefix": sys.prefix, "repeatlab": ok}, fh)
"""


def main() -> int:
    from repeatlab.launch import build_trainjob

    job = build_trainjob(
        name="probe",
        namespace="default",
        run_url="file:///nowhere",
        image="unused",
        num_nodes=1,
        nproc_per_node=2,
        resources={},
    )
    command = job["spec"]["trainer"]["command"]
    module_at = command.index("-m", 3)  # python -m torch.distributed.run [options] -m repeatlab.train ...
    expected = shutil.which(command[0])
    assert expected, f"{command[0]} is not on the PATH"
    with tempfile.TemporaryDirectory() as out:
        probe = os.path.join(out, "probe.py")
        with open(probe, "w") as fh:
            fh.write(PROBE)
        run = command[:module_at] + ["--standalone", probe, out]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run(run, check=True, env=env, stdout=subprocess.DEVNULL, timeout=300)
        workers = [json.load(open(os.path.join(out, f"rank-{r}.json"))) for r in range(2)]
    # Not realpath: a venv's python is a symlink to the base interpreter; the venv is told apart by its prefix.
    prefix = subprocess.run(
        [expected, "-c", "import sys; print(sys.prefix)"], check=True, capture_output=True, text=True
    ).stdout.strip()
    for rank, worker in enumerate(workers):
        assert worker["prefix"] == prefix and worker["repeatlab"], (
            f"worker {rank} ran {worker['executable']} (prefix {worker['prefix']}, repeatlab: {worker['repeatlab']}); "
            f"expected {expected} (prefix {prefix})"
        )
    print(json.dumps({"command": run[:module_at], "python": expected, "workers": workers}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
