"""Packed training: runs per hour packed vs one at a time, and tokens/s and MFU per model size and pack size.

    python -m benchmarks.bench_pack [--quick] [--device cpu|cuda] [--threads N] [--out PATH]
                                                                     # the table on stderr, the JSON on stdout

runs_per_hour: K points of one shape (the demo's: byte vocabulary, context 128, 4096-token batches, f = 0.1 of the
    slots repeating 4 sequences, one seed each), every one trained by the real entry point `python -m
    repeatlab.train` in its own process (process start, torch import, data, evaluation curves, checkpoints, done.json:
    everything a grid point pays), first one at a time (K processes in a row, what the pipeline did per point), then
    all K as one pack (one process). runs/hour = K / wall seconds x 3600; ratio = packed / one at a time. Both on one
    thread (the demo's train.threads_per_rank), back to back, so the same load falls on both.
kernel: per model size and pack size P in 1, 2, 4, 8, 16, the train step alone (forward, backward, AdamW on the
    stacked parameters; P = 1 is the plain GPT), 16 sequences of 128 tokens per model, one thread on CPU (the demo's
    train.threads_per_rank); the variants take turns, one step each per round; tokens/s = P x 2048 / the fastest
    round's step time, MFU = tokens/s x 6N + 6 n_layer context n_embd (Kaplan) / the matmul ceiling measured in the
    same run (benchmarks.bench_train.matmul_ceiling). Also the same step through torch.func (stack_module_state +
    vmap over functional_call of one GPT) at P = 8: the implementation choice (batched matmuls,
    repeatlab.model.PackedGPT).
The machines are shared: read the ratios (measured seconds apart), not the absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.bench_train import machine, make_plan, matmul_ceiling, write_corpus, write_run

CONTEXT, BATCH = 128, 32  # the demo's budget: 4096-token batches
SHAPES = ((1, 32, 2), (1, 48, 3), (2, 64, 4), (3, 96, 6))  # (n_layer, n_embd, n_head): ~13k to ~0.33M parameters
PACK_SIZES = (1, 2, 4, 8, 16)


def _config(shape: tuple[int, int, int]):
    from repeatlab.model import GPTConfig, shape_name

    n_layer, n_embd, n_head = shape
    return GPTConfig(
        vocab_size=256,
        context=CONTEXT,
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        name=shape_name(n_layer, n_embd, n_head),
    )


# ----------------------------------------------------------------------------------------------------------------------
# Runs per hour: the real trainer, one process per point vs one per pack


def _train_processes(run_groups: list[list[str]]) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    started = time.perf_counter()
    for group in run_groups:
        proc = subprocess.run(
            [sys.executable, "-m", "repeatlab.train", "--run-url", *group], env=env, capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise RuntimeError(f"bench_pack: training failed: {proc.stderr[-2000:]}")
    return time.perf_counter() - started


def runs_per_hour(points: int, sequences: int, shape: tuple[int, int, int]) -> dict:
    cfg = _config(shape)
    with tempfile.TemporaryDirectory(prefix="bench-pack-") as tmp:
        corpus = write_corpus(os.path.join(tmp, "corpus"), windows=sequences + 64, context=CONTEXT)
        runs = {}
        for mode in ("alone", "packed"):
            runs[mode] = []
            for i in range(points):
                plan, repeated = make_plan(sequences + 64, sequences, CONTEXT, seed=i)
                url = write_run(os.path.join(tmp, mode, f"p{i}"), corpus, cfg, plan, repeated, BATCH, 1, False)
                _lighter_curves(url)
                runs[mode].append(url)
        alone = _train_processes([[u] for u in runs["alone"]])
        packed = _train_processes([runs["packed"]])
    return {
        "model": cfg.name,
        "n_params_nonembed": cfg.n_params_nonembed,
        "points": points,
        "tokens_per_point": sequences * CONTEXT,
        "alone_s": alone,
        "packed_s": packed,
        "runs_per_hour_alone": points / alone * 3600,
        "runs_per_hour_packed": points / packed * 3600,
        "ratio": alone / packed,
    }


def _lighter_curves(run_url: str) -> None:
    """The demo's curve and checkpoint settings (write_run asks for a row every step, for bench_train's timing), and
    the plan's real sha256 (the trainer checks it)."""
    import hashlib

    path = run_url.removeprefix("file://")
    with open(os.path.join(path, "point.json")) as fh:
        point = json.load(fh)
    point["train"].update(eval_points=10, eval_sequences=32, checkpoint_every=0, keep_checkpoints=2)
    with open(os.path.join(path, "point.json"), "w") as fh:
        json.dump(point, fh)
    with open(os.path.join(path, "plan.json")) as fh:
        plan_info = json.load(fh)
    for name in ("plan", "repeated"):
        with open(os.path.join(path, f"{name}.npy"), "rb") as fh:
            plan_info[f"{name}_sha256"] = hashlib.sha256(fh.read()).hexdigest()
    with open(os.path.join(path, "plan.json"), "w") as fh:
        json.dump(plan_info, fh)


# ----------------------------------------------------------------------------------------------------------------------
# The train step alone


def _step_fn(cfg, size: int, device: str, vmap: bool):
    import torch

    from repeatlab.model import GPT, PackedGPT

    models = []
    for seed in range(size):
        torch.manual_seed(seed)
        models.append(GPT(cfg).to(device))
    idx = torch.randint(0, 256, (size, BATCH // 2, CONTEXT + 1), device=device)
    x, y = idx[:, :, :-1], idx[:, :, 1:]
    if vmap:
        from torch.func import functional_call, stack_module_state

        params, buffers = stack_module_state(models)
        params = {k: torch.nn.Parameter(v) for k, v in params.items()}
        base = GPT(cfg).to(device)  # its own weights are replaced by the stacked ones in every call

        def loss_one(p, b, xi, yi):
            return functional_call(base, (p, b), (xi, yi))[1]

        batched = torch.func.vmap(loss_one)
        opt = torch.optim.AdamW(list(params.values()), lr=1e-3)
        forward = lambda: batched(params, buffers, x, y).sum()  # noqa: E731
    elif size == 1:
        model = models[0]
        opt = model.configure_optimizer(0.1, 1e-3, (0.9, 0.95), device)
        forward = lambda: model(x[0], y[0])[1]  # noqa: E731
    else:
        pack = PackedGPT.from_models(models).to(device)
        opt = pack.configure_optimizer(0.1, 1e-3, (0.9, 0.95), device)
        forward = lambda: pack(x, y)[1].sum()  # noqa: E731

    def step() -> None:
        forward().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()

    return step


def step_times(cfg, device: str, rounds: int, sizes=PACK_SIZES) -> dict:
    """{pack size or "vmap-8": [seconds per step, one per round]}: every variant once per round, in turn, so a
    burst of other work on the machine falls on all of them alike."""
    variants = {size: _step_fn(cfg, size, device, vmap=False) for size in sizes}
    variants["vmap-8"] = _step_fn(cfg, 8, device, vmap=True)
    for step in variants.values():
        step()  # warm-up
    times: dict = {name: [] for name in variants}
    for _ in range(rounds):
        for name, step in variants.items():
            started = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - started)
    return times


def kernel(device: str, rounds: int, ceiling: float, shapes=SHAPES, sizes=PACK_SIZES) -> list[dict]:
    """tokens/s from the fastest round (other work only ever slows a step down) and from the median round."""
    from repeatlab.model import training_flops_per_token

    rows = []
    for shape in shapes:
        cfg = _config(shape)
        flops = training_flops_per_token(cfg.n_params_nonembed, cfg.n_layer, cfg.n_embd, CONTEXT)
        times = step_times(cfg, device, rounds, sizes)
        base = (BATCH // 2) * CONTEXT / min(times[1])
        for name, seconds in times.items():
            size = 8 if name == "vmap-8" else name
            tok_s = size * (BATCH // 2) * CONTEXT / min(seconds)
            rows.append(
                {
                    "model": cfg.name,
                    "n_params_nonembed": cfg.n_params_nonembed,
                    "pack": size,
                    "impl": "vmap" if name == "vmap-8" else ("gpt" if size == 1 else "bmm"),
                    "step_s_best": min(seconds),
                    "step_s_median": statistics.median(seconds),
                    "tokens_per_s": tok_s,
                    "speedup_vs_pack_1": tok_s / base,
                    "mfu": tok_s * flops / ceiling,
                }
            )
            print(f"bench_pack: {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def run(
    quick: bool = False,
    device: str | None = None,
    threads: int | None = None,
    parts: tuple[str, ...] = ("kernel", "runs"),
) -> dict:
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    threads = threads or (1 if device == "cpu" else None)  # CPU: one core, the demo's train.threads_per_rank
    if threads:
        torch.set_num_threads(threads)
    ceiling = matmul_ceiling(device)
    rounds = 3 if quick else 5
    shapes = SHAPES[:2] if quick and device == "cpu" else SHAPES
    result = {
        "machine": machine(device),
        "device": device,
        "threads": threads,
        "matmul_ceiling": ceiling,
        "kernel": kernel(device, rounds, ceiling["flops"], shapes) if "kernel" in parts else [],
    }
    # the trainer end to end, one thread per process (the demo's setting); train.device auto picks a GPU if present
    if "runs" in parts:
        result["runs_per_hour"] = runs_per_hour(
            points=4 if quick else 8, sequences=512 if quick else 1024, shape=SHAPES[1]
        )
    ceiling_end = matmul_ceiling(device)
    result["matmul_ceiling_end"] = ceiling_end
    return result


def table(result: dict) -> str:
    lines = [f"{'model':<14}{'N':>9}{'pack':>6}{'impl':>7}{'tokens/s':>12}{'x pack 1':>10}{'MFU':>8}"]
    for r in result["kernel"]:
        lines.append(
            f"{r['model']:<14}{r['n_params_nonembed']:>9,}{r['pack']:>6}{r['impl']:>7}"
            f"{r['tokens_per_s']:>12,.0f}{r['speedup_vs_pack_1']:>10.2f}{r['mfu']:>8.1%}"
        )
    rph = result.get("runs_per_hour")
    if rph:
        lines.append(
            f"runs/hour ({rph['points']} points of {rph['model']}, {rph['tokens_per_point']:,} tokens each): "
            f"one at a time {rph['runs_per_hour_alone']:,.0f}, packed {rph['runs_per_hour_packed']:,.0f}, "
            f"ratio {rph['ratio']:.2f}x"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer steps, sizes and points")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    p.add_argument("--threads", type=int, default=None, help="torch threads for the kernel measurement")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--parts", default="kernel,runs", help="kernel, runs (runs per hour) or both (default)")
    args = p.parse_args(argv)
    result = run(quick=args.quick, device=args.device, threads=args.threads, parts=tuple(args.parts.split(",")))
    print(table(result), file=sys.stderr)
    text = json.dumps(result, indent=2)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
