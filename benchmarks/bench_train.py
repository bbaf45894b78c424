"""Training tokens/s and MFU for three sizes of the model family, the trainer beside the simplest eager loop.

    python -m benchmarks.bench_train [--quick] [--rounds 5] [--steps 6] [--threads N] [--out PATH]
                                                                     # the table on stderr, the JSON on stdout

repeatlab: the real trainer, `repeatlab.train.train(run_url)` (what `python -m repeatlab.train` runs), in this process
           on a synthetic run folder (byte corpus, plan with 10% of the slots repeats of 4 sequences, documented
           formats) with everything it does per step: data windows from the memory-mapped shard, exposure counting,
           lr schedule, loss scaling, grad clipping, AdamW from GPT.configure_optimizer (decay on matrices only),
           the loss all-reduce (gloo, world of one), bf16 autocast on CUDA. Step times come from train.jsonl: with
           eval_points above the step count the trainer writes a row after every step with its tokens and its
           training-only tokens_per_s (eval, checkpoint and startup time excluded), so step k took
           tokens_k / tokens_per_s_k - tokens_{k-1} / tokens_per_s_{k-1} seconds. Step 1 (warm-up) is left out.
reference: the simplest correct eager loop over the same GPT class, measured in the same process: torch.manual_seed,
           GPT(cfg), torch.optim.AdamW(model.parameters()) with its defaults, then per step a batch of windows from
           the same shard in the same plan order, `_, loss = model(x, y)`, backward, step, zero_grad; the same batch
           shape, dtype (fp32 on CPU; bf16 autocast on CUDA, as the trainer) and thread count; each step timed
           with perf_counter (synchronized on CUDA, as the trainer's steps are), step 1 left out.
One measurement's tokens/s = batch tokens / its median step time. The two alternate within each size (A B, B A, A B,
...; the order flips so neither always runs second); tokens/s is the median over the rounds, ratio = median
repeatlab / median reference, ratio_paired = the median of the per-round ratios (the two runs of a round are seconds
apart, so it cancels slow drifts in the machine's load), ratio_best = from the fastest step of each over all rounds
(other work only ever slows a step down, so on a busy machine this is the least disturbed comparison). The machines
are shared and other work changes throughput by 2x or more within seconds: read the ratios, not the absolute numbers,
and look at the load averages recorded with the machine.
MFU = tokens/s x training FLOPs per token (model.training_flops_per_token: 6N + 6 n_layer context n_embd) / the
matmul ceiling, the best torch.mm FLOP/s of square matrices measured in the same run (fp32 on CPU, bf16 on CUDA):
sampled before every size and at the end, the best sample counts (a sample taken while other work holds the cores
would understate the machine and overstate MFU).
Target (issue 3): at least the reference's throughput at every size; on an H200, >= 40% MFU for the largest config
(recorded when a GPU is present, not required).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

VOCAB = 256  # byte tokens
FRACTION = 0.1  # plan slots that are repeats (exercises the exposure counter as in a real run)
N_REPEATED = 4
# (family depths, context, sequences per batch) per device kind; the family is config.FamilyConfig's default
# (aspect ratio 32, head dim 16, mlp ratio 4): d2 ~0.1M, d4 ~0.8M, d6 ~2.7M non-embedding parameters.
SIZES = {"cpu": ((2, 4, 6), 128, 16), "cuda": ((8, 16, 24), 1024, 32)}


# ----------------------------------------------------------------------------------------------------------------------
# Machine and matmul ceiling


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str) -> dict:
    import torch

    info = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device,
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    info["load_average_start"] = _load_average()
    return info


def _load_average() -> float | None:
    """The 1-minute load average: other work on a shared machine shows up here (the numbers mean little above the
    core count)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def matmul_ceiling(device: str, seconds: float = 1.0) -> dict:
    """The best FLOP/s of torch.mm on square matrices (fp32 on CPU, bf16 on CUDA), each size timed for `seconds`."""
    import torch

    dtype, sizes = (torch.bfloat16, (4096, 8192)) if device == "cuda" else (torch.float32, (1024, 2048))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    per_size = {}
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(3):
            torch.mm(a, b)
        sync()
        calls, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            torch.mm(a, b)
            calls += 1
            if device == "cuda" and calls % 20 == 0:
                sync()
        sync()
        per_size[n] = 2 * n**3 * calls / (time.perf_counter() - started)
    return {
        "flops": max(per_size.values()),
        "dtype": str(dtype).replace("torch.", ""),
        "per_size": {str(n): f for n, f in per_size.items()},
    }


# ----------------------------------------------------------------------------------------------------------------------
# Synthetic inputs (the formats of docs/architecture.md, as tests/test_train.py builds them)


def write_corpus(folder: str, windows: int, context: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    train_tokens, test_tokens = windows * context + 1, 4 * context + 1
    rng.integers(0, VOCAB, train_tokens, dtype=np.uint16).tofile(os.path.join(folder, "train.bin"))
    rng.integers(0, VOCAB, test_tokens, dtype=np.uint16).tofile(os.path.join(folder, "test.bin"))
    manifest = {
        "corpus_id": "bench",
        "format_version": 1,
        "dtype": "uint16",
        "tokenizer": {"kind": "byte", "vocab_size": VOCAB, "eot_id": 0, "file": None},
        "splits": {
            "train": {"tokens": train_tokens, "file": "train.bin"},
            "test": {"tokens": test_tokens, "file": "test.bin"},
        },
    }
    with open(os.path.join(folder, "manifest.json"), "w") as fh:
        json.dump(manifest, fh)
    return "file://" + folder


def make_plan(windows: int, sequences: int, context: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(plan offsets [sequences], repeated offsets [N_REPEATED]): FRACTION of the slots repeat N_REPEATED windows."""
    rng = np.random.default_rng(seed)
    pool = rng.permutation(windows)
    repeats = round(FRACTION * sequences)
    repeated = pool[:N_REPEATED].astype(np.int64) * context
    unique = pool[N_REPEATED : N_REPEATED + sequences - repeats].astype(np.int64) * context
    plan = rng.permutation(np.concatenate([unique, np.resize(repeated, repeats)])).astype(np.int64)
    return plan, repeated


def write_run(
    folder: str, corpus_url: str, cfg, plan: np.ndarray, repeated: np.ndarray, batch: int, threads: int, compile_: bool
) -> str:
    os.makedirs(folder, exist_ok=True)
    np.save(os.path.join(folder, "plan.npy"), plan)
    np.save(os.path.join(folder, "repeated.npy"), repeated)
    steps = len(plan) // batch
    train = {
        "eval_points": 4 * steps,
        "eval_sequences": 2,
        "checkpoint_every": steps,
        "keep_checkpoints": 1,
        "threads_per_rank": threads,
        "compile": compile_,
        "process_group_timeout_s": 120,
    }
    point = {
        "point_id": os.path.basename(folder),
        "corpus_id": "bench",
        "corpus_url": corpus_url,
        "model": cfg.to_dict(),
        "fraction": FRACTION,
        "epochs": FRACTION * len(plan) / N_REPEATED,
        "seed": 0,
        "control": False,
        "budget": {
            "total_tokens": len(plan) * cfg.context,
            "context": cfg.context,
            "batch_tokens": batch * cfg.context,
        },
        "train": train,
        "eval": {},
    }
    with open(os.path.join(folder, "point.json"), "w") as fh:
        json.dump(point, fh)
    with open(os.path.join(folder, "plan.json"), "w") as fh:
        json.dump(
            {"corpus_id": "bench", "point_id": point["point_id"], "sequences": len(plan), "plan_sha256": "bench"}, fh
        )
    return "file://" + folder


# ----------------------------------------------------------------------------------------------------------------------
# The two measurements


def measure_repeatlab(run_url: str) -> list[float]:
    """The trainer's step times in seconds, steps 2..N, from its own train.jsonl rows (see the module docstring)."""
    from repeatlab import storage
    from repeatlab.train import train

    log = io.StringIO()
    try:
        with contextlib.redirect_stderr(log):
            result = train(run_url)
    except Exception as exc:
        raise RuntimeError(f"bench_train: the trainer failed on {run_url}: {exc}\n{log.getvalue()[-2000:]}") from exc
    if result.get("status") != "trained":
        raise RuntimeError(f"bench_train: the trainer did not train {run_url}: {result}")
    rows = [
        json.loads(line)
        for line in storage.read_text(storage.join(run_url, "train.jsonl")).splitlines()
        if line.strip()
    ]
    if [r["step"] for r in rows] != list(range(1, result["steps"] + 1)):
        raise RuntimeError(f"bench_train: expected a train.jsonl row after every step, got {[r['step'] for r in rows]}")
    train_time = [r["tokens"] / r["tokens_per_s"] for r in rows]  # cumulative training-only seconds
    return [b - a for a, b in itertools.pairwise(train_time)]


def measure_reference(cfg, data: np.ndarray, plan: np.ndarray, batch: int, device: str) -> list[float]:
    """The simplest correct eager loop; its step times in seconds, steps 2..N (step 1 warms up)."""
    import torch

    from repeatlab.model import GPT

    torch.manual_seed(0)
    model = GPT(cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters())
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else contextlib.nullcontext()
    ctx = cfg.context
    steps = len(plan) // batch
    times = []
    for step in range(steps):
        started = time.perf_counter()
        offsets = plan[step * batch : (step + 1) * batch]
        xy = torch.stack([torch.from_numpy(data[o : o + ctx + 1].astype(np.int64)) for o in offsets]).to(device)
        x, y = xy[:, :-1], xy[:, 1:]
        with autocast:
            _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return times[1:]


# ----------------------------------------------------------------------------------------------------------------------
# The benchmark


def run(
    quick: bool = False,
    rounds: int | None = None,
    steps: int | None = None,
    compile_: bool = False,
    device: str | None = None,
    threads: int | None = None,
) -> dict:
    """Measure every size; returns a JSON-able dict and prints the table on stderr."""
    import torch

    from repeatlab.config import FamilyConfig
    from repeatlab.model import family_member, training_flops_per_token

    for key in ("RANK", "WORLD_SIZE"):  # the trainer must run as one plain process
        if key in os.environ:
            raise RuntimeError(f"bench_train: {key} is set (torchrun environment); run the benchmark as one process")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    rounds = rounds or (3 if quick else 5)
    timed_steps = steps or (3 if quick else 6)
    depths, context, batch = SIZES[device]
    if threads:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    step_tokens = batch * context
    sequences = (timed_steps + 1) * batch
    windows = max(2 * sequences, 64)
    result = {
        "benchmark": "train",
        "machine": machine(device),
        "mode": "quick" if quick else "default",
        "rounds": rounds,
        "timed_steps": timed_steps,
        "batch_sequences": batch,
        "context": context,
        "threads": threads,
        "compile": bool(compile_ and device == "cuda"),
        "sizes": {},
    }
    samples = []
    family = FamilyConfig()
    with tempfile.TemporaryDirectory(prefix="repeatlab-bench-train-") as tmp:
        corpus_url = write_corpus(os.path.join(tmp, "corpus"), windows, context)
        data = np.memmap(os.path.join(tmp, "corpus", "train.bin"), dtype=np.uint16, mode="r")
        plan, repeated = make_plan(windows, sequences, context)
        for depth in depths:
            samples.append(matmul_ceiling(device, 0.25 if quick else 0.5))
            cfg = family_member(family, depth, VOCAB, context)
            flops = training_flops_per_token(cfg.n_params_nonembed, cfg.n_layer, cfg.n_embd, cfg.context)
            ours, ref = [], []
            for r in range(rounds):
                for kind in ("repeatlab", "reference") if r % 2 == 0 else ("reference", "repeatlab"):
                    if kind == "repeatlab":
                        url = write_run(
                            os.path.join(tmp, f"{cfg.name}-{r}"),
                            corpus_url,
                            cfg,
                            plan,
                            repeated,
                            batch,
                            threads,
                            compile_ and device == "cuda",
                        )
                        ours.append(measure_repeatlab(url))
                        torch.set_num_threads(threads)  # the trainer set it to the same value; keep it so
                    else:
                        ref.append(measure_reference(cfg, data, plan, batch, device))
            ours_rounds = [step_tokens / statistics.median(t) for t in ours]
            ref_rounds = [step_tokens / statistics.median(t) for t in ref]
            ours_med, ref_med = statistics.median(ours_rounds), statistics.median(ref_rounds)
            ours_best = step_tokens / min(min(t) for t in ours)
            ref_best = step_tokens / min(min(t) for t in ref)
            result["sizes"][cfg.name] = {
                "n_layer": cfg.n_layer,
                "n_embd": cfg.n_embd,
                "n_head": cfg.n_head,
                "n_params_nonembed": cfg.n_params_nonembed,
                "n_params_total": cfg.n_params_total,
                "flops_per_token": flops,
                "tokens_per_s_repeatlab": ours_med,
                "tokens_per_s_reference": ref_med,
                "ratio_vs_reference": ours_med / ref_med,
                "ratio_paired": statistics.median(o / r for o, r in zip(ours_rounds, ref_rounds)),
                "tokens_per_s_best_repeatlab": ours_best,
                "tokens_per_s_best_reference": ref_best,
                "ratio_best": ours_best / ref_best,
                "rounds_tokens_per_s_repeatlab": ours_rounds,
                "rounds_tokens_per_s_reference": ref_rounds,
                "step_seconds_repeatlab": ours,
                "step_seconds_reference": ref,
            }
    samples.append(matmul_ceiling(device, 0.25 if quick else 0.5))
    result["machine"]["load_average_end"] = _load_average()
    best = max(samples, key=lambda c: c["flops"])
    result["ceiling"] = {
        "flops": best["flops"],
        "dtype": best["dtype"],
        "samples": [c["flops"] for c in samples],
        "best_per_size": best["per_size"],
    }
    for s in result["sizes"].values():
        s["mfu_repeatlab"] = s["tokens_per_s_repeatlab"] * s["flops_per_token"] / best["flops"]
        s["mfu_reference"] = s["tokens_per_s_reference"] * s["flops_per_token"] / best["flops"]
    largest = result["sizes"][family_member(family, depths[-1], VOCAB, context).name]
    result["targets"] = {
        "at_least_reference_every_size": all(s["ratio_vs_reference"] >= 1.0 for s in result["sizes"].values()),
        "largest_mfu_repeatlab": largest["mfu_repeatlab"],
        "h200_mfu_40pct": (largest["mfu_repeatlab"] >= 0.40) if device == "cuda" else None,
    }
    print(table(result), file=sys.stderr)
    return result


def table(result: dict) -> str:
    m, c = result["machine"], result["ceiling"]
    lines = [
        f"{m['date']}  {m['cpu']}, {m['cores']} cores, {result['threads']} torch threads, torch {m['torch']}"
        + (f", {m['gpu']}" if m.get("gpu") else "")
        + f"; load average {m['load_average_start']} at start, {m['load_average_end']} at end",
        (
            f"matmul ceiling ({c['dtype']}): {c['flops'] / 1e9:,.1f} GFLOP/s; context {result['context']}, "
            f"batch {result['batch_sequences']} sequences, {result['timed_steps']} timed steps, median of "
            f"{result['rounds']} rounds"
        ),
    ]
    header = (
        "size",
        "N non-emb",
        "FLOPs/token",
        "tok/s repeatlab",
        "tok/s reference",
        "ratio",
        "paired",
        "best",
        "MFU repeatlab",
        "MFU reference",
    )
    rows = [header] + [
        (
            name,
            f"{s['n_params_nonembed']:,}",
            f"{s['flops_per_token']:.3e}",
            f"{s['tokens_per_s_repeatlab']:,.0f}",
            f"{s['tokens_per_s_reference']:,.0f}",
            f"{s['ratio_vs_reference']:.3f}",
            f"{s['ratio_paired']:.3f}",
            f"{s['ratio_best']:.3f}",
            f"{s['mfu_repeatlab']:.1%}",
            f"{s['mfu_reference']:.1%}",
        )
        for name, s in result["sizes"].items()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines += [
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in rows
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds and steps (about 30 s on 2 CPU cores)")
    p.add_argument("--rounds", type=int, default=None, help="A/B rounds per size (default 5, quick 3)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per measurement (default 6, quick 3)")
    p.add_argument("--compile", action="store_true", help="CUDA only: the trainer with train.compile = true")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    p.add_argument("--threads", type=int, default=None, help="torch threads for both (default: torch's default)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    result = run(args.quick, args.rounds, args.steps, args.compile, args.device, args.threads)
    text = json.dumps(result, indent=2)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
