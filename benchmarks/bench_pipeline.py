"""Local pipeline overhead: the tiny study through the KFP local runner vs the same steps called directly.

Both runs start from an empty storage root (nothing reused) on the same generated corpus, in the same process, one
after the other. The overhead (pipeline minus direct) is then compared with the wall time of a demo-sized study:
pass `--demo-seconds` (what `make demo` took) or the benchmark uses the pipeline run of this tiny study scaled by
the demo's point count. Target (issue): overhead <= 5% of a demo-sized study's wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time

WORDS = ("the of and to in that is was he for it with as his on be at by had are but from or have an they which one "
         "you were her all she there would their we him been has when who will more no if out so said what up its "
         "about into than them can only other new some could time these two may then do first any my now").split()


def _study(name: str, corpus: str, root: str):
    from repeatlab import config

    return config.from_dict({
        "name": name,
        "corpus": {"url": corpus, "format": "jsonl", "test_fraction": 0.1, "probe_fraction": 0.05},
        "budget": {"total_tokens": 65536, "context": 64, "batch_tokens": 2048},
        "models": [{"n_layer": 1, "n_embd": 32, "n_head": 2}, {"n_layer": 2, "n_embd": 32, "n_head": 2}],
        "grid": {"fractions": [0.0, 0.5], "epochs": [4, 32], "seeds": [0]},
        "train": {"learning_rate": 0.01, "eval_points": 4, "eval_sequences": 8, "threads_per_rank": 1},
        "eval": {"eval_tokens": 4096, "prefix_samples": 4, "prefix_random_tokens": 10, "prefix_repeats": 3},
        "storage": {"root": root},
        "cluster": {"parallelism": 1},
    })


def run(demo_seconds: float | None = None) -> dict:
    from repeatlab import steps
    from repeatlab.runner import run_local

    with tempfile.TemporaryDirectory() as folder:
        rng = random.Random(0)
        corpus = os.path.join(folder, "corpus.jsonl")
        with open(corpus, "w") as fh:
            for i in range(400):
                fh.write(json.dumps({"text": f"Doc {i}. " + " ".join(rng.choice(WORDS) for _ in range(200))}) + "\n")
        direct_cfg = _study("bench-direct", corpus, "file://" + os.path.join(folder, "direct"))
        started = time.perf_counter()
        steps.run_study_directly(direct_cfg.to_json(), log=lambda m: None)
        direct = time.perf_counter() - started
        pipeline_cfg = _study("bench-pipeline", corpus, "file://" + os.path.join(folder, "pipeline"))
        started = time.perf_counter()
        run_local(pipeline_cfg, pipeline_root=os.path.join(folder, "kfp"), log=lambda m: None)
        pipeline = time.perf_counter() - started
    points = 6
    overhead = pipeline - direct
    result = {"direct_seconds": direct, "pipeline_seconds": pipeline, "overhead_seconds": overhead,
              "overhead_ratio_tiny_study": overhead / direct, "points": points}
    if demo_seconds:
        result["demo_seconds"] = demo_seconds
        result["overhead_fraction_of_demo"] = overhead / demo_seconds
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--demo-seconds", type=float, default=None)
    args = parser.parse_args()
    print(json.dumps(run(args.demo_seconds), indent=2), file=sys.stdout)
