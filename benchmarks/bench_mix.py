"""Plan build time and peak memory for T = 1e9 and 1e11 tokens at context 1024 (the plan only, no token data).

Each measurement runs in a fresh subprocess so its peak RSS is its own. The baseline, measured in the same run, is
the simplest correct plan: one int64 permutation of the sequence slots (what a naive implementation would do).
Targets (issue): the 1e11-token plan in <= 60 s within 2x its own size in RAM.
"""

from __future__ import annotations

import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import numpy as np
kind, total, context = sys.argv[1], int(float(sys.argv[2])), int(sys.argv[3])
base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
sequences = total // context
if kind == "repeatlab":
    from repeatlab.mix import build_plan
    plan = build_plan(train_tokens=int(sequences * 1.05) * context + 1, total_tokens=total, context=context,
                      fraction=0.1, epochs=100, seed=0, salt="bench")
    offsets = plan.offsets
else:
    rng = np.random.default_rng(0)
    offsets = rng.permutation(sequences) * context
seconds = time.perf_counter() - started
peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"kind": kind, "seconds": seconds, "plan_bytes": int(offsets.nbytes),
                  "peak_rss_bytes": peak_rss * 1024, "extra_rss_bytes": (peak_rss - base_rss) * 1024}))
"""


def measure(kind: str, total: float, context: int = 1024) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, kind, str(total), str(context)], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def run(totals=(1e9, 1e11)) -> dict:
    results = {}
    for total in totals:
        ours, baseline = measure("repeatlab", total), measure("baseline", total)
        results[f"T={total:.0e}"] = {
            "repeatlab": ours,
            "baseline_permutation": baseline,
            "time_ratio_vs_baseline": ours["seconds"] / max(baseline["seconds"], 1e-9),
            "extra_memory_over_plan_size": ours["extra_rss_bytes"] / ours["plan_bytes"],
        }
    return results


if __name__ == "__main__":
    totals = tuple(float(t) for t in sys.argv[1:]) or (1e9, 1e11)
    print(json.dumps(run(totals), indent=2))
