"""Can these 2-layer models learn to copy at all? A plain training loop on a pure copy task (docs/results.md).

    python docs/results/induction/copy_task.py --attention-only --lr 1e-2 --steps 2000

Every sequence is one random lowercase string of L = 10-29 letters repeated to fill the context, so after the first
copy the next letter is fully predictable by copying, and by nothing else. Prints the loss on the first copy (stays
at ~ln 26 = 3.26), on the later copies (falls towards 0 once an induction head has formed), and the best head's
prefix-matching score on the probe that `repeatlab evaluate` uses (25 random letters x 4; uniform attention scores
~0.03), so the probe can be seen to detect an induction head that training grew.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from repeatlab import scores
from repeatlab.evaluate import head_scores
from repeatlab.model import GPT, GPTConfig


def copy_batch(sequences: int, context: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, int]:
    length = int(torch.randint(10, 30, (1,), generator=generator))
    string = torch.randint(ord("a"), ord("z") + 1, (sequences, length), generator=generator)
    tokens = string.repeat(1, (context + 1) // length + 1)[:, : context + 1]  # (B, L) -> (B, context + 1)
    return tokens[:, :-1], tokens[:, 1:], length


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attention-only", action="store_true")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--batch", type=int, default=32, help="sequences per step")
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = GPT(
        GPTConfig(
            n_layer=2, n_embd=64, n_head=4, vocab_size=256, context=args.context, attention_only=args.attention_only
        )
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    letter_counts = torch.zeros(256)
    letter_counts[ord("a") : ord("z") + 1] = 1.0  # the probe draws from the tokens that training saw
    probe = scores.make_prefix_matching_batch(letter_counts, 25, 4, 10, generator=torch.Generator().manual_seed(1))
    start = time.time()
    for step in range(args.steps + 1):
        if step % max(1, args.steps // 10) == 0:
            with torch.no_grad():
                x, y, length = copy_batch(64, args.context, generator)
                logits, _ = model(x, y)
                loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view_as(y)
                model.eval()
                prefix_matching = head_scores(model, probe, x)["prefix_matching"]
                model.train()
            print(
                f"step {step}: first copy {loss[:, : length - 1].mean():.3f}, later copies "
                f"{loss[:, 2 * length :].mean():.3f}, best prefix-matching head {scores.head_max(prefix_matching):.3f} "
                f"({args.batch * args.context * step / 1e6:.1f}M tokens, {time.time() - start:.0f} s)",
                flush=True,
            )
        x, y, _ = copy_batch(args.batch, args.context, generator)
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


if __name__ == "__main__":
    main()
