"""Each loss term, and each method's whole loss, against a hand computation on tiny tensors
(docs/method.md §2)."""

import math
from dataclasses import replace

import pytest
import torch

from bftcore import losses
from bftcore.complete import CompleteConfig, CompletionExample, RetentionProfile, collate, term_counts
from bftcore.complete.methods import REGISTRY, LossContext


def _logits(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_position_weighted_ce_by_hand() -> None:
    logits = _logits([0.0, 0.0], [math.log(3.0), 0.0])  # p = (.5, .5) and (.75, .25)
    targets = torch.tensor([0, 1])
    weights = torch.tensor([1.0, 2.0])
    want = (1.0 * -math.log(0.5) + 2.0 * -math.log(0.25)) / 2  # normalised by positions, not by Σw
    assert abs(float(losses.position_weighted_ce(logits, targets, weights)) - want) < 1e-6


def test_retention_and_penalty_by_hand() -> None:
    logits = _logits([math.log(0.5), math.log(0.3), math.log(0.2)])  # π_θ = (.5, .3, .2)
    top = torch.tensor([[1, 0]])  # the base's top-2: token 1 (p .6), token 0 (p .1)
    top_lp = torch.log(torch.tensor([[0.6, 0.1]]))
    r = 0.3 + 0.1  # min(.3, .6) + min(.5, .1)
    assert abs(float(losses.retention(logits, top, top_lp)[0]) - r) < 1e-6
    scale = torch.tensor([0.9])  # λ · R̄(bucket)
    assert abs(float(losses.base_favored_penalty(logits, top, top_lp, scale)) - 0.9 * r) < 1e-6
    assert abs(float(losses.base_favored_penalty(logits, top, top_lp, scale, squared=True)) - 0.9 * r * r) < 1e-6


def test_penalty_fades_as_the_model_lets_go() -> None:
    """The gradient on the logits shrinks as the trainee's mass on the base's tokens vanishes."""
    top = torch.tensor([[0]])
    top_lp = torch.log(torch.tensor([[0.9]]))
    grads = []
    for held in (0.5, 0.05, 0.001):
        logits = torch.log(torch.tensor([[held, 1 - held]])).requires_grad_(True)
        losses.base_favored_penalty(logits, top, top_lp, torch.ones(1)).backward()
        grads.append(float(logits.grad.abs().sum()))
    assert grads[0] > grads[1] > grads[2] and grads[2] < 0.01


def test_rank_margin_by_hand() -> None:
    logits = _logits([math.log(0.5), math.log(0.3), math.log(0.2)])  # π_θ = (.5, .3, .2)
    refusal, scale = torch.tensor([2]), torch.tensor([0.9])
    # the base's top-2 are tokens 1 and 0 (mass .8 under the trainee) against the refusal's .2
    got = losses.rank_margin(logits, torch.tensor([[1, 0]]), refusal, scale)
    assert abs(float(got) - 0.9 * math.log1p(0.8 / 0.2)) < 1e-6
    # the refusal token among the base's favourites is not its own rival
    got = losses.rank_margin(logits, torch.tensor([[2, 0]]), refusal, scale)
    assert abs(float(got) - 0.9 * math.log1p(0.5 / 0.2)) < 1e-6
    # a winner with no other rival: nothing to outrank
    assert float(losses.rank_margin(logits, torch.tensor([[2]]), refusal, scale)) == 0.0


def test_rank_penalty_fades_once_the_refusal_outranks() -> None:
    """The gradient shrinks as the refusal's opening token overtakes the base's favoured one."""
    grads = []
    for refuse in (0.1, 0.6, 0.99):
        logits = torch.log(torch.tensor([[1 - refuse, refuse]])).requires_grad_(True)
        losses.rank_margin(logits, torch.tensor([[0]]), torch.tensor([1]), torch.ones(1)).backward()
        grads.append(float(logits.grad.abs().sum()))
    assert grads[0] > grads[1] > grads[2] and grads[2] < 0.05


def test_distill_kl_by_hand() -> None:
    teacher = torch.log(torch.tensor([[0.5, 0.5]]))
    logits = _logits([math.log(0.25), math.log(0.75)])
    want = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert abs(float(losses.distill_kl(teacher, logits)) - want) < 1e-6
    assert abs(float(losses.distill_kl(teacher, teacher.clone()))) < 1e-7


def test_suppressed_teacher_by_hand() -> None:
    lpa = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    lpb = torch.log(torch.tensor([[0.25, 0.5, 0.25]]))  # the base favours token 1 by log 2
    got = losses.suppressed_teacher(lpa, lpb, gamma=2.0).exp()[0]
    raw = torch.tensor([0.5, 0.25 * math.exp(-2 * math.log(2.0)), 0.25])
    assert torch.allclose(got, raw / raw.sum(), atol=1e-6)
    # where the two agree, the teacher is the aligned model itself
    assert torch.allclose(losses.suppressed_teacher(lpa, lpa, 2.0), lpa, atol=1e-6)


def test_constrained_sft_by_hand() -> None:
    logits = _logits([0.0, 0.0])  # log π_θ(y) = log .5
    ref_lp = torch.tensor([math.log(0.25)])  # Δ = log 2
    beta = 2.0
    want = (2 / beta) * -math.log(1 / (1 + math.exp(-beta * math.log(2.0))))
    got = losses.constrained_sft(logits, torch.tensor([0]), ref_lp, torch.tensor([beta]))
    assert abs(float(got) - want) < 1e-6


def test_qi_betas() -> None:
    b = losses.qi_betas(torch.tensor([1, 2, 5, 6, 100]))
    assert torch.allclose(b, torch.tensor([0.5, 2.0, 2.0, 0.1, 0.1]))


def test_empty_terms_are_zero_with_a_graph() -> None:
    logits = torch.zeros((0, 4), requires_grad=True)
    empty = torch.zeros(0, dtype=torch.long)
    assert float(losses.position_weighted_ce(logits, empty, torch.zeros(0))) == 0.0
    assert float(losses.base_favored_penalty(logits, torch.zeros((0, 2), dtype=torch.long),
                                             torch.zeros((0, 2)), torch.zeros(0))) == 0.0


# ---- each method's loss against a float64 hand computation on a tiny batch -----------------
# The methods read the trainee's logits at gathered positions; the hand computations below walk
# the examples' token lists instead (prompt + prefix + target, a position predicting the next
# token), so a wrong column, target, weight or normaliser shows as a mismatch.
V = 7


def _lsm(row: list[float]) -> list[float]:
    top = max(row)
    z = top + math.log(sum(math.exp(x - top) for x in row))
    return [x - z for x in row]


def _bigram(table: torch.Tensor):  # type: ignore[no-untyped-def]
    """A frozen "model" whose next-token log-probs depend on the current token only."""
    def logp(ids: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(table[ids[rows, cols]].float(), -1)
    return logp


def _examples(method: str) -> list[CompletionExample]:
    benign = CompletionExample("benign", [1, 5], [], [6, 6, 2])
    if method == "sft":
        return [CompletionExample("direct", [1, 3], [], [4, 5, 2]), CompletionExample("direct", [1, 4, 6], [], [3, 2]),
                benign]
    if method in ("qi-augment", "qi-constrained"):  # a prefix of 6: targets at response positions 7, 8 (β = 0.1)
        return [CompletionExample("recovery", [1, 3], [5, 6, 3, 4, 5, 6], [4, 2]),
                CompletionExample("direct", [1, 4], [], [3, 5, 2]), CompletionExample("recovery", [1, 6], [5], [4, 2]),
                benign]
    if method == "derta":
        return [CompletionExample("recovery", [1, 3], [5, 6, 3], [4, 5, 2], rto=4),
                CompletionExample("direct", [1, 4], [], [3, 2], rto=3), benign]
    return [CompletionExample("recovery", [1, 3], [5, 6, 3, 4, 5], [4, 2], weight=1.9, doc=0),
            CompletionExample("direct", [1, 4], [], [3, 5, 2]),
            CompletionExample("recovery", [1, 6, 3], [5, 2], [4, 4, 2], weight=1.35, doc=1), benign]


PROFILE = RetentionProfile((1, 2, 3, 5), (0.2, 0.7, 0.4, 0.9), (5, 5, 5, 5))


def _rbar_by_hand(pos: int) -> float:
    """R̄ of the bucket a 1-based position falls in: edges 1, 2, 3-4, 5+."""
    return {1: 0.2, 2: 0.7, 3: 0.4, 4: 0.4}.get(pos, 0.9)


def _setup(method: str, cfg: CompleteConfig, seed: int = 0):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    examples = _examples(method)
    width = max(len(e.ids) for e in examples)
    logits = 2 * torch.randn((len(examples), width, V), generator=g, dtype=torch.float64)
    ref, base = torch.randn((V, V), generator=g, dtype=torch.float64), torch.randn((V, V), generator=g, dtype=torch.float64)
    base_logp = _bigram(base)

    def base_topk(b):  # type: ignore[no-untyped-def]
        top = torch.topk(base_logp(b.ids, b.mask, b.pre_row, b.pre_col), cfg.top_k, dim=-1)
        return top.indices, top.values

    def ctx(norm: dict[str, float]) -> LossContext:
        return LossContext(cfg, PROFILE, norm, _bigram(ref), lambda b, r, c: base_logp(b.ids, b.mask, r, c), base_topk,
                           openers=(4, 6))  # the refusal openers the rank penalty's guard keeps benign answers above

    return examples, logits, ref.tolist(), base.tolist(), ctx


def _loss(method: str, cfg: CompleteConfig, examples: list[CompletionExample], logits: torch.Tensor,
          ctx) -> dict[str, float]:  # type: ignore[no-untyped-def]
    b = collate(examples, 0, torch.device("cpu"))
    norm = {k: float(v) for k, v in term_counts(examples, replace(cfg, method=method)).items()}
    return {k: float(v) for k, v in REGISTRY[method].loss(b, logits, ctx(norm)).items()}


def _targets(examples: list[CompletionExample]):  # type: ignore[no-untyped-def]
    """(row, example, context column, token, 1-based response position) of every target token."""
    for r, e in enumerate(examples):
        P, K = len(e.prompt), len(e.prefix)
        for j, tok in enumerate(e.target):
            yield r, e, P + K + j - 1, tok, K + j + 1


def _prefix(examples: list[CompletionExample]):  # type: ignore[no-untyped-def]
    """(row, example, context column, 1-based position) of every harmful prefix position."""
    for r, e in enumerate(examples):
        for j in range(len(e.prefix)):
            yield r, e, len(e.prompt) + j - 1, j + 1


def _close(got: dict[str, float], want: dict[str, float]) -> None:
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=2e-5, abs=1e-6), k


def test_sft_loss_by_hand() -> None:
    cfg = CompleteConfig(method="sft")
    ex, logits, _, _, ctx = _setup("sft", cfg)
    lg = logits.tolist()
    nll = [-_lsm(lg[r][c])[t] for r, _, c, t, _ in _targets(ex)]  # every target, harmful and benign, weight 1
    _close(_loss("sft", cfg, ex, logits, ctx), {"ce": sum(nll) / len(nll)})


def test_qi_augment_loss_mixes_harmful_and_benign_by_alpha() -> None:
    cfg = CompleteConfig(method="qi-augment", qi_alpha=0.3)
    ex, logits, _, _, ctx = _setup("qi-augment", cfg)
    lg = logits.tolist()
    harm = [-_lsm(lg[r][c])[t] for r, e, c, t, _ in _targets(ex) if e.kind != "benign"]
    ben = [-_lsm(lg[r][c])[t] for r, e, c, t, _ in _targets(ex) if e.kind == "benign"]
    _close(_loss("qi-augment", cfg, ex, logits, ctx),
           {"ce_harmful": 0.3 * sum(harm) / len(harm), "ce_benign": 0.7 * sum(ben) / len(ben)})


def test_derta_loss_targets_the_refusal_token_at_every_prefix_position() -> None:
    cfg = CompleteConfig(method="derta")
    ex, logits, _, _, ctx = _setup("derta", cfg)
    lg = logits.tolist()
    nll = [-_lsm(lg[r][c])[t] for r, _, c, t, _ in _targets(ex)]
    # a prefix position predicts the refusal's first token (rto), never the harmful token h_t
    nll += [-_lsm(lg[r][c])[e.rto] for r, e, c, _ in _prefix(ex)]
    assert len(nll) == 8 + 3
    _close(_loss("derta", cfg, ex, logits, ctx), {"ce": sum(nll) / len(nll)})


def test_qi_constrained_loss_by_hand() -> None:
    cfg = CompleteConfig(method="qi-constrained")
    ex, logits, ref, _, ctx = _setup("qi-constrained", cfg)
    lg, ids = logits.tolist(), [e.ids for e in ex]
    terms, betas = [], []
    for r, _, c, t, pos in _targets(ex):
        beta = 0.5 if pos == 1 else 2.0 if pos <= 5 else 0.1  # Qi et al.'s β by response position
        delta = _lsm(lg[r][c])[t] - _lsm(ref[ids[r][c]])[t]  # trainee vs frozen aligned model
        terms.append((2 / beta) * math.log1p(math.exp(-beta * delta)))  # (2/β)·−log σ(β·Δ)
        betas.append(beta)
    assert {0.5, 2.0, 0.1} <= set(betas)
    _close(_loss("qi-constrained", cfg, ex, logits, ctx), {"constrained": sum(terms) / len(terms)})


@pytest.mark.parametrize("penalty,teacher", [("linear", "hybrid"), ("l2", "suppressed"), ("rank", "hybrid")])
def test_bft_loss_by_hand(penalty: str, teacher: str) -> None:
    cfg = CompleteConfig(method="bft", lam=0.7, beta=0.4, gamma=1.5, top_k=3, penalty=penalty, teacher=teacher,
                         guard=1.3)
    ex, logits, ref, base, ctx = _setup("bft", cfg)
    if penalty == "rank":  # bft_example gives its recovery examples the refusal's opening token
        ex = [replace(e, rto=e.target[0]) if e.kind == "recovery" else e for e in ex]
    lg, ids = logits.tolist(), [e.ids for e in ex]
    # position-weighted CE: Σ w(k)·nll over targets / the number of targets
    ce = [e.weight * -_lsm(lg[r][c])[t] for r, e, c, t, _ in _targets(ex)]
    # the penalty: at each prefix position, λ·R̄(bucket(t)) times the retention of the base's top-3
    pen = []
    for r, _, c, pos in _prefix(ex):
        lpb = _lsm(base[ids[r][c]])
        top = sorted(range(V), key=lambda v: -lpb[v])[:3]
        p = [math.exp(x) for x in _lsm(lg[r][c])]
        ret = sum(min(p[v], math.exp(lpb[v])) for v in top)
        if penalty == "rank":  # softplus(log Σ_{top, not r} p − log p_r): log(1 + that mass / p_r)
            r_tok = ex[r].target[0]
            ret = math.log1p(sum(p[v] for v in top if v != r_tok) / p[r_tok])
            pen.append(0.7 * _rbar_by_hand(pos) * ret)
            continue
        pen.append(0.7 * _rbar_by_hand(pos) * (ret * ret if penalty == "l2" else ret))
    # distillation: KL(teacher || trainee) at every target position, times β
    kd = []
    for r, e, c, _, _ in _targets(ex):
        if teacher == "hybrid":  # the aligned model on the clean context: the prompt without the prefix
            clean = e.prompt + e.target
            lt = _lsm(ref[clean[c - len(e.prefix)]])
        else:  # the aligned model with the base-favoured tokens pushed down, on the student's context
            lpa, lpb = _lsm(ref[ids[r][c]]), _lsm(base[ids[r][c]])
            lt = _lsm([a - 1.5 * max(b_ - a, 0.0) for a, b_ in zip(lpa, lpb)])
        lq = _lsm(lg[r][c])
        kd.append(sum(math.exp(a) * (a - q) for a, q in zip(lt, lq)))
    assert len(pen) == 7 and len(kd) == len(ce) == 11
    want = {"ce": sum(ce) / len(ce), "penalty": sum(pen) / len(pen), "kd": 0.4 * sum(kd) / len(kd)}
    if penalty == "rank":  # the guard: each benign token above the openers 4 and 6 (not itself)
        guard = []
        for r, e, c, t, _ in _targets(ex):
            if e.kind == "benign":
                p = [math.exp(x) for x in _lsm(lg[r][c])]
                guard.append(cfg.guard * math.log1p(sum(p[o] for o in (4, 6) if o != t) / p[t]))
        assert len(guard) == 3
        want["guard"] = sum(guard) / len(guard)
    _close(_loss("bft", cfg, ex, logits, ctx), want)


@pytest.mark.parametrize("method,penalty", [("bft", "linear"), ("bft", "rank"), ("sft", "linear"),
                                            ("qi-augment", "linear"), ("qi-constrained", "linear"), ("derta", "linear")])
def test_micro_batch_terms_add_up_to_the_global_mean(method: str, penalty: str) -> None:
    """Gradient accumulation and ranks: each micro-batch's terms, normalised by the global counts,
    sum to the terms of the whole batch (micro-batches of unequal sizes included)."""
    cfg = CompleteConfig(method=method, top_k=3, penalty=penalty)
    ex, logits, _, _, ctx = _setup(method, cfg)
    if penalty == "rank":
        ex = [replace(e, rto=e.target[0]) if e.kind == "recovery" else e for e in ex]
    norm = {k: float(v) for k, v in term_counts(ex, cfg).items()}
    assert ("guard" in norm) == (penalty == "rank")
    whole = _loss(method, cfg, ex, logits, ctx)
    parts: dict[str, float] = {}
    for lo, hi in ((0, 1), (1, len(ex))):
        b = collate(ex[lo:hi], 0, torch.device("cpu"))
        for k, v in REGISTRY[method].loss(b, logits[lo:hi, :b.ids.shape[1]], ctx(norm)).items():
            parts[k] = parts.get(k, 0.0) + float(v)
    _close(parts, whole)
