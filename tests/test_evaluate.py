"""repeatlab/evaluate.py: the pure core on the hand-built induction model (known answers), and evaluate_run end to
end on a tiny synthetic run folder (corpus shards, point.json, checkpoints) written through repeatlab.storage."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from repeatlab import evaluate, storage
from repeatlab.config import BudgetConfig, EvalConfig, TrainConfig
from repeatlab.errors import CheckpointError, TrainError
from repeatlab.model import GPT, GPTConfig

sys.path.insert(0, os.path.dirname(__file__))
from test_scores import CONTEXT, VOCAB, build_induction_model

SMALL_EVAL = EvalConfig(
    eval_tokens=512, copy_repeats=11, prefix_samples=4, prefix_random_tokens=10, prefix_repeats=4, top_k_heads=3
)
EVAL_KEYS = {
    "point_id",
    "point",
    "step",
    "test_loss",
    "repeated_loss",
    "ood_loss",
    "copying",
    "icl_score",
    "icl_positions",
    "icl",
    "heads",
    "aggregates",
    "learning_curve",
    "warnings",
    "record_sha256",
}
AGGREGATE_KEYS = {"prefix_matching_max", "prefix_matching_top_mean", "previous_token_max", "copying_max"}


def text_like(n_tokens: int, seed: int, doc_len: int = 40) -> np.ndarray:
    """Random non-BOS tokens with an EOT (0) after every document, like a shard."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, VOCAB, size=n_tokens).astype(np.uint16)
    tokens[doc_len :: doc_len + 1] = 0
    return tokens


def periodic(n_tokens: int, period: int, seed: int) -> np.ndarray:
    """Text whose every window repeats a random block: induction makes late positions predictable."""
    rng = np.random.default_rng(seed)
    block = rng.permutation(np.arange(1, VOCAB))[:period]
    return np.resize(block, n_tokens).astype(np.uint16)


# ----------------------------------------------------------------------------------------------------------------------
# The pure core, known answers


def test_evaluate_model_on_the_induction_model():
    model = build_induction_model()
    model.train()  # evaluate_model must restore this
    before = {k: v.clone() for k, v in model.state_dict().items()}
    test = periodic(8 * CONTEXT + 1, period=20, seed=1)
    probe = np.concatenate(
        [np.concatenate([np.random.default_rng(i).permutation(np.arange(1, VOCAB))[:12], [0]]) for i in range(10)]
    ).astype(np.uint16)  # 10 documents of 12 distinct tokens
    counts = np.bincount(text_like(5000, seed=2), minlength=VOCAB)
    windows = np.stack([test[k * CONTEXT : k * CONTEXT + CONTEXT + 1] for k in range(3)]).astype(np.int64)
    out = evaluate.evaluate_model(model, test, probe, counts, SMALL_EVAL, CONTEXT, repeated_windows=windows, seed=3)

    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert set(out) == EVAL_KEYS - {"point_id", "point", "step", "learning_curve", "warnings", "record_sha256"}

    heads = out["heads"]
    assert np.array(heads["prefix_matching"]).shape == (2, 4)
    assert heads["prefix_matching"][1][0] > 0.9  # the induction head
    assert max(heads["prefix_matching"][0] + heads["prefix_matching"][1][1:]) < 0.2  # every other head
    assert heads["previous_token"][0][0] > 0.9  # the previous-token head
    assert heads["copying"][1][0] > 0.9
    agg = out["aggregates"]
    assert set(agg) == AGGREGATE_KEYS
    assert agg["prefix_matching_max"] == pytest.approx(heads["prefix_matching"][1][0])
    assert agg["previous_token_max"] == pytest.approx(heads["previous_token"][0][0])
    top = sorted(np.ravel(heads["prefix_matching"]), reverse=True)[:3]
    assert agg["prefix_matching_top_mean"] == pytest.approx(sum(top) / 3)

    copying = out["copying"]
    per_copy = copying["per_copy_loss"]
    assert len(per_copy) == 11
    assert per_copy[0] > 2.0  # the first reading of a paragraph is unpredictable
    assert max(per_copy[2:]) < 0.05 and copying["last_copy"] == pytest.approx(per_copy[-1])
    assert copying["mean_copies_2_to_last"] == pytest.approx(np.mean(per_copy[1:]))
    assert copying["mean_copies_2_to_last"] < per_copy[0] / 4

    assert out["icl_positions"] == [50 * CONTEXT // 512, 500 * CONTEXT // 512]
    assert out["icl_score"] < -1.0  # late positions are copied, early ones are not
    assert out["icl"]["score"] == out["icl_score"] and out["icl_score"] < -2 * out["icl"]["stderr"]
    assert out["repeated_loss"] is not None and out["ood_loss"] is None
    assert out["test_loss"] > 0 and np.isfinite(out["test_loss"])


def test_loss_windows_are_contiguous_and_capped():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=VOCAB, context=16, n_layer=1, n_head=2, n_embd=16)).eval()
    test = text_like(10 * 16 + 1, seed=0)
    cfg = dataclasses.replace(SMALL_EVAL, eval_tokens=48, prefix_random_tokens=3, prefix_repeats=2, copy_repeats=3)
    out = evaluate.evaluate_model(model, test, test, np.ones(VOCAB), cfg, 16)
    x = torch.from_numpy(test[: 3 * 16 + 1].astype(np.int64))
    windows = torch.stack([x[k * 16 : k * 16 + 17] for k in range(3)])  # 48 tokens = 3 windows
    with torch.no_grad():
        expected = model.per_token_loss(windows[:, :-1], windows[:, 1:])
    assert out["test_loss"] == pytest.approx(expected.mean().item(), rel=1e-6)
    # the ICL estimate: random windows, late band minus early band, mean and standard error over windows
    (e0, e1), (l0, l1) = evaluate.icl_bands(cfg, 16)
    offsets, _ = evaluate.icl_window_offsets(test, 16, cfg.icl_windows, l1 + 1)
    rows = torch.from_numpy(np.stack([test[o : o + 17] for o in offsets]).astype(np.int64))
    with torch.no_grad():
        loss = model.per_token_loss(rows[:, :-1], rows[:, 1:]).double()
    scores = (loss[:, l0 : l1 + 1].mean(1) - loss[:, e0 : e1 + 1].mean(1)).numpy()
    assert out["icl"]["windows"] == len(offsets) == min(cfg.icl_windows, len(test) - 16)
    assert out["icl_score"] == out["icl"]["score"] == pytest.approx(scores.mean(), rel=1e-6, abs=1e-9)
    assert out["icl"]["stderr"] == pytest.approx(scores.std(ddof=1) / np.sqrt(len(scores)), rel=1e-6)


def test_icl_estimate_reads_random_offsets_inside_documents_with_an_error_bar():
    """The old score read positions 12 and 125 of windows at multiples of the context: every run read the same
    bytes, without an error bar. Now: many random offsets, a band of positions, a standard error."""
    context = 128
    tokens = text_like(40_000, seed=3, doc_len=999)  # documents of 999 tokens
    cfg = dataclasses.replace(SMALL_EVAL, icl_windows=200)
    (e0, e1), (l0, l1) = evaluate.icl_bands(cfg, context)
    assert e0 < 12 < e1 and l0 < 125 <= l1 and e1 - e0 >= 2
    offsets, inside = evaluate.icl_window_offsets(tokens, context, 200, l1 + 1)
    assert len(offsets) == 200 == inside and len(set(offsets.tolist())) == 200
    assert (offsets % context != 0).mean() > 0.9  # not the fixed window grid
    for o in offsets:  # no document boundary before the late band
        assert not (tokens[o : o + l1 + 1] == 0).any()
    again, _ = evaluate.icl_window_offsets(tokens, context, 200, l1 + 1)
    assert np.array_equal(offsets, again)  # every run of a study reads the same windows
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=VOCAB, context=context, n_layer=1, n_head=2, n_embd=16)).eval()
    icl = evaluate.icl_estimate(model, tokens, cfg, context)
    assert icl["windows"] == 200 and icl["stderr"] > 0 and icl["early_band"] == [e0, e1]
    assert abs(icl["score"]) < 4 * icl["stderr"] + 0.05  # an untrained model has no ICL


def test_probe_paragraphs_skip_eot_and_document_heads():
    probe = np.array([5, 6, 7, 0, 8, 9, 10, 11, 12, 13, 14, 0, 1, 2], dtype=np.uint16)
    paras = evaluate.probe_paragraphs(probe, 3)
    # running text first ([11, 12, 13]: inside a document), then the documents' first chunks to fill up; [1, 2] is too
    # short and no paragraph crosses an EOT
    assert paras.tolist() == [[11, 12, 13], [5, 6, 7], [8, 9, 10]]
    assert not np.any(paras == 0)
    assert evaluate.probe_paragraphs(probe, 3, limit=1).tolist() == [[11, 12, 13]]
    assert evaluate.probe_paragraphs(probe, 20).shape == (0, 20)


def test_probe_paragraphs_spread_over_the_split_without_titles():
    """Two long documents whose first chunk is a "title" (token 99): with enough running text no title is used, and
    the chosen paragraphs come from both documents, first to last chunk, evenly spaced."""
    doc = lambda first: np.concatenate([[99] * 4, np.arange(first, first + 400)])  # noqa: E731
    probe = np.concatenate([doc(100), [0], doc(1100)]).astype(np.uint16)
    paras = evaluate.probe_paragraphs(probe, 4, limit=8)
    assert paras.shape == (8, 4) and not np.any(paras == 99) and not np.any(paras == 0)
    starts = [
        int(np.flatnonzero(np.all(np.lib.stride_tricks.sliding_window_view(probe, 4) == p, axis=1))[0]) for p in paras
    ]
    assert starts == sorted(starts) and starts[0] == 4 and starts[-1] == len(probe) - 4
    # evenly spaced in chunks: up to one chunk of rounding, plus the EOT and skipped title between the documents
    assert np.ptp(np.diff(starts)) <= 2 * 4 + 1


# ----------------------------------------------------------------------------------------------------------------------
# evaluate_run on a synthetic run folder


TINY = {"vocab_size": VOCAB, "context": CONTEXT, "n_layer": 2, "n_head": 2, "n_embd": 32, "name": "tiny"}


def write_corpus(root: str, ood: bool) -> str:
    url = storage.join(root, "corpora", "c0")
    splits = {"train": text_like(6000, 10), "test": text_like(1500, 11), "probe": text_like(600, 12)}
    if ood:
        splits["ood"] = periodic(700, 30, 13)
    info = {}
    for name, tokens in splits.items():
        data = tokens.astype(np.uint16).tobytes()
        storage.write_bytes(storage.join(url, f"{name}.bin"), data)
        info[name] = {
            "documents": int((tokens == 0).sum()),
            "tokens": len(tokens),
            "bytes": len(data),
            "file": f"{name}.bin",
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    storage.write_json(
        storage.join(url, "manifest.json"),
        {
            "corpus_id": "c0",
            "format_version": 1,
            "source": {"url": "synthetic", "format": "text", "files": []},
            "tokenizer": {"kind": "byte", "vocab_size": VOCAB, "eot_id": 0, "file": None},
            "dtype": "uint16",
            "documents_read": 0,
            "duplicates_dropped": 0,
            "empty_dropped": 0,
            "splits": info,
            "config": {},
            "created_by": "test",
        },
    )
    return url


def save_checkpoint(run_url: str, step: int, model: GPT, complete: bool = True) -> None:
    folder = evaluate.checkpoint_url(run_url, step)
    with storage.atomic_local_file(storage.join(folder, "model.pt")) as tmp:
        torch.save(model.state_dict(), tmp)
    if complete:
        storage.write_json(storage.join(folder, "state.json"), {"step": step})


def make_run(tmp_path, fraction=0.5, ood=False, model_cfg=None) -> str:
    root = "file://" + str(tmp_path)
    corpus_url = write_corpus(root, ood)
    run_url = storage.join(root, "runs", "p0")
    cfg = GPTConfig(**(model_cfg or TINY))
    point = {
        "point_id": "p0",
        "corpus_id": "c0",
        "corpus_url": corpus_url,
        "model": cfg.to_dict(),
        "fraction": fraction,
        "epochs": 4.0 if fraction else None,
        "seed": 0,
        "control": False,
        "budget": dataclasses.asdict(BudgetConfig(total_tokens=4096, context=CONTEXT, batch_tokens=256)),
        "train": dataclasses.asdict(TrainConfig()),
        "eval": dataclasses.asdict(SMALL_EVAL),
    }
    storage.write_json(storage.join(run_url, "point.json"), point)
    repeated = np.array([0, 3 * CONTEXT, 7 * CONTEXT] if fraction else [], dtype=np.int64)
    with storage.atomic_local_file(storage.join(run_url, "repeated.npy")) as tmp:
        np.save(tmp + ".npy", repeated)
        os.replace(tmp + ".npy", tmp)
    torch.manual_seed(0)
    save_checkpoint(run_url, 5, GPT(cfg))
    save_checkpoint(run_url, 10, GPT(cfg))
    save_checkpoint(run_url, 20, GPT(cfg), complete=False)  # no state.json: ignored
    rows = [
        {
            "step": s,
            "tokens": s * 256,
            "lr": 1e-3,
            "train_loss": 4.0,
            "test_loss": 4.1,
            "repeated_loss": 3.9,
            "tokens_per_s": 1e4,
            "elapsed_s": 0.1 * s,
        }
        for s in (5, 10)
    ]
    storage.write_text(storage.join(run_url, "train.jsonl"), "".join(json.dumps(r) + "\n" for r in rows))
    return run_url


@pytest.mark.parametrize("fraction, ood", [(0.5, False), (0.0, True)])
def test_evaluate_run_writes_eval_json(tmp_path, fraction, ood, caplog):
    run_url = make_run(tmp_path, fraction=fraction, ood=ood)
    caplog.set_level(logging.INFO, logger="repeatlab")
    result = evaluate.evaluate_run(run_url, device="cpu")
    lines = [r.getMessage() for r in caplog.records if r.name == evaluate.__name__ and r.levelno == logging.INFO]
    written = storage.read_json(storage.join(run_url, "eval.json"))
    assert written == json.loads(json.dumps(result))
    assert set(written) == EVAL_KEYS
    assert written["point_id"] == "p0" and written["point"]["model"]["name"] == "tiny" and written["step"] == 10
    assert set(written["aggregates"]) == AGGREGATE_KEYS
    assert np.array(written["heads"]["prefix_matching"]).shape == (2, 2)
    assert np.array(written["heads"]["previous_token"]).shape == (2, 2)
    assert np.array(written["heads"]["copying"]).shape == (2, 2)
    assert len(written["copying"]["per_copy_loss"]) == 11
    assert written["icl_positions"] == [6, 62]
    assert [r["step"] for r in written["learning_curve"]] == [5, 10]
    # a random model: losses near log(vocab) and chance-level scores
    assert abs(written["test_loss"] - np.log(VOCAB)) < 0.3
    assert written["aggregates"]["prefix_matching_max"] < 0.2
    if fraction:
        assert abs(written["repeated_loss"] - np.log(VOCAB)) < 0.3
    else:
        assert written["repeated_loss"] is None
    assert (written["ood_loss"] is not None) == ood
    (line,) = lines
    headline = json.loads(line)
    assert headline["step"] == 10 and headline["test_loss"] == pytest.approx(written["test_loss"])
    assert headline["prefix_matching_max"] == pytest.approx(written["aggregates"]["prefix_matching_max"])


def test_evaluate_cli_earlier_checkpoint_and_missing_step(tmp_path, capsys):
    from repeatlab.cli import main

    run_url = make_run(tmp_path)
    assert main(["evaluate", "--run-url", run_url, "--checkpoint", "5", "--device", "cpu"]) == 0
    assert storage.exists(storage.join(run_url, "eval-step-0000005.json"))
    assert not storage.exists(storage.join(run_url, "eval.json"))  # the final eval is not overwritten
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 5
    assert main(["evaluate", "--run-url", run_url, "--checkpoint", "20"]) == 2  # incomplete checkpoint
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no complete checkpoint at step 20" in err and "5, 10" in err


def test_checkpoint_that_does_not_match_the_config(tmp_path, capsys):
    from repeatlab.cli import main

    run_url = make_run(tmp_path)
    save_checkpoint(run_url, 30, GPT(GPTConfig(**{**TINY, "n_embd": 48})))
    with pytest.raises(
        CheckpointError,
        match=r"^checkpoint .*step-0000030/model.pt does not match the config: .*"
        r"lm_head.weight has shape \[64, 48\], the config needs \[64, 32\]",
    ):
        evaluate.evaluate_run(run_url, device="cpu")
    save_checkpoint(run_url, 40, GPT(GPTConfig(**{**TINY, "n_layer": 1})))
    assert main(["evaluate", "--run-url", run_url]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not match the config: missing transformer.h.1." in err
    assert not storage.exists(storage.join(run_url, "eval.json"))


def test_no_checkpoint_is_a_clear_error(tmp_path):
    run_url = make_run(tmp_path)
    storage.remove(storage.join(run_url, "checkpoints"), recursive=True)
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        evaluate.evaluate_run(run_url, device="cpu")


def test_evaluate_under_torchrun_matches_one_process(tmp_path):
    run_url = make_run(tmp_path)
    single = evaluate.evaluate_run(run_url, device="cpu")
    storage.remove(storage.join(run_url, "eval.json"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "repeatlab.evaluate",
            "--run-url",
            run_url,
            "--device",
            "cpu",
        ],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    distributed = storage.read_json(storage.join(run_url, "eval.json"))
    assert len([ln for ln in proc.stdout.splitlines() if ln.startswith("{")]) == 1  # rank 0 logs once
    assert json.loads(proc.stdout.strip().splitlines()[-1])["world_size"] == 2
    for key in ("test_loss", "repeated_loss", "icl_score"):
        assert distributed[key] == pytest.approx(single[key], rel=1e-5)
    assert np.allclose(distributed["copying"]["per_copy_loss"], single["copying"]["per_copy_loss"], rtol=1e-5)
    for name in ("prefix_matching", "previous_token", "copying"):
        assert np.allclose(distributed["heads"][name], single["heads"][name], rtol=1e-5, atol=1e-7)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_for_without_cuda_is_a_one_line_error(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(TrainError, match=r"^device: 'cuda' is not allowed here: no CUDA device is available$"):
        evaluate._dist_env("cuda")
    env = evaluate._dist_env("cpu")  # one process: no process group is made, so there is nothing to tear down
    assert (env.rank, env.world, env.device.type, env.owns_group) == (0, 1, "cpu", False)
