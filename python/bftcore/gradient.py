"""The paper's mechanistic measurement: how much gradient safety training sends to each response
position (docs/method.md, "The safety gradient per position").

For a model and a safety set (prompts with their safety targets, e.g. harmful prompts with
refusals, or harmful prompts with harmful prefixes and recoveries), the safety SFT loss is the
cross-entropy of each target token, ℓ_t = -log π(y_t | x, y_<t). Per response position t:

- `logit_grad`: ||∂ℓ_t/∂logits_t||, in closed form ||softmax(logits_t) - onehot(y_t)||, averaged
  over the records long enough to have a position t (no backward pass);
- `param_grad`: the norm of the batch's mean gradient of ℓ_t with respect to one transformer
  block's parameters, ||mean_r ∇_θ ℓ_{r,t}||, one backward pass per position and batch, averaged
  over batches: the training signal position t actually contributes to that layer.

Both are aggregated per position bucket (1, 2, 3-4, 5-8, ...) like the index, so they plot beside
R_t and KL. A decay with position where retention stays high is the paper's claim: the gradient
weakens before the learning is complete.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bftcore.buckets import bucket_index, bucket_labels
from bftcore.chat import prompt_ids, response_ids
from bftcore.corpus import Record
from bftcore.errors import BadInput
from bftcore.progress import Progress, counter


@dataclass(frozen=True)
class GradientConfig:
    max_positions: int = 64  # response positions measured per record (the rest are cut)
    param_positions: int = 64  # positions with a parameter gradient (0: logits only)
    layer: int | None = None  # the block whose parameters are measured; None: the middle one
    batch_size: int = 16
    thinking: bool = False
    # the first `prefix_tokens` tokens of each response are forced context, outside the loss:
    # the gradient of a recovery after a harmful prefix, position 1 its first token
    prefix_tokens: int = 0


@dataclass
class GradientProfile:
    """Per position bucket: positions counted, mean logit-gradient norm, mean parameter-gradient norm."""

    model: str
    layer: int
    records: int
    buckets: list[str]
    positions: list[int]
    logit_grad: list[float | None]
    param_grad: list[float | None]
    per_position: dict[str, list[float | None]] = field(default_factory=dict)  # t = 1..max_positions
    prefix_tokens: int = 0  # positions count from the first token after this forced prefix

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GradientProfile:
        return cls(**d)


def _blocks(model: Any) -> Any:
    """The model's list of transformer blocks (Llama, Qwen and kin: `model.layers`)."""
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise BadInput(f"cannot find the transformer blocks of a {type(model).__name__} (no .model.layers)")
    return layers


def safety_gradient(model: Any, tokenizer: Any, records: Sequence[Record], cfg: GradientConfig = GradientConfig(),
                    *, name: str = "", progress: Progress | None = None) -> GradientProfile:
    """The per-position safety gradient of `model` on `records` (each with a response: the target)."""
    if cfg.max_positions < 1 or cfg.param_positions < 0 or cfg.batch_size < 1 or cfg.prefix_tokens < 0:
        raise BadInput("--max-positions and --batch-size must be >= 1, --param-positions and --prefix-tokens >= 0")
    targets = [r for r in records if r.response]
    if not targets:
        raise BadInput("no record has a response: the safety gradient needs the target the model is trained on")
    if cfg.prefix_tokens:
        targets = [r for r in targets if len(response_ids(tokenizer, r.response or "")) > cfg.prefix_tokens]
        if not targets:
            raise BadInput(f"no response is longer than --prefix-tokens {cfg.prefix_tokens}: nothing is left "
                           "to take the loss on")
    blocks = _blocks(model)
    layer = len(blocks) // 2 if cfg.layer is None else cfg.layer
    if not 0 <= layer < len(blocks):
        raise BadInput(f"--layer {layer}: the model has blocks 0-{len(blocks) - 1}")
    params = list(blocks[layer].parameters())
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    T = cfg.max_positions
    logit_sum, logit_n = np.zeros(T), np.zeros(T, dtype=np.int64)
    param_sum, param_n = np.zeros(T), np.zeros(T, dtype=np.int64)
    tick = counter(progress, "safety gradient", len(targets))
    try:
        for start in range(0, len(targets), cfg.batch_size):
            batch = targets[start:start + cfg.batch_size]
            logits, ys, mask = _forward(model, tokenizer, batch, T, cfg, device)
            logp = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
            p = logp.exp()
            # ||softmax - onehot(y)||^2 = sum_{v != y} p_v^2 + (1 - p_y)^2, each term computed without
            # cancellation (p_y near 1 is the common case: 1 - p_y as -expm1(log p_y))
            lp_y = logp.gather(-1, ys.unsqueeze(-1))
            others = (p.scatter(-1, ys.unsqueeze(-1), 0.0) ** 2).sum(-1)
            norms = torch.sqrt(others + torch.expm1(lp_y).squeeze(-1) ** 2)
            m = mask.float()
            logit_sum += (norms * m).sum(0).detach().cpu().double().numpy()
            logit_n += mask.sum(0).cpu().numpy()
            nll = -logp.gather(-1, ys.unsqueeze(-1)).squeeze(-1)  # (B, T)
            for t in range(min(cfg.param_positions, T)):
                rows = mask[:, t]
                if not bool(rows.any()):
                    break
                loss_t = nll[rows, t].mean()
                grads = torch.autograd.grad(loss_t, params, retain_graph=True, allow_unused=True)
                sq = sum(float((g.float() ** 2).sum()) for g in grads if g is not None)
                param_sum[t] += math.sqrt(sq)
                param_n[t] += 1
            tick(len(batch))
    finally:
        model.train(was_training)
    return replace(_profile(name, layer, len(targets), logit_sum, logit_n, param_sum, param_n),
                   prefix_tokens=cfg.prefix_tokens)


def _forward(model: Any, tokenizer: Any, batch: Sequence[Record], T: int, cfg: GradientConfig,
             device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher-forced logits at the first T target positions (after the response's forced prefix):
    (B, T, V) logits predicting each target token, the targets (B, T) and a mask of real positions (B, T)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    seqs, starts, lengths = [], [], []
    for r in batch:
        prompt = prompt_ids(tokenizer, r.messages(), thinking=cfg.thinking)
        if not prompt:
            bos = tokenizer.bos_token_id
            prompt = [bos if bos is not None else tokenizer.eos_token_id]
        whole = response_ids(tokenizer, r.response or "")
        prompt, resp = prompt + whole[:cfg.prefix_tokens], whole[cfg.prefix_tokens:][:T]
        seqs.append(prompt + resp)
        starts.append(len(prompt))
        lengths.append(len(resp))
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        attn[i, :len(s)] = 1
    ids, attn = ids.to(device), attn.to(device)
    out = model(input_ids=ids, attention_mask=attn, use_cache=False).logits  # (B, L, V)
    B, V = len(seqs), out.shape[-1]
    logits = out.new_zeros((B, T, V))
    ys = torch.zeros((B, T), dtype=torch.long, device=device)
    mask = torch.zeros((B, T), dtype=torch.bool, device=device)
    for i, (s, st, n) in enumerate(zip(seqs, starts, lengths)):
        logits[i, :n] = out[i, st - 1:st - 1 + n]  # the logits before each response token predict it
        ys[i, :n] = torch.tensor(s[st:st + n], device=device)
        mask[i, :n] = True
    return logits, ys, mask


def _profile(name: str, layer: int, records: int, logit_sum: np.ndarray, logit_n: np.ndarray,
             param_sum: np.ndarray, param_n: np.ndarray) -> GradientProfile:
    T = len(logit_sum)
    buckets = bucket_index(np.arange(1, T + 1))
    labels = bucket_labels()
    used = sorted({int(b) for b in buckets[logit_n > 0]})
    logit_mean = np.divide(logit_sum, logit_n, out=np.zeros(T), where=logit_n > 0)
    param_mean = np.divide(param_sum, param_n, out=np.zeros(T), where=param_n > 0)
    # a bucket's logit figure is over every (record, position) it holds; its parameter figure
    # averages the per-position figures (each a mean over batches)
    return GradientProfile(
        name, layer, records, [labels[b] for b in used], [int(logit_n[buckets == b].sum()) for b in used],
        [_weighted_mean(logit_sum, logit_n, buckets == b) for b in used],
        [_weighted_mean(param_mean, param_n > 0, buckets == b) for b in used],
        {"logit_grad": _or_none(logit_mean, logit_n), "param_grad": _or_none(param_mean, param_n)})


def _or_none(means: np.ndarray, counts: np.ndarray) -> list[float | None]:
    """Per-position means as a JSON list, None where a position holds nothing."""
    return [float(m) if n else None for m, n in zip(means, counts)]


def _weighted_mean(sums: np.ndarray, counts: np.ndarray, sel: np.ndarray) -> float | None:
    """sum(sums[sel]) / sum(counts[sel]); None where the selection holds no count."""
    n = counts[sel].sum()
    return float(sums[sel].sum() / n) if n else None


def plot_gradient(profiles: Sequence[GradientProfile], path: str | Path, index: Any = None,
                  label: str | None = None) -> None:
    """Each profile's gradient per response position (log-log), and beside it, when an index is
    given, its retention R_t and KL per bucket on `label` responses: where the signal fades while
    retention stays high."""
    from bftcore.plots import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, 3 if index is not None else 2, figsize=(15 if index is not None else 10, 3.8),
                             constrained_layout=True)
    for ax, key, title in ((axes[0], "logit_grad", "‖∂ℓ_t/∂logits_t‖"),
                           (axes[1], "param_grad", "‖mean ∇θ ℓ_t‖, one block")):
        for prof in profiles:
            ys = prof.per_position.get(key, [])
            pts = [(t + 1, y) for t, y in enumerate(ys) if y is not None]
            if pts:
                after = f", after {prof.prefix_tokens} tokens" if prof.prefix_tokens else ""
                ax.plot(*zip(*pts), marker=".", label=f"{prof.model} (block {prof.layer}{after})")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("response position")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if index is not None:
        curves = index.curves()
        df = curves.filter((curves["label"] == index.resolve_label(label)) & (curves["count"] > 0))
        x = [lo if hi is None else (lo * hi) ** 0.5 for lo, hi in zip(df["lo"], df["hi"])]
        ax = axes[2]
        ax.plot(x, df["mean_retain"].to_list(), marker="o", color="tab:blue")
        ax.set_ylabel("retention R_t", color="tab:blue")
        ax.set_ylim(0, 1.05)
        kl = ax.twinx()  # KL spans orders of magnitude: its own log axis
        kl.plot(x, df["mean_kl"].to_list(), marker="s", color="tab:red")
        kl.set_yscale("log")
        kl.set_ylabel("KL(π_a ‖ π_b) [nats]", color="tab:red")
        ax.set_xscale("log", base=2)
        ax.set_title(f"the index on {index.resolve_label(label)} responses")
        ax.set_xlabel("response position")
        ax.grid(alpha=0.3)
    fig.suptitle("safety SFT gradient per response position")
    save_figure(fig, path)
