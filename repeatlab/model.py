"""The GPT of the study (and its attention-only variant), and the one-knob size family it is drawn from.

Read top-down: config, attention, MLP, block, model, then the family. A decoder-only transformer in the GPT-2 layout
(pre-LayerNorm, learned positions, GELU MLP, input and output embeddings tied, no dropout: the paper trains every run on
unique-or-counted tokens, so no regularizer muddies the effect of repetition). Parameter names are GPT-2's
(transformer.wte, transformer.h.0.attn.c_attn, ...), so weights read like any nanoGPT checkpoint and analysis code can
hand-set them through plain nn.Linear / nn.Embedding modules.

Two attention paths give the same numbers: `forward` uses the fused `scaled_dot_product_attention` for training;
`forward_with_attention` computes the masked softmax explicitly and returns every layer's pattern for the head scores.

Sizes follow the Kaplan convention: N = non-embedding parameters (everything but wte and wpe). `repeatlab family`
lists the family; `resolve_model` turns a study's ModelSpec into a GPTConfig.
"""

from __future__ import annotations

import inspect
import math
import numbers
import re
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from repeatlab.errors import ConfigError

MAX_CONTEXT = 1 << 17  # the study config's limit on budget.context
MAX_VOCAB = 1 << 20  # the study config's limit on corpus.vocab_size


# ----------------------------------------------------------------------------------------------------------------------
# Config


def _require_int(value, path: str, minimum: int, maximum: int | None = None) -> int:
    """An integer (not a bool) in [minimum, maximum]; numpy integers are accepted and made plain ints."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    ok = ok and value >= minimum and (maximum is None or value <= maximum)
    if not ok:
        allowed = f"an integer >= {minimum}" if maximum is None else f"an integer in [{minimum}, {maximum}]"
        raise ConfigError(f"{path}: {value!r} is not allowed: {allowed}")
    return int(value)


@dataclass
class GPTConfig:
    vocab_size: int
    context: int  # the longest sequence the model takes (learned positions)
    n_layer: int
    n_head: int
    n_embd: int
    mlp_ratio: int = 4  # MLP hidden width = mlp_ratio * n_embd
    attention_only: bool = False  # blocks without MLP (and without ln_2): the paper's 2-layer induction-head models
    name: str = ""

    def __post_init__(self):
        self.validate()

    def validate(self, where: str = "model") -> GPTConfig:
        """Check every field; raises ConfigError naming `{where}.{field}`. Returns self for chaining."""
        self.vocab_size = _require_int(self.vocab_size, f"{where}.vocab_size", 2, MAX_VOCAB)
        self.context = _require_int(self.context, f"{where}.context", 1, MAX_CONTEXT)
        self.n_layer = _require_int(self.n_layer, f"{where}.n_layer", 1)
        self.n_head = _require_int(self.n_head, f"{where}.n_head", 1)
        self.n_embd = _require_int(self.n_embd, f"{where}.n_embd", 1)
        self.mlp_ratio = _require_int(self.mlp_ratio, f"{where}.mlp_ratio", 1)
        if self.n_embd % self.n_head != 0:
            raise ConfigError(
                f"{where}.n_embd: {self.n_embd!r} is not allowed: "
                f"a positive multiple of n_head ({self.n_head}), so every head has the same width"
            )
        if not isinstance(self.attention_only, bool):
            raise ConfigError(f"{where}.attention_only: {self.attention_only!r} is not allowed: true or false")
        if not isinstance(self.name, str):
            raise ConfigError(f"{where}.name: {self.name!r} is not allowed: a string")
        return self

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def n_params_nonembed(self) -> int:
        return non_embedding_params(self.n_layer, self.n_embd, self.mlp_ratio, self.attention_only)

    @property
    def n_params_total(self) -> int:
        # the tied wte/lm_head matrix counted once, plus the learned positions (the Chinchilla total)
        return self.n_params_nonembed + (self.vocab_size + self.context) * self.n_embd

    def to_dict(self) -> dict:
        """The `model` object of point.json: the config plus its parameter counts."""
        return {**asdict(self), "n_params_nonembed": self.n_params_nonembed, "n_params_total": self.n_params_total}

    @classmethod
    def from_dict(cls, data: dict) -> GPTConfig:
        """Inverse of to_dict: derived counts are ignored, unknown keys raise ConfigError."""
        fields = set(inspect.signature(cls).parameters)
        unknown = sorted(set(data) - fields - {"n_params_nonembed", "n_params_total"})
        if unknown:
            raise ConfigError(f"model.{unknown[0]}: unknown field; allowed fields here: {', '.join(sorted(fields))}")
        missing = sorted(k for k in ("vocab_size", "context", "n_layer", "n_head", "n_embd") if k not in data)
        if missing:
            raise ConfigError(
                f"model.{missing[0]}: missing; a model needs vocab_size, context, n_layer, n_head, n_embd"
            )
        return cls(**{k: v for k, v in data.items() if k in fields})


# ----------------------------------------------------------------------------------------------------------------------
# Attention, MLP, block


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.head_dim = config.head_dim
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # query, key, value for all heads at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)

    def forward(self, x: torch.Tensor, return_pattern: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns (output, pattern). pattern is [B, n_head, T(query), T(key)] softmax probabilities when asked
        for (the explicit path), else None (the fused path, which never materializes it)."""
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, T, C) -> (B, nh, T, hd)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        if return_pattern:
            scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))  # (B, nh, T, T)
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            # float32 softmax even under bf16 autocast: analysis reads these probabilities directly
            pattern = F.softmax(scores.float().masked_fill(~causal, float("-inf")), dim=-1)
            y = pattern.to(v.dtype) @ v  # (B, nh, T, T) x (B, nh, T, hd) -> (B, nh, T, hd)
        else:
            pattern = None
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hd)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again: (B, T, C)
        return self.c_proj(y), pattern


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.mlp_ratio * config.n_embd)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's GELU
        self.c_proj = nn.Linear(config.mlp_ratio * config.n_embd, config.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    """Pre-LayerNorm residual block; an attention-only block has no ln_2 and no mlp at all (not zeroed: absent)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        if not config.attention_only:
            self.ln_2 = nn.LayerNorm(config.n_embd)
            self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, return_pattern: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        attn_out, pattern = self.attn(self.ln_1(x), return_pattern)
        x = x + attn_out
        if hasattr(self, "mlp"):
            x = x + self.mlp(self.ln_2(x))
        return x, pattern


# ----------------------------------------------------------------------------------------------------------------------
# Model


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(config.vocab_size, config.n_embd),
                "wpe": nn.Embedding(config.context, config.n_embd),
                "h": nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                "ln_f": nn.LayerNorm(config.n_embd),
            }
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # type: ignore[union-attr,assignment]  # tied: one matrix reads tokens in and writes logits out

        # GPT-2 init: N(0, 0.02) everywhere, biases zero, and every projection that writes into the residual stream
        # scaled by 1/sqrt(number of residual branches) so the stream's variance does not grow with depth. GPT-2 has
        # two branches per block (2 * n_layer); an attention-only block has one (n_layer).
        self.apply(self._init_weights)
        residual_branches = config.n_layer * (1 if config.attention_only else 2)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(residual_branches))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Counted from the modules. non_embedding=True: Kaplan's N, everything except wte and wpe (the tied lm_head
        is wte, so it is excluded too). False: the total, the tied matrix counted once (Chinchilla's N)."""
        total = sum(p.numel() for p in self.parameters())  # parameters() yields the tied matrix once
        if non_embedding:
            total -= self.transformer.wte.weight.numel() + self.transformer.wpe.weight.numel()  # type: ignore[union-attr,operator]
        return total

    def flops_per_token(self) -> int:
        """Training FLOPs per token (forward + backward), Kaplan et al. 2020 Table 1:
            C = 6 * N + 6 * n_layer * context * n_embd
        N = non-embedding parameters (2N multiply-adds forward, x3 for forward and backward); the second term is the
        attention scores and weighted sum, 2 * n_layer * n_ctx * d_attn forward (d_attn = n_embd here), x3. Like
        Kaplan it leaves out the embedding lookups and the unembedding matmul."""
        return training_flops_per_token(
            self.num_params(True), self.config.n_layer, self.config.n_embd, self.config.context
        )

    def _check_length(self, idx: torch.Tensor) -> None:
        if idx.dim() != 2:
            raise ConfigError(f"idx: shape {tuple(idx.shape)} is not allowed: a [batch, time] tensor of token ids")
        if idx.size(1) > self.config.context:
            raise ConfigError(
                f"idx: sequence length {idx.size(1)} is not allowed: "
                f"at most the model's context ({self.config.context})"
            )

    def _embed(self, idx: torch.Tensor) -> torch.Tensor:
        self._check_length(idx)
        pos = torch.arange(idx.size(1), dtype=torch.long, device=idx.device)  # (T,)
        return self.transformer.wte(idx) + self.transformer.wpe(pos)  # type: ignore[operator]  # (B, T, C) + (T, C) -> (B, T, C)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """idx, targets: [B, T] token ids. Returns (logits [B, T, vocab], mean cross-entropy or None).
        A target of -1 is ignored."""
        x = self._embed(idx)
        for block in self.transformer.h:  # type: ignore[union-attr]
            x, _ = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))  # type: ignore[operator]
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def per_token_loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy per position, [B, T], no reduction (0 where the target is -1)."""
        logits, _ = self(idx)
        B, T, V = logits.shape
        loss = F.cross_entropy(logits.view(B * T, V).float(), targets.reshape(B * T), ignore_index=-1, reduction="none")
        return loss.view(B, T)

    def forward_with_attention(self, idx: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The explicit masked-softmax path, for analysis. Returns (logits [B, T, vocab], patterns), patterns one
        [B, n_head, T(query), T(key)] tensor of attention probabilities per layer; same logits as forward()."""
        x = self._embed(idx)
        patterns = []
        for block in self.transformer.h:  # type: ignore[union-attr]
            x, pattern = block(x, return_pattern=True)
            patterns.append(pattern)
        return self.lm_head(self.transformer.ln_f(x)), patterns  # type: ignore[operator]

    def configure_optimizer(
        self, weight_decay: float, learning_rate: float, betas: tuple[float, float], device_type: str
    ) -> torch.optim.AdamW:
        """AdamW as in nanoGPT: weight decay on every parameter of 2 or more dimensions (the Linear weights and the
        tied wte, and wpe), none on biases and LayerNorm; the fused kernel on CUDA."""
        params = [p for p in self.parameters() if p.requires_grad]  # the tied matrix once
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        fused = device_type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters
        extra = {"fused": True} if fused else {}
        return torch.optim.AdamW(groups, lr=learning_rate, betas=(float(betas[0]), float(betas[1])), **extra)


# ----------------------------------------------------------------------------------------------------------------------
# A pack: P models of one shape trained as one program


def _param_key(name: str) -> str:
    """A parameter name usable as a module attribute ("transformer.h.0.ln_1.weight" -> "transformer__h__0__...")."""
    return name.replace(".", "__")


class PackedGPT(nn.Module):
    """P GPTs of one config with every parameter stacked along a leading model axis ([P, ...]), trained as one program:
    each layer is one batched matmul (torch.baddbmm / bmm) over the P models instead of P small ones.

    The models never mix: model p's output depends only on its own slice of every parameter and its own batch, so the
    gradient of sum_p loss_p with respect to slice p is model p's own gradient. Parameter names are GPT's with dots as
    "__"; `point_state_dict(p)` gives model p's slice under GPT's FQNs (a plain GPT loads it), and `from_models`
    stacks P initialized GPTs, so each keeps the initial weights of its own seed. (repeatlab.train measured this
    against torch.func stack_module_state + vmap: docs/benchmarks.md.)
    """

    def __init__(self, config: GPTConfig, size: int):
        super().__init__()
        config.validate()
        self.config = config
        self.size = int(size)
        template = GPT(config)
        self.names = [n for n, _ in template.named_parameters()]  # the tied wte / lm_head matrix once
        self.state_keys = list(template.state_dict().keys())  # lm_head.weight too: what a GPT checkpoint holds
        for name, p in template.named_parameters():
            self.register_parameter(
                _param_key(name), nn.Parameter(p.detach().unsqueeze(0).repeat(self.size, *([1] * p.dim())))
            )

    @classmethod
    def from_models(cls, models: list[GPT]) -> PackedGPT:
        packed = cls(models[0].config, len(models))
        with torch.no_grad():
            for p, model in enumerate(models):
                packed.load_point(p, model.state_dict())
        return packed

    def stacked(self, name: str) -> nn.Parameter:
        return getattr(self, _param_key(name))

    def _alias(self, key: str) -> str:
        return "transformer.wte.weight" if key == "lm_head.weight" else key

    def point_state_dict(self, p: int) -> dict[str, torch.Tensor]:
        """Model p's weights as a GPT state dict (CPU copies, GPT's FQN keys and order)."""
        return {k: self.stacked(self._alias(k)).detach()[p].to("cpu", copy=True) for k in self.state_keys}

    def load_point(self, p: int, state_dict: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name in self.names:
                self.stacked(name)[p].copy_(state_dict[name])

    # The batched layers. x: [P, N, C] (N = batch x time), weights [P, out, in], biases [P, out].

    def _linear(self, x: torch.Tensor, prefix: str) -> torch.Tensor:
        w, b = self.stacked(prefix + ".weight"), self.stacked(prefix + ".bias")
        return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))  # [P, N, in] x [P, in, out] -> [P, N, out]

    def _layer_norm(self, x: torch.Tensor, prefix: str) -> torch.Tensor:
        w, b = self.stacked(prefix + ".weight"), self.stacked(prefix + ".bias")
        return F.layer_norm(x, (x.size(-1),)) * w.unsqueeze(1) + b.unsqueeze(1)

    def _attention(self, x: torch.Tensor, prefix: str, B: int, T: int) -> torch.Tensor:
        P, C, nh, hd = self.size, self.config.n_embd, self.config.n_head, self.config.head_dim
        q, k, v = self._linear(x, prefix + ".c_attn").view(P * B, T, 3 * C).split(C, dim=2)
        q = q.reshape(P * B, T, nh, hd).transpose(1, 2)  # (P*B, T, C) -> (P*B, nh, T, hd)
        k = k.reshape(P * B, T, nh, hd).transpose(1, 2)
        v = v.reshape(P * B, T, nh, hd).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (P*B, nh, T, hd)
        y = y.transpose(1, 2).reshape(P, B * T, C)  # heads side by side again
        return self._linear(y, prefix + ".c_proj")

    def _mlp(self, x: torch.Tensor, prefix: str) -> torch.Tensor:
        h = F.gelu(self._linear(x, prefix + ".c_fc"), approximate="tanh")
        return self._linear(h, prefix + ".c_proj")

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx, targets: [P, B, T] token ids, model p reading idx[p]. Returns (logits [P, B, T, vocab], per-model
        mean cross-entropy [P] or None)."""
        P, B, T = idx.shape
        if P != self.size or T > self.config.context:
            raise ConfigError(
                f"idx: shape {tuple(idx.shape)} is not allowed: [{self.size}, batch, time <= {self.config.context}]"
            )
        wte, V = self.stacked("transformer.wte.weight"), self.config.vocab_size
        flat_ids = idx + torch.arange(P, device=idx.device).view(P, 1, 1) * V  # model p's rows of the stacked table
        tok = F.embedding(flat_ids, wte.reshape(P * V, -1))  # (P, B, T, C)
        x = (tok + self.stacked("transformer.wpe.weight")[:, None, :T]).reshape(P, B * T, -1)
        for i in range(self.config.n_layer):
            h = f"transformer.h.{i}"
            x = x + self._attention(self._layer_norm(x, h + ".ln_1"), h + ".attn", B, T)
            if not self.config.attention_only:
                x = x + self._mlp(self._layer_norm(x, h + ".ln_2"), h + ".mlp")
        logits = torch.bmm(self._layer_norm(x, "transformer.ln_f"), wte.transpose(1, 2))  # tied: (P, B*T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(P * B * T, V), targets.reshape(-1), reduction="none")
            loss = loss.view(P, B * T).mean(dim=1)
        return logits.view(P, B, T, V), loss

    def configure_optimizer(
        self, weight_decay: float, learning_rate: float, betas: tuple[float, float], device_type: str
    ) -> torch.optim.AdamW:
        """GPT.configure_optimizer over the stacked tensors: decay where the unstacked parameter has >= 2 dimensions.
        AdamW is element-wise, so one step over [P, ...] is P independent steps, in one (fused on CUDA) call."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 3], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 3], "weight_decay": 0.0},
        ]
        fused = device_type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters
        extra = {"fused": True} if fused else {}
        return torch.optim.AdamW(groups, lr=learning_rate, betas=(float(betas[0]), float(betas[1])), **extra)

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Per model, torch.nn.utils.clip_grad_norm_: model p's gradient scaled by min(1, max_norm / (||g_p|| + 1e-6)),
        ||g_p|| the 2-norm over all of model p's gradients. Returns the P norms."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        sq = torch.stack([g.detach().reshape(self.size, -1).float().pow(2).sum(dim=1) for g in grads]).sum(dim=0)
        norms = sq.sqrt()
        coef = torch.clamp(max_norm / (norms + 1e-6), max=1.0)
        for g in grads:
            g.mul_(coef.view(-1, *([1] * (g.dim() - 1))).to(g.dtype))
        return norms


# ----------------------------------------------------------------------------------------------------------------------
# Closed forms (no module needed)


def non_embedding_params(n_layer: int, n_embd: int, mlp_ratio: int = 4, attention_only: bool = False) -> int:
    """Kaplan's N for this layout, exactly what GPT.num_params(True) counts. With d = n_embd, r = mlp_ratio:
    per block   ln_1 2d + c_attn 3d^2+3d + attn.c_proj d^2+d                        = 4d^2 + 6d
                + ln_2 2d + mlp.c_fc r*d^2+r*d + mlp.c_proj r*d^2+d  (unless attention-only)
                full block                                          = (4+2r) d^2 + (9+r) d   (r=4: 12d^2 + 13d)
    N = n_layer * block + 2d (ln_f)."""
    d, r = n_embd, mlp_ratio
    block = 4 * d * d + 6 * d
    if not attention_only:
        block += 2 * r * d * d + (3 + r) * d
    return n_layer * block + 2 * d


def training_flops_per_token(n_params_nonembed: int, n_layer: int, n_embd: int, context: int) -> int:
    """6 * N + 6 * n_layer * context * n_embd (see GPT.flops_per_token)."""
    return 6 * n_params_nonembed + 6 * n_layer * context * n_embd


# ----------------------------------------------------------------------------------------------------------------------
# The family: one size knob, depth. width = depth * aspect_ratio rounded up to whole heads of a fixed size.
# Names: "d{depth}" for family members, "L{n_layer}-E{n_embd}-H{n_head}" for explicit shapes, "-attn" appended for
# attention-only models (e.g. "d4", "L2-E64-H4-attn").

FAMILY_NAME = re.compile(r"d(\d+)(-attn)?")
SHAPE_NAME = re.compile(r"L(\d+)-E(\d+)-H(\d+)(-attn)?")
NAME_FORMS = (
    "'d{depth}' for a family member (e.g. 'd4') or 'L{n_layer}-E{n_embd}-H{n_head}' for an explicit "
    "shape (e.g. 'L2-E64-H4'), either optionally ending in '-attn' for attention-only"
)
MAX_FAMILY_DEPTH = 4096  # far beyond any trainable size; bounds the target-size search


def family_shape(depth: int, aspect_ratio: int, head_dim: int) -> tuple[int, int, int]:
    """(n_layer, n_embd, n_head) of family member `depth`: n_embd = depth * aspect_ratio rounded up to a multiple of
    head_dim, n_head = n_embd // head_dim."""
    depth = _require_int(depth, "depth", 1)
    aspect_ratio = _require_int(aspect_ratio, "family.aspect_ratio", 1)
    head_dim = _require_int(head_dim, "family.head_dim", 1)
    n_embd = -(-depth * aspect_ratio // head_dim) * head_dim
    return depth, n_embd, n_embd // head_dim


def family_name(depth: int, attention_only: bool = False) -> str:
    return f"d{depth}" + ("-attn" if attention_only else "")


def shape_name(n_layer: int, n_embd: int, n_head: int, attention_only: bool = False) -> str:
    return f"L{n_layer}-E{n_embd}-H{n_head}" + ("-attn" if attention_only else "")


def family_member(
    family, depth: int, vocab_size: int, context: int, attention_only: bool = False, name: str | None = None
) -> GPTConfig:
    n_layer, n_embd, n_head = family_shape(depth, family.aspect_ratio, family.head_dim)
    shape = (n_layer, n_embd, n_head)
    return _config(family, vocab_size, context, shape, attention_only, name or family_name(depth, attention_only))


def _config(
    family, vocab_size: int, context: int, shape: tuple[int, int, int], attention_only: bool, name: str
) -> GPTConfig:
    """A GPTConfig of the shape (n_layer, n_embd, n_head) with the family's MLP ratio."""
    n_layer, n_embd, n_head = shape
    return GPTConfig(
        vocab_size=vocab_size,
        context=context,
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        mlp_ratio=family.mlp_ratio,
        attention_only=attention_only,
        name=name,
    )


def list_family(family, vocab_size: int, context: int, max_depth: int = 24, attention_only: bool = False) -> list[dict]:
    """One row per depth 1..max_depth: name, depth, shape, N non-embedding, N total, training FLOPs per token."""
    max_depth = _require_int(max_depth, "max_depth", 1, MAX_FAMILY_DEPTH)
    rows = []
    for depth in range(1, max_depth + 1):
        cfg = family_member(family, depth, vocab_size, context, attention_only)
        rows.append(
            {
                "name": cfg.name,
                "depth": depth,
                "n_layer": cfg.n_layer,
                "n_embd": cfg.n_embd,
                "n_head": cfg.n_head,
                "mlp_ratio": cfg.mlp_ratio,
                "attention_only": cfg.attention_only,
                "n_params_nonembed": cfg.n_params_nonembed,
                "n_params_total": cfg.n_params_total,
                "flops_per_token": training_flops_per_token(cfg.n_params_nonembed, cfg.n_layer, cfg.n_embd, context),
            }
        )
    return rows


def _nearest_depth(family, target: float, attention_only: bool, where: str) -> int:
    """The depth whose N is nearest to target in log space. N grows strictly with depth (more layers, width never
    shrinks), so walk up until N passes the target and compare the two neighbours."""

    def n_at(depth):
        n_layer, n_embd, _ = family_shape(depth, family.aspect_ratio, family.head_dim)
        return non_embedding_params(n_layer, n_embd, family.mlp_ratio, attention_only)

    smallest = n_at(1)
    if target < smallest / 2:
        raise ConfigError(
            f"{where}.target_params: {target!r} is not allowed: the smallest family member "
            f"{family_name(1, attention_only)} has N = {smallest:,} non-embedding parameters"
        )
    for depth in range(1, MAX_FAMILY_DEPTH + 1):
        if n_at(depth) >= target:
            if depth > 1 and math.log(target / n_at(depth - 1)) < math.log(n_at(depth) / target):
                return depth - 1
            return depth
    raise ConfigError(
        f"{where}.target_params: {target!r} is not allowed: larger than the family reaches "
        f"(depth {MAX_FAMILY_DEPTH}, N = {n_at(MAX_FAMILY_DEPTH):,})"
    )


def resolve_model(spec, family, vocab_size: int, context: int, *, where: str = "model") -> GPTConfig:
    """A study ModelSpec -> GPTConfig, in order of precedence:
    - an explicit shape (n_layer, n_embd, n_head): used as given; name = spec.name or 'L{n_layer}-E{n_embd}-H{n_head}';
    - target_params: the family member whose non-embedding N is nearest in log space; name = spec.name or 'd{depth}';
    - a name alone: 'd{depth}' (a family member) or 'L{n_layer}-E{n_embd}-H{n_head}' (an explicit shape).
    '-attn' on a parsed name, or spec.attention_only, makes the model attention-only. `where` prefixes error fields
    (e.g. 'models[2]'). Bad input raises ConfigError."""
    try:
        if any(x is not None for x in (spec.n_layer, spec.n_embd, spec.n_head)):
            return _explicit_shape(spec, family, vocab_size, context, where)
        if spec.target_params is not None:
            return _nearest_member(spec, family, vocab_size, context, where)
        return _named_model(spec, family, vocab_size, context, where)
    except ConfigError as exc:
        # GPTConfig names its fields 'model.<field>'; say which model of the study it was
        message = str(exc)
        if where != "model" and message.startswith("model."):
            raise ConfigError(where + message[len("model") :]) from None
        raise


def _explicit_shape(spec, family, vocab_size: int, context: int, where: str) -> GPTConfig:
    """n_layer, n_embd and n_head as given (all three, and no target_params); a shape-like name must agree."""
    if spec.target_params is not None:
        raise ConfigError(
            f"{where}.target_params: {spec.target_params!r} is not allowed: "
            "either target_params or an explicit shape (n_layer, n_embd, n_head), not both"
        )
    if any(x is None for x in (spec.n_layer, spec.n_embd, spec.n_head)):
        given = {k: getattr(spec, k) for k in ("n_layer", "n_embd", "n_head")}
        raise ConfigError(
            f"{where}: {given!r} is not allowed: an explicit shape needs n_layer, n_embd and "
            "n_head (or give target_params)"
        )
    attention_only = bool(spec.attention_only)
    name = spec.name
    shape = (spec.n_layer, spec.n_embd, spec.n_head)
    cfg = _config(family, vocab_size, context, shape, attention_only, name or shape_name(*shape, attention_only))
    match = SHAPE_NAME.fullmatch(name or "")
    if match and (tuple(int(g) for g in match.groups()[:3]) != (cfg.n_layer, cfg.n_embd, cfg.n_head)):
        raise ConfigError(
            f"{where}.name: {name!r} is not allowed: it names a different shape than "
            f"n_layer={cfg.n_layer}, n_embd={cfg.n_embd}, n_head={cfg.n_head}"
        )
    return cfg


def _nearest_member(spec, family, vocab_size: int, context: int, where: str) -> GPTConfig:
    """The family member whose non-embedding N is nearest spec.target_params in log space."""
    target = spec.target_params
    if isinstance(target, bool) or not isinstance(target, numbers.Real) or not float(target) > 0:
        raise ConfigError(f"{where}.target_params: {target!r} is not allowed: a positive parameter count")
    attention_only = bool(spec.attention_only)
    depth = _nearest_depth(family, float(target), attention_only, where)
    return family_member(family, depth, vocab_size, context, attention_only, name=spec.name)


def _named_model(spec, family, vocab_size: int, context: int, where: str) -> GPTConfig:
    """A model given by its name alone: 'd{depth}' (a family member) or 'L{n_layer}-E{n_embd}-H{n_head}'."""
    name = spec.name
    attention_only = bool(spec.attention_only)
    if name is None:
        raise ConfigError(
            f"{where}: no model given: set name ({NAME_FORMS}), an explicit shape "
            "(n_layer, n_embd, n_head) or target_params"
        )
    if match := FAMILY_NAME.fullmatch(name):
        depth = int(match.group(1))
        if not 1 <= depth <= MAX_FAMILY_DEPTH:
            raise ConfigError(f"{where}.name: {name!r} is not allowed: a family depth in [1, {MAX_FAMILY_DEPTH}]")
        return family_member(family, depth, vocab_size, context, attention_only or bool(match.group(2)))
    if match := SHAPE_NAME.fullmatch(name):
        n_layer, n_embd, n_head = (int(g) for g in match.groups()[:3])
        attention_only = attention_only or bool(match.group(4))
        if min(n_layer, n_embd, n_head) < 1 or n_embd % n_head:
            raise ConfigError(
                f"{where}.name: {name!r} is not allowed: L, E and H must be >= 1 and E (n_embd) "
                "a multiple of H (n_head)"
            )
        shape = (n_layer, n_embd, n_head)
        return _config(family, vocab_size, context, shape, attention_only, shape_name(*shape, attention_only))
    raise ConfigError(
        f"{where}.name: {name!r} is not allowed: {NAME_FORMS}; or give an explicit shape "
        "(n_layer, n_embd, n_head) or target_params"
    )
