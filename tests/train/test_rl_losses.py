"""RL losses (lmforge.train.losses.rl) against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.train.losses.rl import (gae, group_advantages, kl_k1, kl_k3, masked_mean, policy_loss, token_logprobs,
                                     value_loss, whiten)


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    std = math.sqrt(((2 / 3) ** 2 + 2 * (1 / 3) ** 2) / 2)  # unbiased std of [1, 0, 0]
    advantages, stds = group_advantages(rewards, 3, "group")
    expected = [(2 / 3) / (std + 1e-4), (-1 / 3) / (std + 1e-4), (-1 / 3) / (std + 1e-4), 0.0, 0.0, 0.0]
    assert advantages.tolist() == pytest.approx(expected, abs=1e-6)
    assert stds.tolist() == pytest.approx([std] * 3 + [0.0] * 3)

    none, _ = group_advantages(rewards, 3, "none")  # REINFORCE with the group mean as baseline
    assert none.tolist() == pytest.approx([2 / 3, -1 / 3, -1 / 3, 0, 0, 0])

    batch, batch_std = group_advantages(rewards, 3, "batch")
    mean = 4 / 6
    batch_sd = math.sqrt(sum((r - mean) ** 2 for r in rewards.tolist()) / 5)
    assert batch.tolist() == pytest.approx([a / (batch_sd + 1e-4) for a in none.tolist()], abs=1e-6)
    assert batch_std.tolist() == pytest.approx([batch_sd] * 6)

    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(rewards, 4)
    with pytest.raises(ValueError, match="scale_rewards"):
        group_advantages(rewards, 3, "max")  # type: ignore[arg-type]


def test_gae_on_a_five_step_episode_by_hand():
    gamma, lam = 0.9, 0.8
    rewards = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 2.0, 7.0, 7.0]])
    values = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5], [0.5, 1.0, 1.5, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)  # row 2 ends after 3 tokens
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    # row 1: deltas r_t + gamma V_{t+1} - V_t, then A_t = delta_t + gamma lam A_{t+1}
    d = [0.9 * 0.2 - 0.1, 0.9 * 0.3 - 0.2, 0.9 * 0.4 - 0.3, 0.9 * 0.5 - 0.4, 1.0 - 0.5]
    a4 = d[4]
    a3 = d[3] + 0.72 * a4
    a2 = d[2] + 0.72 * a3
    a1 = d[1] + 0.72 * a2
    a0 = d[0] + 0.72 * a1
    assert advantages[0].tolist() == pytest.approx([a0, a1, a2, a3, a4])
    assert a0 == pytest.approx(0.31453568)
    assert returns[0].tolist() == pytest.approx([a0 + 0.1, a1 + 0.2, a2 + 0.3, a3 + 0.4, a4 + 0.5])
    # row 2: the value after the last real token counts as 0; padding is ignored
    b2 = 2.0 - 1.5
    b1 = 0.9 * 1.5 - 1.0 + 0.72 * b2
    b0 = 0.9 * 1.0 - 0.5 + 0.72 * b1
    assert advantages[1].tolist() == pytest.approx([b0, b1, b2, 0.0, 0.0])
    # lam = 1: advantages are discounted returns minus values
    full, _ = gae(rewards[:1], values[:1], mask[:1], 1.0, 1.0)
    assert full[0].tolist() == pytest.approx([1 - 0.1, 1 - 0.2, 1 - 0.3, 1 - 0.4, 1 - 0.5])


def test_clipped_objective_inside_and_outside_the_clip_range():
    ratios = torch.tensor([[1.1, 1.5, 1.5, 0.5, 0.5]])
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0, 1.0]])
    old = torch.zeros(1, 5)
    logps = torch.log(ratios).requires_grad_(True)
    mask = torch.ones(1, 5, dtype=torch.bool)
    out = policy_loss(logps, old, advantages, mask, clip_low=0.2, loss_type="bnpo")
    # per token -min(r A, clip(r, 0.8, 1.2) A):
    #   1.1, +1 inside the range          -> -1.1
    #   1.5, +1 above, clipped            -> -1.2
    #   1.5, -1 above, pessimistic: r A    ->  1.5
    #   0.5, -1 below, clipped            ->  0.8
    #   0.5, +1 below, pessimistic: r A    -> -0.5
    per_token = [-1.1, -1.2, 1.5, 0.8, -0.5]
    assert float(out.loss.detach()) == pytest.approx(sum(per_token) / 5)
    assert out.high_clipped[0].tolist() == [False, True, False, False, False]
    assert out.low_clipped[0].tolist() == [False, False, False, True, False]
    out.loss.backward()
    # d/dlogp of -r A / 5 = -r A / 5 where unclipped; 0 where the clipped term is chosen
    assert logps.grad[0].tolist() == pytest.approx([-1.1 / 5, 0.0, 1.5 / 5, 0.0, -0.5 / 5])

    asymmetric = policy_loss(torch.log(ratios), old, advantages, mask, clip_low=0.2, clip_high=0.28, loss_type="bnpo")
    assert float(asymmetric.loss) == pytest.approx((-1.1 - 1.28 + 1.5 + 0.8 - 0.5) / 5)
    unclipped = policy_loss(torch.log(ratios), old, advantages, mask, clip_low=None, loss_type="bnpo")
    assert float(unclipped.loss) == pytest.approx(-(1.1 + 1.5 - 1.5 + 0.5 - 0.5) / 5)
    assert not unclipped.high_clipped.any() and not unclipped.low_clipped.any()


def test_loss_normalisations_by_hand():
    logps = torch.zeros(2, 4)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    advantages = torch.tensor([1.0, -2.0])  # one per completion; at ratio 1 each token's loss is -A
    kw = dict(clip_low=0.2)
    grpo = policy_loss(logps, logps, advantages, mask, loss_type="grpo", **kw).loss
    assert float(grpo) == pytest.approx((-1.0 + 2.0) / 2)  # token means per completion, then the mean
    bnpo = policy_loss(logps, logps, advantages, mask, loss_type="bnpo", **kw).loss
    assert float(bnpo) == pytest.approx((-4 + 4) / 6)
    dr = policy_loss(logps, logps, torch.tensor([1.0, -1.0]), mask, loss_type="dr_grpo", max_completion_length=8, **kw).loss
    assert float(dr) == pytest.approx((-4 + 2) / (2 * 8))
    dapo = policy_loss(logps, logps, torch.tensor([1.0, -1.0]), mask, loss_type="dapo", num_tokens=12, **kw).loss
    assert float(dapo) == pytest.approx(-2 / 12)
    # micro-batches given the step's totals add up to the whole batch's loss
    halves = [policy_loss(logps[i:i + 1], logps[i:i + 1], advantages[i:i + 1], mask[i:i + 1], loss_type=kind,
                          num_sequences=2, num_tokens=6, max_completion_length=8, **kw).loss
              for kind in ("grpo", "bnpo", "dr_grpo") for i in range(2)]
    assert float(halves[0] + halves[1]) == pytest.approx(float(grpo))
    assert float(halves[2] + halves[3]) == pytest.approx(float(bnpo))
    with pytest.raises(ValueError, match="max_completion_length"):
        policy_loss(logps, logps, advantages, mask, loss_type="dr_grpo")
    with pytest.raises(ValueError, match="loss_type"):
        policy_loss(logps, logps, advantages, mask, loss_type="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ref_logps"):
        policy_loss(logps, logps, advantages, mask, beta=0.1)


def test_k3_estimator_by_hand_and_in_expectation():
    logps, ref = torch.log(torch.tensor([0.5])), torch.log(torch.tensor([0.25]))
    # exp(log 0.5) - log 0.5 - 1 = 0.5 + 0.693147 - 1
    assert float(kl_k3(logps, ref)) == pytest.approx(0.5 + math.log(2) - 1)
    assert float(kl_k1(logps, ref)) == pytest.approx(math.log(2))
    assert float(kl_k3(ref, ref)) == 0.0
    # Over the policy's own distribution both estimators average to the exact KL(pi || ref).
    pi = torch.tensor([0.5, 0.3, 0.2])
    pref = torch.tensor([0.2, 0.2, 0.6])
    exact = float((pi * (pi / pref).log()).sum())
    assert float((pi * kl_k3(pi.log(), pref.log())).sum()) == pytest.approx(exact)
    assert float((pi * kl_k1(pi.log(), pref.log())).sum()) == pytest.approx(exact)
    assert (kl_k3(pi.log(), pref.log()) >= 0).all()
    # in the loss: + beta * k3 per token
    mask = torch.ones(1, 3, dtype=torch.bool)
    zero_adv = torch.zeros(1)
    out = policy_loss(pi.log()[None], pi.log()[None], zero_adv, mask, ref_logps=pref.log()[None], beta=0.5, loss_type="bnpo")
    assert float(out.loss) == pytest.approx(0.5 * float(kl_k3(pi.log(), pref.log()).mean()))
    assert out.kl is not None and out.kl.shape == (1, 3)


def test_value_loss_and_whitening_by_hand():
    values, old, returns = torch.tensor([[1.0, 0.6]]), torch.tensor([[0.5, 0.5]]), torch.tensor([[2.0, 0.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, clipfrac = value_loss(values, old, returns, mask, clip_range=0.2)
    # token 1: clipped value 0.7 -> (0.7-2)^2 = 1.69 > (1-2)^2 = 1 -> 1.69; token 2: 0.6 inside -> 0.36
    assert float(loss) == pytest.approx(0.5 * (1.69 + 0.36) / 2)
    assert float(clipfrac) == pytest.approx(0.5)
    plain, _ = value_loss(values, old, returns, mask, clip_range=None)
    assert float(plain) == pytest.approx(0.5 * (1.0 + 0.36) / 2)

    x = torch.tensor([[1.0, 2.0, 3.0, 4.0, 100.0]])
    keep = torch.tensor([[1, 1, 1, 1, 0]], dtype=torch.bool)
    sd = math.sqrt(sum((v - 2.5) ** 2 for v in (1, 2, 3, 4)) / 3)
    assert whiten(x, keep)[0, :4].tolist() == pytest.approx([(v - 2.5) / sd for v in (1, 2, 3, 4)], abs=1e-6)
    assert whiten(x, keep, shift_mean=False)[0, :4].tolist() == pytest.approx([(v - 2.5) / sd + 2.5 for v in (1, 2, 3, 4)],
                                                                             abs=1e-6)
    assert float(masked_mean(x, keep)) == pytest.approx(2.5)


def _full_logprobs(hidden, weight, targets, temperature=1.0, softcap=None):
    logits = hidden @ weight.t()
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    logp = torch.log_softmax(logits / temperature, dim=-1)
    return logp.gather(-1, targets[..., None]).squeeze(-1), -(logp.exp() * logp).sum(-1)


@pytest.mark.parametrize("chunk", [1, 5, 7, 100])
@pytest.mark.parametrize("temperature,softcap", [(1.0, None), (0.7, 3.0)])
def test_chunked_logprobs_equal_the_full_computation(chunk, temperature, softcap):
    torch.manual_seed(1)
    hidden = torch.randn(3, 7, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (3, 7))
    upstream = torch.randn(3, 7, dtype=torch.float64)
    expected, expected_entropy = _full_logprobs(hidden, weight, targets, temperature, softcap)
    grads = torch.autograd.grad((expected * upstream).sum(), (hidden, weight))
    got, entropy = token_logprobs(hidden, weight, targets, chunk_size=chunk, temperature=temperature, softcap=softcap)
    assert torch.allclose(got, expected, atol=1e-12)
    assert torch.allclose(entropy, expected_entropy, atol=1e-12)
    got_grads = torch.autograd.grad((got * upstream).sum(), (hidden, weight))
    for a, b in zip(got_grads, grads):
        assert torch.allclose(a, b, atol=1e-12)


def test_chunked_logprobs_never_keep_the_whole_logits():
    hidden = torch.randn(4, 64, 8, requires_grad=True)
    weight = torch.randn(1000, 8)
    targets = torch.randint(0, 1000, (4, 64))
    saved: list[int] = []

    def pack(tensor):
        saved.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logps, _ = token_logprobs(hidden, weight, targets, chunk_size=32)
    assert max(saved) < 4 * 64 * 1000 / 4  # nothing near [N x T x V] is kept for backward
    logps.sum().backward()
    assert hidden.grad is not None and torch.isfinite(hidden.grad).all()
