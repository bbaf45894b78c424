"""CUDA paths, run by `make gpu-check` on a machine with a GPU (skipped elsewhere): the model under bf16 autocast and
torch.compile against fp32 eager on the same weights, and a few optimizer steps on the GPU that lower the loss."""

from __future__ import annotations

import pytest
import torch

from repeatlab.model import GPT, GPTConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (make gpu-check)")

CONFIG = GPTConfig(vocab_size=256, context=128, n_layer=2, n_head=4, n_embd=64)


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, CONFIG.vocab_size, (8, CONFIG.context + 1), generator=g)
    return tokens[:, :-1].cuda(), tokens[:, 1:].cuda()


def model() -> GPT:
    torch.manual_seed(0)
    return GPT(CONFIG).cuda()


def test_bf16_autocast_loss_is_close_to_fp32():
    m, (x, y) = model(), batch()
    with torch.no_grad():
        _, fp32 = m(x, y)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, bf16 = m(x, y)
    # bf16 keeps 8 mantissa bits: ~0.4% relative per op; the loss of an untrained model is ~log(256) = 5.5 nats
    assert abs(bf16.float().item() - fp32.item()) < 0.05, (bf16.item(), fp32.item())


def test_compiled_model_matches_eager():
    m, (x, y) = model(), batch()
    with torch.no_grad():
        _, eager = m(x, y)
        _, compiled = torch.compile(m)(x, y)
    assert abs(compiled.item() - eager.item()) < 1e-3, (compiled.item(), eager.item())


def test_training_steps_on_the_gpu_lower_the_loss():
    m, (x, y) = model(), batch()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3, fused=True)
    losses = []
    for _ in range(20):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = m(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses
