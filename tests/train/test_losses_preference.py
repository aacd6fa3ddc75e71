"""Preference losses against TRL itself (its trainers' own loss code, on the same tiny model and batch)
and against hand computations."""

from __future__ import annotations

import warnings

import mpmath
import pytest
import torch

from lmforge.core.config import ModelConfig
from lmforge.data.preference import PreferencePair
from lmforge.io.hf import load_pretrained, save_pretrained
from lmforge.model.transformer import Transformer, init_weights
from lmforge.tokenizer.completion import encode_pair
from lmforge.tokenizer.train import train_bpe
from lmforge.train.losses.preference import (bradley_terry_loss, dpo_loss, ipo_loss, kto_loss, log1mexp, orpo_loss,
                                             simpo_loss)
from lmforge.train.pairs import collate_pairs, completion_logps, encode_pairs

RECORDS = [
    {"prompt": "what colour is the sky?", "chosen": " blue", "rejected": " green red"},
    {"prompt": "the sun is", "chosen": " yes the sun is a star", "rejected": " no"},
    {"prompt": "say moon", "chosen": " moon", "rejected": " the moon is red"},
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A policy and a (different) reference model: tiny untied Llamas with a small BPE tokenizer."""
    words = "what colour is the sky blue green red sun moon star say yes no a".split()
    tokenizer = train_bpe([" ".join(words)] * 20, vocab_size=300)
    root = tmp_path_factory.mktemp("pref")
    out = []
    for name, seed in (("policy", 1), ("reference", 2)):
        config = ModelConfig(family="llama", vocab_size=tokenizer.vocab_size, dim=32, n_layers=2, n_heads=4,
                             n_kv_heads=2, ffn_dim=64, max_seq_len=64, tie_embeddings=False)
        model = Transformer(config)
        init_weights(model, seed=seed)
        with torch.no_grad():  # larger weights: log-probabilities far from uniform, losses far from log 2
            for p in model.parameters():
                p.mul_(4.0 if p.ndim == 2 else 1.0)
        save_pretrained(model, tokenizer, root / name)
        out.append(root / name)
    return out


def _trl_run(trainer) -> tuple[float, dict[str, torch.Tensor], dict]:
    rows = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    batch = trainer.data_collator(rows)
    trainer.model.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    metrics = {k: v[-1] for k, v in getattr(trainer, "_metrics", {"train": {}})["train"].items() if v}
    return float(loss.detach()), grads, metrics


def _hf(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), AutoTokenizer.from_pretrained(folder)


def _ours(folders):
    """Our policy (trainable), reference log-probs, and the lengths, on our own encoding of RECORDS."""
    policy, tokenizer = load_pretrained(folders[0])
    reference, _ = load_pretrained(folders[1])
    pairs = [PreferencePair(r["prompt"], r["chosen"], r["rejected"]) for r in RECORDS]
    encoded, skipped = encode_pairs(tokenizer, pairs, max_length=64)
    assert len(encoded) == len(RECORDS) and not skipped
    batch = collate_pairs(encoded, tokenizer.pad_id)
    policy.train()
    logps, counts, prompt_logps = completion_logps(policy, batch, prompt_too=True)
    with torch.no_grad():
        ref_logps, _, _ = completion_logps(reference, batch)
    n = len(encoded)
    # ORPO's NLL term: the chosen sequences' mean token NLL, prompt included (TRL's choice).
    nll = -(logps[:n] + prompt_logps[:n]).sum() / (counts[:n] + batch.prompt_lengths[:n] - 1).sum()
    return policy, tokenizer, (logps[:n], logps[n:]), (ref_logps[:n], ref_logps[n:]), (counts[:n], counts[n:]), nll


def _compare(loss: torch.Tensor, policy, trl_loss: float, trl_grads: dict[str, torch.Tensor]) -> None:
    assert abs(float(loss.detach()) - trl_loss) < 1e-5
    loss.backward()
    ours = {n: p.grad for n, p in policy.named_parameters()}
    assert set(ours) == set(trl_grads)
    for name, grad in ours.items():
        torch.testing.assert_close(grad, trl_grads[name], atol=1e-5, rtol=1e-4, msg=name)
    assert max(g.abs().max() for g in ours.values()) > 1e-3


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_and_ipo_match_trl_dpo_trainer(tmp_path, folders, loss_type):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    hf_policy, hf_tokenizer = _hf(folders[0])
    hf_reference, _ = _hf(folders[1])
    args = DPOConfig(output_dir=str(tmp_path), beta=0.5, loss_type=[loss_type], per_device_train_batch_size=3,
                     report_to=[], use_cpu=True, bf16=False, save_strategy="no")
    trainer = DPOTrainer(model=hf_policy, ref_model=hf_reference, args=args, train_dataset=Dataset.from_list(RECORDS),
                         processing_class=hf_tokenizer)
    trl_loss, trl_grads, trl_metrics = _trl_run(trainer)

    policy, tokenizer, (chosen, rejected), (ref_chosen, ref_rejected), (n_chosen, n_rejected), _ = _ours(folders)
    for row, record in zip(trainer.train_dataset, RECORDS):  # our tokens are TRL's tokens
        ours = encode_pair(tokenizer, record["prompt"], record["chosen"], record["rejected"])
        assert ours == (row["prompt_ids"], row["chosen_ids"], row["rejected_ids"])
    if loss_type == "sigmoid":
        result = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.5)
    else:
        result = ipo_loss(chosen, rejected, ref_chosen, ref_rejected, n_chosen, n_rejected, beta=0.5)
    assert (chosen - ref_chosen).abs().min() > 0.01  # a real test: the policy is not the reference
    _compare(result.losses.mean(), policy, trl_loss, trl_grads)
    # TRL's logged metrics, under TRL's names, from our numbers.
    margins = result.chosen_rewards - result.rejected_rewards
    assert trl_metrics["rewards/chosen"] == pytest.approx(float(result.chosen_rewards.mean()), abs=1e-5)
    assert trl_metrics["rewards/rejected"] == pytest.approx(float(result.rejected_rewards.mean()), abs=1e-5)
    assert trl_metrics["rewards/margins"] == pytest.approx(float(margins.mean()), abs=1e-5)
    assert trl_metrics["rewards/accuracies"] == pytest.approx(float((margins > 0).float().mean()), abs=1e-6)
    assert trl_metrics["logps/chosen"] == pytest.approx(float(chosen.detach().mean()), abs=1e-4)
    assert trl_metrics["logps/rejected"] == pytest.approx(float(rejected.detach().mean()), abs=1e-4)


def test_simpo_matches_trl_cpo_trainer(tmp_path, folders):
    from datasets import Dataset
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    hf_policy, hf_tokenizer = _hf(folders[0])
    args = CPOConfig(output_dir=str(tmp_path), loss_type="simpo", cpo_alpha=0.0, beta=2.0, simpo_gamma=0.5,
                     per_device_train_batch_size=3, report_to=[], use_cpu=True, bf16=False, save_strategy="no",
                     remove_unused_columns=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = CPOTrainer(model=hf_policy, args=args, train_dataset=Dataset.from_list(RECORDS),
                             processing_class=hf_tokenizer)
    trl_loss, trl_grads, _ = _trl_run(trainer)
    policy, _, (chosen, rejected), _, (n_chosen, n_rejected), _ = _ours(folders)
    result = simpo_loss(chosen / n_chosen, rejected / n_rejected, beta=2.0, gamma=0.5)
    _compare(result.losses.mean(), policy, trl_loss, trl_grads)


def test_orpo_matches_trl_orpo_trainer(tmp_path, folders):
    from datasets import Dataset
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    hf_policy, hf_tokenizer = _hf(folders[0])
    args = ORPOConfig(output_dir=str(tmp_path), beta=0.2, per_device_train_batch_size=3, report_to=[], use_cpu=True, bf16=False,
                      save_strategy="no", remove_unused_columns=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = ORPOTrainer(model=hf_policy, args=args, train_dataset=Dataset.from_list(RECORDS),
                              processing_class=hf_tokenizer)
    trl_loss, trl_grads, _ = _trl_run(trainer)
    policy, _, (chosen, rejected), _, (n_chosen, n_rejected), nll = _ours(folders)
    result = orpo_loss(chosen / n_chosen, rejected / n_rejected, nll, beta=0.2)
    _compare(result.losses.mean(), policy, trl_loss, trl_grads)


def test_losses_by_hand():
    c, r = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0])
    rc, rr = torch.tensor([-3.5, -5.0]), torch.tensor([-3.5, -2.5])
    dpo = dpo_loss(c, r, rc, rr, beta=0.5)
    margin = 0.5 * torch.tensor([(0.5) - (-0.5), 0.0 - 0.5])
    torch.testing.assert_close(dpo.losses, torch.log1p(torch.exp(-margin)))
    torch.testing.assert_close(dpo.chosen_rewards, torch.tensor([0.25, 0.0]))
    smoothed = dpo_loss(c, r, rc, rr, beta=0.5, label_smoothing=0.1)
    torch.testing.assert_close(smoothed.losses, 0.9 * torch.log1p(torch.exp(-margin)) + 0.1 * torch.log1p(torch.exp(margin)))
    ipo = ipo_loss(c, r, rc, rr, torch.tensor([2, 1]), torch.tensor([4, 5]), beta=0.25)
    torch.testing.assert_close(ipo.losses, torch.tensor([(0.25 + 0.125 - 2) ** 2, (0.0 - 0.1 - 2) ** 2]))
    simpo = simpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), beta=2.0, gamma=0.5)
    torch.testing.assert_close(simpo.losses, torch.log1p(torch.exp(-torch.tensor([1.5]))))
    x = torch.tensor([-1e-8, -0.1, -0.69, -0.7, -5.0, -50.0], dtype=torch.float64)
    with mpmath.workdps(50):
        exact = torch.tensor([float(mpmath.log(1 - mpmath.exp(mpmath.mpf(v)))) for v in x.tolist()], dtype=torch.float64)
    torch.testing.assert_close(log1mexp(x), exact, rtol=1e-9, atol=0)
    kto = kto_loss(torch.tensor([-1.0]), torch.tensor([-2.0, -3.0]), torch.tensor([-1.5]), torch.tensor([-2.0, -2.0]),
                   kl=torch.tensor(0.2), beta=1.0, desirable_weight=2.0)
    expected = torch.tensor([2 * (1 - torch.sigmoid(torch.tensor(0.3))), 1 - torch.sigmoid(torch.tensor(0.2)),
                             1 - torch.sigmoid(torch.tensor(1.2))])
    torch.testing.assert_close(kto.losses, expected)
    assert torch.equal(kto_loss(c[:1], r[:1], rc[:1], rr[:1], kl=torch.tensor(-3.0), beta=1.0).losses,
                       kto_loss(c[:1], r[:1], rc[:1], rr[:1], kl=torch.tensor(0.0), beta=1.0).losses)  # KL clamped at 0
    bt = bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(bt, torch.log1p(torch.exp(-torch.tensor([1.0, -1.0]))))
    centred = bradley_terry_loss(torch.tensor([2.0]), torch.tensor([1.0]), center_coefficient=0.01)
    torch.testing.assert_close(centred, torch.log1p(torch.exp(torch.tensor([-1.0]))) + 0.09)
