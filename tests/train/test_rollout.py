"""Rollouts through the engine: groups, stopping, masks and positions that line up with the sampler."""

from __future__ import annotations

import torch

from lmforge.infer.engine import Engine
from lmforge.tokenizer.completion import encode_prompt
from lmforge.train.rollout import sample

SYSTEM = {"role": "system", "content": "Answer with only the final answer."}


def _prompts(tokenizer, questions):
    return [encode_prompt(tokenizer, [SYSTEM, {"role": "user", "content": q}]) for q in questions]


def test_groups_stop_on_the_end_token_and_keep_it(smollm):
    model, tokenizer = smollm
    prompts = _prompts(tokenizer, ["What is the capital of Italy?", "What is the capital of France?"])
    engine = Engine(model, tokenizer, max_batch_size=4)  # fewer rows than completions: a queue
    rollout = sample(engine, prompts, group_size=3, max_new_tokens=12, temperature=0.0)  # greedy: short answers
    assert len(rollout) == 6 and rollout.prompt_index == [0, 0, 0, 1, 1, 1]
    assert rollout.prompt_ids[:3] == [prompts[0]] * 3 and rollout.prompt_ids[3] == prompts[1]
    assert rollout.stopped[3:] == [True] * 3, rollout.texts  # "The capital of France is Paris." and the end token
    for ids, text, logps, stopped in zip(rollout.completion_ids, rollout.texts, rollout.sampled_logps, rollout.stopped):
        assert len(ids) == len(logps) and (len(ids) <= 12 if stopped else len(ids) == 12)
        assert (ids[-1] in tokenizer.eos_ids) == stopped  # the end token is the policy's last token, and kept
        assert not any(t in tokenizer.eos_ids for t in ids[:-1])
        assert text == tokenizer.decode(ids[:-1] if stopped else ids) and "<|im_end|>" not in text
    assert rollout.texts[3] == "The capital of France is Paris."
    assert not engine.active and not model.training  # engine idle; the model's mode is restored

    draws = [sample(engine, prompts, group_size=3, max_new_tokens=4, temperature=1.0,
                    generator=torch.Generator().manual_seed(0)) for _ in range(2)]
    assert draws[0].completion_ids == draws[1].completion_ids  # seeded: reproducible
    assert len({tuple(c) for c in draws[0].completion_ids}) > 2  # each completion has its own seed
    assert not any(draws[0].stopped) and all(len(c) == 4 for c in draws[0].completion_ids)  # cut at max_new_tokens
    metrics = draws[0].metrics()
    assert metrics["completions/max_length"] == 4 and metrics["completions/clipped_ratio"] == 1.0
    metrics = rollout.metrics()
    assert metrics["completions/clipped_ratio"] == 0.5
    assert metrics["completions/mean_terminated_length"] == len(rollout.completion_ids[3])
    assert metrics["completions/mean_length"] == sum(map(len, rollout.completion_ids)) / 6


def test_batch_positions_and_masks_reproduce_the_sampler(smollm):
    model, tokenizer = smollm
    prompts = _prompts(tokenizer, ["Reverse the word \"planet\".", "Name a colour.", "What is 7 * 8?"])
    engine = Engine(model, tokenizer, max_batch_size=8)
    model.train()
    rollout = sample(engine, prompts, group_size=2, max_new_tokens=6,
                     temperature=1.0, generator=torch.Generator().manual_seed(3))
    assert model.training  # restored
    model.eval()
    batch = rollout.batch(tokenizer.pad_id)
    lengths = [len(c) for c in rollout.completion_ids]
    assert batch.mask.sum(1).tolist() == lengths
    with torch.no_grad():
        logits = model(batch.ids)  # the plain full-vocabulary forward as the reference
    picked = logits.gather(1, batch.positions[..., None].expand(-1, -1, logits.shape[-1]))
    logps = torch.log_softmax(picked.float(), -1).gather(-1, batch.targets[..., None]).squeeze(-1)
    for row, sampled in enumerate(rollout.sampled_logps):
        assert torch.allclose(logps[row, :len(sampled)], torch.tensor(sampled), atol=2e-3), row
        assert batch.targets[row, :lengths[row]].tolist() == rollout.completion_ids[row]
    # a sub-batch keeps the same rows, trimmed to their own length
    sub = batch.select([1, 4])
    assert sub.mask.shape[1] == max(lengths[1], lengths[4])
    assert torch.equal(sub.targets[sub.mask], batch.targets[[1, 4]][batch.mask[[1, 4]]])
    assert sub.ids.shape[1] == int(sub.positions[sub.mask].max()) + 1


def test_inference_twin_merges_adapters_and_follows_training(tiny_chat_model):
    from lmforge.io.hf import load_pretrained
    from lmforge.model.lora import apply_lora, lora_state_dict
    from lmforge.train.rollout import inference_twin

    model, _ = load_pretrained(tiny_chat_model)
    apply_lora(model, "all-linear", rank=4, alpha=8)
    ids = torch.randint(0, model.config.vocab_size, (2, 9))

    def perturb():
        with torch.no_grad():
            for param in lora_state_dict(model).values():
                param.add_(0.05 * torch.randn_like(param))

    perturb()
    twin = inference_twin(model, torch.float32)
    with torch.no_grad():
        assert torch.allclose(twin(ids), model(ids), atol=1e-5)
        perturb()  # training moves on; the refreshed twin follows, in place
        assert not torch.allclose(twin(ids), model(ids), atol=1e-3)
        assert inference_twin(model, torch.float32, twin) is twin
        assert torch.allclose(twin(ids), model(ids), atol=1e-5)
        half = inference_twin(model, torch.bfloat16)
        assert half.lm_head.weight.dtype == torch.bfloat16 and not any(n.endswith("lora_A.weight") for n, _ in
                                                                          half.named_parameters())
        assert torch.allclose(half(ids).float(), model(ids), atol=0.1)
