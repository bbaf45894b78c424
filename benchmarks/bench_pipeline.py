"""Local pipeline overhead: a study through the KFP local runner vs the same steps called directly.

Both runs start from an empty storage root (nothing reused), in the same process, one after the other, both serial
(the pipeline's loop parallelism is set to 1, so the difference is orchestration, not concurrency). `--study tiny`
(default, what `make bench` runs: 6 points, about 2 minutes) uses a generated corpus; `--study demo` runs the demo
study itself (pipelines/configs/demo.yaml, 14 points, about 8 minutes on 2 cores).
Target (issue): overhead <= 5% of a demo-sized study's wall time; `overhead_fraction` is overhead / direct time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time

WORDS = (
    "the of and to in that is was he for it with as his on be at by had are but from or have an they which one "
    "you were her all she there would their we him been has when who will more no if out so said what up its "
    "about into than them can only other new some could time these two may then do first any my now"
).split()


def _study(name: str, corpus: str, root: str):
    from repeatlab import config

    return config.from_dict(
        {
            "name": name,
            "corpus": {"url": corpus, "format": "jsonl", "test_fraction": 0.1, "probe_fraction": 0.05},
            "budget": {"total_tokens": 65536, "context": 64, "batch_tokens": 2048},
            "models": [{"n_layer": 1, "n_embd": 32, "n_head": 2}, {"n_layer": 2, "n_embd": 32, "n_head": 2}],
            "grid": {"fractions": [0.0, 0.5], "epochs": [4, 32], "seeds": [0]},
            "train": {"learning_rate": 0.01, "eval_points": 4, "eval_sequences": 8, "threads_per_rank": 1},
            "eval": {"eval_tokens": 4096, "prefix_samples": 4, "prefix_random_tokens": 10, "prefix_repeats": 3},
            "storage": {"root": root},
            "cluster": {"parallelism": 1},
        }
    )


def _demo(name: str, root: str):
    import dataclasses

    from repeatlab import config
    from repeatlab.kfp_pipeline import REPO

    cfg = config.load(os.path.join(REPO, "pipelines", "configs", "demo.yaml"))
    return dataclasses.replace(
        cfg,
        name=name,
        storage=dataclasses.replace(cfg.storage, root=root),
        cluster=dataclasses.replace(cfg.cluster, parallelism=1),
    )


def run(study: str = "tiny") -> dict:
    from repeatlab import grid, steps, storage
    from repeatlab.runner import run_local

    with tempfile.TemporaryDirectory() as folder:
        if study == "demo":
            direct_cfg = _demo("bench-direct", "file://" + os.path.join(folder, "direct"))
            pipeline_cfg = _demo("bench-pipeline", "file://" + os.path.join(folder, "pipeline"))
        else:
            rng = random.Random(0)
            corpus = os.path.join(folder, "corpus.jsonl")
            with open(corpus, "w") as fh:
                for i in range(400):
                    fh.write(
                        json.dumps({"text": f"Doc {i}. " + " ".join(rng.choice(WORDS) for _ in range(200))}) + "\n"
                    )
            direct_cfg = _study("bench-direct", corpus, "file://" + os.path.join(folder, "direct"))
            pipeline_cfg = _study("bench-pipeline", corpus, "file://" + os.path.join(folder, "pipeline"))
        started = time.perf_counter()
        steps.run_study_directly(direct_cfg.to_json())
        direct = time.perf_counter() - started
        started = time.perf_counter()
        run_local(pipeline_cfg, pipeline_root=os.path.join(folder, "kfp"))
        pipeline = time.perf_counter() - started
        points = len(
            storage.read_json(storage.join(grid.study_url(pipeline_cfg.storage.root, pipeline_cfg.name), "points.json"))
        )
    overhead = pipeline - direct
    return {
        "study": study,
        "points": points,
        "direct_seconds": round(direct, 2),
        "pipeline_seconds": round(pipeline, 2),
        "overhead_seconds": round(overhead, 2),
        "overhead_per_point_seconds": round(overhead / points, 3),
        "overhead_fraction": round(overhead / direct, 4),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--study", choices=("tiny", "demo"), default="tiny")
    args = parser.parse_args()
    print(json.dumps(run(args.study), indent=2), file=sys.stdout)
