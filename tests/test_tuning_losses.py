"""Scale weights, bitwise CE, distillation losses and their reductions, checked against hand computation."""

from __future__ import annotations

import math

import pytest
import torch

from varlit.models.schedules import get_schedule
from varlit.tuning.losses import (
    arbooth_joint_kl,
    argmax_bits,
    bitwise_ce,
    hard_distill,
    per_scale_mean,
    scale_weighted_loss,
    soft_distill,
)
from varlit.tuning.scale_weights import ScaleWeights, per_scale_weights, per_token_weights

SCHED_1M = get_schedule(1.0, "0.25M")  # 10 scales
SMALL = [(1, 1), (2, 2), (3, 3)]  # 14 tokens


def _log_softmax2(a: float, b: float) -> tuple[float, float]:
    m = max(a, b)
    lse = m + math.log(math.exp(a - m) + math.exp(b - m))
    return a - lse, b - lse


# ---- scale weights -------------------------------------------------------------------------------


def test_scale_weight_kinds() -> None:
    assert per_scale_weights(ScaleWeights(kind="uniform"), SCHED_1M).tolist() == [1.0] * 10
    arb = per_scale_weights(ScaleWeights(), SCHED_1M).tolist()
    assert arb == [1.0] * 8 + [0.5] * 2
    custom = per_scale_weights(ScaleWeights(num_coarse=2, coarse=3.0, fine=0.25), SMALL).tolist()
    assert custom == [3.0, 3.0, 0.25]
    assert per_scale_weights(ScaleWeights(kind="explicit", values=[1, 0, 2]), SMALL).tolist() == [
        1.0,
        0.0,
        2.0,
    ]

    inv = per_scale_weights(ScaleWeights(kind="inverse_sqrt_area"), SMALL)
    raw = [math.sqrt(9 / a) for a in (1, 4, 9)]  # [3, 1.5, 1]
    mean_token = (raw[0] * 1 + raw[1] * 4 + raw[2] * 9) / 14
    assert inv.tolist() == pytest.approx([r / mean_token for r in raw])
    tok = per_token_weights(ScaleWeights(kind="inverse_sqrt_area"), SMALL)
    assert tok.shape == (14,) and tok.sum().item() == pytest.approx(14.0)

    per_tok = per_token_weights(ScaleWeights(num_coarse=1, coarse=2.0, fine=1.0), SMALL)
    assert per_tok.tolist() == [2.0] + [1.0] * 13
    # official (t, h, w) schedule entries are accepted too
    assert per_token_weights(ScaleWeights(), [(1, 1, 1), (1, 2, 2)]).shape == (5,)


@pytest.mark.parametrize(
    ("weights", "needle"),
    [
        (
            ScaleWeights(kind="explicit", values=[1.0, 2.0]),
            "scale_weights.values: 2 weights given but the schedule has 3",
        ),
        (ScaleWeights(kind="explicit"), "scale_weights.values: kind 'explicit' needs a list"),
        (ScaleWeights(kind="explicit", values=[1.0, -1.0, 1.0]), "scale_weights.values[1]"),
        (ScaleWeights(kind="explicit", values=[0, 0, 0]), "every weight is 0"),
        (ScaleWeights(kind="explicit", values=[1.0, float("nan"), 1.0]), "scale_weights.values[1]"),
        (ScaleWeights(kind="cosine"), "scale_weights.kind: unknown kind 'cosine'"),
        (ScaleWeights(num_coarse=-1), "scale_weights.num_coarse"),
        (ScaleWeights(fine=-0.5), "scale_weights.fine"),
        (ScaleWeights(coarse=0, fine=0), "both 0"),
        (ScaleWeights(kind="uniform", values=[1.0, 1.0, 1.0]), "only used with kind 'explicit'"),
    ],
)
def test_scale_weight_errors(weights: ScaleWeights, needle: str) -> None:
    with pytest.raises(ValueError) as err:
        per_scale_weights(weights, SMALL)
    assert needle in str(err.value)


# ---- bitwise CE and reductions -------------------------------------------------------------------


def test_bitwise_ce_matches_hand_computation() -> None:
    # B=1, L=2, d=2: logits per bit are (logit of 0, logit of 1)
    logits = torch.tensor([[[0.3, -1.2, 2.0, 0.5], [0.0, 0.0, -0.7, 1.1]]])
    bits = torch.tensor([[[1, 0], [0, 1]]], dtype=torch.uint8)
    want = []
    for tok, bt in zip(logits[0].tolist(), bits[0].tolist()):
        nll = []
        for j in range(2):
            lp = _log_softmax2(tok[2 * j], tok[2 * j + 1])
            nll.append(-lp[bt[j]])
        want.append(sum(nll) / 2)
    got = bitwise_ce(logits, bits)
    assert got.shape == (1, 2)
    assert got[0].tolist() == pytest.approx(want, rel=1e-6)
    # bf16 logits are read in float32
    assert bitwise_ce(logits.bfloat16(), bits).dtype == torch.float32
    with pytest.raises(ValueError, match="bits have shape"):
        bitwise_ce(logits, bits[:, :1])


def test_per_token_reduction_is_the_official_one() -> None:
    torch.manual_seed(0)
    B, L = 3, 14
    per_tok = torch.rand(B, L)
    loss, per_scale = scale_weighted_loss(per_tok, SMALL, None, "per_token")
    assert loss.item() == pytest.approx(per_tok.mean().item(), rel=1e-6)

    # ARBooth: tokens beyond the first K scales x 0.5, then loss.mul(1/L).sum(-1).mean()
    w = ScaleWeights(num_coarse=2)
    loss, _ = scale_weighted_loss(per_tok, SMALL, w, "per_token")
    want = 0.0
    for b in range(B):
        s = 0.0
        for tok in range(L):
            s += per_tok[b, tok].item() * (1.0 if tok < 5 else 0.5) / L
        want += s / B
    assert loss.item() == pytest.approx(want, rel=1e-6)

    # official Infinity reweight_loss_by_scale: lw = sqrt(area_last)/sqrt(area_s), normalised to sum 1
    lw = []
    for h, ww in SMALL:
        lw += [math.sqrt(9) / math.sqrt(h * ww)] * (h * ww)
    tot = sum(lw)
    want = sum(sum(per_tok[b, t].item() * lw[t] / tot for t in range(L)) for b in range(B)) / B
    loss, _ = scale_weighted_loss(per_tok, SMALL, ScaleWeights(kind="inverse_sqrt_area"), "per_token")
    assert loss.item() == pytest.approx(want, rel=1e-6)

    # per-scale means for logging
    want_scales = [
        per_tok[:, 0:1].mean().item(),
        per_tok[:, 1:5].mean().item(),
        per_tok[:, 5:14].mean().item(),
    ]
    assert per_scale.tolist() == pytest.approx(want_scales, rel=1e-6)
    assert per_scale_mean(per_tok, SMALL).tolist() == pytest.approx(want_scales, rel=1e-6)


def test_per_scale_mean_reduction_normalises_by_the_weight_sum() -> None:
    torch.manual_seed(1)
    per_tok = torch.rand(2, 14)
    m = [per_tok[:, 0:1].mean().item(), per_tok[:, 1:5].mean().item(), per_tok[:, 5:14].mean().item()]
    loss, _ = scale_weighted_loss(per_tok, SMALL, None, "per_scale_mean")
    assert loss.item() == pytest.approx(sum(m) / 3, rel=1e-6)
    loss, _ = scale_weighted_loss(
        per_tok, SMALL, ScaleWeights(kind="explicit", values=[4.0, 1.0, 0.0]), "per_scale_mean"
    )
    assert loss.item() == pytest.approx((4 * m[0] + m[1]) / 5, rel=1e-6)
    # a raw tensor of per-scale weights works the same way
    loss_t, _ = scale_weighted_loss(per_tok, SMALL, torch.tensor([4.0, 1.0, 0.0]), "per_scale_mean")
    assert loss_t.item() == pytest.approx(loss.item())
    with pytest.raises(ValueError, match="reduction: unknown 'sum'"):
        scale_weighted_loss(per_tok, SMALL, None, "sum")
    with pytest.raises(ValueError, match="the schedule has 3 scales"):
        scale_weighted_loss(per_tok, SMALL, torch.ones(4))
    with pytest.raises(ValueError, match="the schedule has 14 tokens"):
        scale_weighted_loss(per_tok[:, :10], SMALL)


def test_scale_weights_scale_the_gradient_of_each_scale() -> None:
    logits = torch.randn(2, 14, 8, generator=torch.Generator().manual_seed(2), requires_grad=True)
    bits = torch.randint(0, 2, (2, 14, 4), generator=torch.Generator().manual_seed(3)).to(torch.uint8)
    grads = []
    for values in ([1.0, 1.0, 1.0], [1.0, 1.0, 0.25]):
        logits.grad = None
        loss, _ = scale_weighted_loss(
            bitwise_ce(logits, bits), SMALL, ScaleWeights(kind="explicit", values=values)
        )
        loss.backward()
        grads.append(logits.grad.clone())
    torch.testing.assert_close(grads[1][:, :5], grads[0][:, :5])
    torch.testing.assert_close(grads[1][:, 5:], grads[0][:, 5:] * 0.25)


# ---- distillation -------------------------------------------------------------------------------


def test_soft_distill_zero_on_itself_positive_otherwise_and_student_only_grad() -> None:
    g = torch.Generator().manual_seed(4)
    teacher = torch.randn(2, 14, 8, generator=g, requires_grad=True)
    same = teacher.detach().clone().requires_grad_(True)
    kl = soft_distill(same, teacher, temperature=1.0)
    assert kl.shape == (2, 14)
    assert kl.abs().max().item() < 1e-6
    student = (teacher.detach() + torch.randn(2, 14, 8, generator=g)).requires_grad_(True)
    kl = soft_distill(student, teacher, temperature=2.0)
    assert (kl > 0).all()
    kl.sum().backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_soft_distill_matches_hand_computation_with_temperature() -> None:
    s = torch.tensor([[[0.2, 1.0, -0.5, 0.3]]])
    t = torch.tensor([[[1.5, -0.4, 0.0, 0.9]]])
    T = 2.0
    want = 0.0
    for j in range(2):
        lq = _log_softmax2(s[0, 0, 2 * j].item() / T, s[0, 0, 2 * j + 1].item() / T)
        lp = _log_softmax2(t[0, 0, 2 * j].item() / T, t[0, 0, 2 * j + 1].item() / T)
        want += sum(math.exp(lp[k]) * (lp[k] - lq[k]) for k in range(2))
    want = want / 2 * T**2
    assert soft_distill(s, t, T).item() == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="temperature must be positive"):
        soft_distill(s, t, 0.0)


def test_hard_distill_is_ce_on_the_teachers_argmax_bits() -> None:
    teacher = torch.tensor([[[0.1, 0.9, 2.0, -1.0], [0.5, 0.5, -3.0, 3.0]]])
    bits = argmax_bits(teacher)
    assert bits.dtype == torch.uint8
    assert bits.tolist() == [[[1, 0], [0, 1]]]  # a tie gives 0
    student = torch.randn(1, 2, 4, requires_grad=True)
    loss = hard_distill(student, bits)
    torch.testing.assert_close(loss, bitwise_ce(student, bits))
    loss.sum().backward()
    assert student.grad is not None


def test_arbooth_joint_kl_treats_all_logits_as_one_distribution() -> None:
    s = torch.tensor([[[0.2, 1.0, -0.5, 0.3]]])
    t = torch.tensor([[[1.5, -0.4, 0.0, 0.9]]])
    ls = s[0, 0] - torch.logsumexp(s[0, 0], 0)
    lt = t[0, 0] - torch.logsumexp(t[0, 0], 0)
    want = (lt.exp() * (lt - ls)).sum().item()
    assert arbooth_joint_kl(s, t).item() == pytest.approx(want, rel=1e-6)
    assert arbooth_joint_kl(t, t).abs().item() < 1e-7
    # it differs from the per-bit loss
    assert abs(arbooth_joint_kl(s, t).item() - soft_distill(s, t).item()) > 1e-3
    # and the release's reduction: 1/L summed over tokens, mean over the batch
    g = torch.Generator().manual_seed(5)
    s2, t2 = torch.randn(2, 14, 8, generator=g), torch.randn(2, 14, 8, generator=g)
    per_tok = arbooth_joint_kl(s2, t2)
    loss, _ = scale_weighted_loss(per_tok, SMALL)
    assert loss.item() == pytest.approx(per_tok.mul(1 / 14).sum(-1).mean().item(), rel=1e-6)


def test_per_scale_kl_vector_for_logging() -> None:
    g = torch.Generator().manual_seed(6)
    t = torch.randn(2, 14, 8, generator=g)
    s = t.clone()
    s[:, 5:] += torch.randn(2, 9, 8, generator=g)  # only the last scale differs
    kl_K = per_scale_mean(soft_distill(s, t), SMALL)
    assert kl_K.shape == (3,)
    assert kl_K[:2].abs().max().item() < 1e-6 and kl_K[2].item() > 0
