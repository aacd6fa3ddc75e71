"""Our GRPO loss against TRL's own: the same tiny model, the same batch, TRL's GRPOTrainer._compute_loss.

The model is a tiny random Llama saved as a Hugging Face folder: TRL loads it with transformers, we
load it with lmforge, and each side computes the per-token log-probabilities of the completions with
its own code (ours: hidden states and the chunked `token_logprobs`), then the loss. Loss, gradients
and the logged statistics must agree.
"""

from __future__ import annotations

import pytest
import torch

from datasets import Dataset
from tokenizers import Tokenizer as HFTokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from trl import GRPOConfig, GRPOTrainer

from lmforge.io.hf import load_pretrained
from lmforge.train.losses.rl import clip_metrics, masked_mean, policy_loss, token_logprobs

VOCAB, PAD, EOS = 62, 60, 61
PROMPT, COMPLETION = 3, 6


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    vocab = {f"w{i}": i for i in range(60)} | {"<pad>": PAD, "<eos>": EOS}
    backend = HFTokenizer(models.WordLevel(vocab, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                         tie_word_embeddings=False, pad_token_id=PAD, eos_token_id=EOS))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, tokenizer


def _trl_trainer(folder, tokenizer, tmp_path, **settings) -> GRPOTrainer:
    args = GRPOConfig(output_dir=str(tmp_path), max_completion_length=COMPLETION, num_generations=2,
                      per_device_train_batch_size=4, report_to=[], use_cpu=True, bf16=False, **settings)
    trainer = GRPOTrainer(model=str(folder), reward_funcs=lambda prompts, completions, **kw: [0.0] * len(prompts),
                          args=args, train_dataset=Dataset.from_dict({"prompt": ["w1 w2 w3"] * 4}),
                          processing_class=tokenizer)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(); one micro-batch here
    return trainer


def _batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    B = 4
    prompt_ids = torch.randint(0, 60, (B, PROMPT), generator=g)
    lengths = torch.tensor([COMPLETION, 4, 1, 5])
    mask = (torch.arange(COMPLETION)[None] < lengths[:, None]).long()
    completion_ids = torch.randint(0, 60, (B, COMPLETION), generator=g).masked_fill(mask == 0, PAD)
    return prompt_ids, completion_ids, mask, g


@pytest.mark.parametrize("loss_type,beta,epsilon_high,temperature", [
    ("grpo", 0.04, 0.2, 1.0),
    ("grpo", 0.0, 0.28, 0.7),
    ("dr_grpo", 0.1, 0.2, 1.0),
    ("dapo", 0.04, 0.28, 1.0),
    ("bnpo", 0.0, 0.2, 0.9),
])
def test_grpo_loss_equals_trl(tiny_folder, tmp_path, loss_type, beta, epsilon_high, temperature):
    folder, tokenizer = tiny_folder
    trainer = _trl_trainer(folder, tokenizer, tmp_path, loss_type=loss_type, beta=beta, epsilon=0.2,
                           epsilon_high=epsilon_high, temperature=temperature)
    ours, _ = load_pretrained(folder)
    ours.train()
    prompt_ids, completion_ids, mask, g = _batch(seed=len(loss_type))
    ids = torch.cat([prompt_ids, completion_ids], dim=1)

    hidden = ours(ids, head=False)[:, PROMPT - 1:-1]  # the positions that predict the completion
    logps, entropy = token_logprobs(hidden, ours.lm_head.weight, completion_ids, chunk_size=5, temperature=temperature)
    # old and reference log-probs away from the current ones, so ratios fall inside and outside the clip range
    old = logps.detach() + 0.3 * torch.randn(logps.shape, generator=g)
    ref = logps.detach() + 0.5 * torch.randn(logps.shape, generator=g)
    advantages = torch.randn(4, generator=g)

    inputs = {"prompt_ids": prompt_ids, "prompt_mask": torch.ones_like(prompt_ids), "completion_ids": completion_ids,
              "completion_mask": mask, "advantages": advantages, "old_per_token_logps": old,
              "ref_per_token_logps": ref, "num_items_in_batch": mask.sum()}
    theirs = trainer._compute_loss(trainer.model, inputs)
    out = policy_loss(logps, old, advantages, mask.bool(), clip_low=0.2, clip_high=epsilon_high, loss_type=loss_type,
                      ref_logps=ref if beta else None, beta=beta, max_completion_length=COMPLETION)
    assert float(out.loss.detach()) == pytest.approx(float(theirs.detach()), abs=1e-6, rel=1e-5)

    theirs.backward()
    out.loss.backward()
    their_params = dict(trainer.model.named_parameters())
    for name, param in ours.named_parameters():
        assert param.grad is not None, name
        assert torch.allclose(param.grad, their_params[name].grad, atol=1e-6, rtol=1e-4), name

    logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    ours_logged = clip_metrics(out, mask.bool()) | {"entropy": float(masked_mean(entropy, mask.bool()))}
    if beta:
        ours_logged["kl"] = float(masked_mean(out.kl.detach() * out.ratio.detach(), mask.bool()))
    for key, value in ours_logged.items():
        assert value == pytest.approx(logged[key], abs=1e-5), key
    assert logged["clip_ratio/region_mean"] > 0  # the batch did exercise clipping
