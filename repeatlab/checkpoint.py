"""Checkpoints of one run: their layout, writing one atomically, and finding the latest complete one.

`{run}/checkpoints/step-XXXXXXX/` holds model.pt (the model's full state dict, GPT FQN keys), optim.pt (the full
optimizer state dict in torch.distributed.checkpoint.state_dict's format: the same for DDP, FSDP and a packed point),
rng.pt (rank 0's torch RNG states), exposures.npy (per repeated sequence, exposures so far summed over ranks) and
state.json LAST (step, plan cursor, config hash, sha256 of every file). Without a valid state.json a checkpoint is
incomplete and skipped; a file whose hash does not match or that does not load is skipped with a warning in favour of
the previous checkpoint. A packed trainer writes one such checkpoint per point, in the point's own run folder, so a
point can resume alone or in any other pack.
"""

from __future__ import annotations

import hashlib
import io
import logging
from typing import Any

import numpy as np

from repeatlab import layout, storage
from repeatlab.errors import CheckpointError, StorageError

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT_VERSION = 1
# The checkpoint's files (layout.CHECKPOINT_FILES) and their keys in what find_checkpoint returns
CHECKPOINT_FILES = (
    (layout.MODEL_FILE, "model"),
    (layout.OPTIM_FILE, "optim"),
    (layout.RNG_FILE, "rng"),
    (layout.EXPOSURES_FILE, "exposures"),
)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _torch_load_bytes(data: bytes) -> Any:
    import torch

    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _load_files(url: str, state: dict, n_repeated: int) -> dict[str, Any]:
    """The checkpoint's files, each checked against its sha256 in state.json; raises on anything unreadable."""
    loaded: dict[str, Any] = {"step": int(state["step"]), "state": state, "url": url}
    for name, key in CHECKPOINT_FILES:
        data = storage.read_bytes(storage.join(url, name))
        expected = (state.get("files") or {}).get(name)
        if expected and sha256(data) != expected:
            raise CheckpointError(f"{name} does not match the sha256 in state.json (truncated or corrupt)")
        if name.endswith(".npy"):
            loaded[key] = np.load(io.BytesIO(data), allow_pickle=False).astype(np.int64)
        else:
            loaded[key] = _torch_load_bytes(data)
    if len(loaded["exposures"]) != n_repeated:
        raise CheckpointError("exposures.npy does not match repeated.npy")
    return loaded


def _read_state(url: str) -> dict | None:
    state_url = storage.join(url, layout.CHECKPOINT_STATE)
    if not storage.exists(state_url):
        log.info("train: skipping incomplete checkpoint %s (no state.json)", url)
        return None
    try:
        return storage.read_json(state_url)
    except StorageError as exc:
        log.warning("train: warning: skipping checkpoint %s: %s", url, exc)
        return None


def find_checkpoint(run_url: str, point_id: str | None, config_hash: str, n_repeated: int) -> dict | None:
    """The latest complete, readable checkpoint of this config: {"step", "state", "model", "optim", "rng",
    "exposures", "url"}; None when there is none. Another config's checkpoint raises CheckpointError."""
    run = layout.Run(run_url)
    for step in reversed(run.checkpoint_steps()):
        url = run.checkpoint(step)
        state = _read_state(url)
        if state is None:
            continue
        if state.get("point_id") != point_id or state.get("config_hash") != config_hash:
            raise CheckpointError(
                f"checkpoint {url} belongs to another config (point {state.get('point_id')}, "
                f"config hash {state.get('config_hash')}; this point is "
                f"{point_id}, {config_hash}): move it away or use a new run folder"
            )
        try:
            return _load_files(url, state, n_repeated)
        except Exception as exc:  # a corrupt file of any kind: fall back to the previous checkpoint
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.warning("train: warning: skipping checkpoint %s: %s; trying the previous one", url, msg)
    return None


def write_torch(url: str, obj: Any) -> str:
    """torch.save to url atomically; returns the sha256 of what was written."""
    import torch

    with storage.atomic_local_file(url) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as exc:  # a full disk: "[enforce fail at inline_container.cc:...] unexpected pos ..."
            raise storage.write_failed(url, exc, tmp) from None
        with open(tmp, "rb") as fh:
            return sha256(fh.read())


def _write_file(url: str, data: bytes) -> str:
    storage.write_bytes(url, data)
    return sha256(data)


def save_checkpoint(
    run_url: str, step: int, model_sd: dict, optim_sd: dict, rng: dict, exposures: np.ndarray, state: dict, keep: int
) -> str:
    """Rank 0: write one checkpoint, state.json last, then prune to the last `keep` complete checkpoints."""
    run = layout.Run(run_url)
    url = run.checkpoint(step)
    storage.remove(url, recursive=True)  # a partial leftover of an earlier attempt at this step
    buf = io.BytesIO()
    np.save(buf, np.asarray(exposures, dtype=np.int64), allow_pickle=False)
    files = {
        layout.MODEL_FILE: write_torch(run.checkpoint_file(step, layout.MODEL_FILE), model_sd),
        layout.OPTIM_FILE: write_torch(run.checkpoint_file(step, layout.OPTIM_FILE), optim_sd),
        layout.RNG_FILE: write_torch(run.checkpoint_file(step, layout.RNG_FILE), rng),
        layout.EXPOSURES_FILE: _write_file(run.checkpoint_file(step, layout.EXPOSURES_FILE), buf.getvalue()),
    }
    storage.write_json(run.checkpoint_state(step), {**state, "files": files})
    keep_steps = set(run.checkpoint_steps(complete_only=True)[-max(1, keep) :])
    for s in run.checkpoint_steps():
        if s not in keep_steps and s < step:
            storage.remove(run.checkpoint(s), recursive=True)
    return url
