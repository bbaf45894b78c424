"""`make bench`: every benchmark, each against a baseline measured in the same run; one JSON document out.

Record the results with the machine and date in docs/benchmarks.md (these machines are shared and noisy: compare
ratios, not absolute times).
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
import platform
import sys

BENCHMARKS = ("bench_prepare", "bench_mix", "bench_train", "bench_pack", "bench_pipeline", "bench_audit")


def main() -> int:
    selected = sys.argv[1:] or list(BENCHMARKS)
    out = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "results": {},
    }
    for name in selected:
        module = importlib.import_module(f"benchmarks.{name}")
        print(f"bench: {name} ...", file=sys.stderr)
        out["results"][name] = module.run()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
