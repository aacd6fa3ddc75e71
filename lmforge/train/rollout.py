"""Rollouts: several sampled completions per prompt from the KV-cache engine, and their tensors.

    rollout = sample(engine, prompt_ids, group_size=8, max_new_tokens=64, temperature=1.0, top_p=None)
    batch = rollout.batch(pad_id)          # ids, targets, mask, positions for the training forward

Each completion is `group_size` consecutive entries (one group per prompt, the layout GRPO's
group advantages expect). Sampling goes through `lmforge.infer.Engine`'s public calls (prepare,
admit, step, release) with a seed per completion drawn from a generator (by default torch's global
one, so a resumed run that restores the RNG state samples the same completions). Generation stops
on any of the end ids (by default the tokenizer's end-of-sequence / end-of-turn ids) or at
`max_new_tokens`. The end token is the policy's last action and is kept in `completion_ids` (the
policy learns to stop); the completion text leaves it out. `sampled_logps` are the sampler's
log-probabilities of the drawn tokens (the model's, before temperature and truncation), kept to check
that the training forward reproduces them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lmforge.infer.engine import Engine
from lmforge.infer.sampling import SamplingParams
from lmforge.model.lora import lora_modules, merged_state_dict
from lmforge.model.transformer import Transformer

__all__ = ["Rollout", "RolloutBatch", "inference_twin", "sample"]


@dataclass
class RolloutBatch:
    """Tensors of completions for a training forward (right-padded).

    ids [N, L] prompt + completion tokens; targets [N, C] the completion tokens; mask [N, C] true on
    the policy's tokens; positions [N, C] the index in `ids` of the position whose output predicts
    each target (prompt length - 1 + j)."""

    ids: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor

    def select(self, rows: torch.Tensor | Sequence[int]) -> "RolloutBatch":
        """A sub-batch of rows, trimmed to its own longest sequence and completion."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        mask = self.mask[rows]
        width = int(mask.sum(1).max()) if mask.numel() else 0
        length = int(self.positions[rows][mask].max()) + 1 if mask.any() else 1  # the last target is not an input
        return RolloutBatch(self.ids[rows, :length], self.targets[rows, :width], mask[:, :width],
                            self.positions[rows, :width])

    def to(self, device: torch.device | str) -> "RolloutBatch":
        return RolloutBatch(self.ids.to(device), self.targets.to(device), self.mask.to(device), self.positions.to(device))


@dataclass
class Rollout:
    """Completions of `len(prompt_ids) // group_size` prompts, `group_size` per prompt, in order."""

    prompt_ids: list[list[int]]  # per completion (each prompt repeated group_size times)
    completion_ids: list[list[int]]  # the policy's tokens, the end token included when it stopped
    texts: list[str]  # decoded completions without the end token
    sampled_logps: list[list[float]]  # per completion token, as the sampler computed it
    stopped: list[bool]  # True: ended with an end token; False: cut at max_new_tokens
    group_size: int

    def __len__(self) -> int:
        return len(self.completion_ids)

    @property
    def prompt_index(self) -> list[int]:
        """Which prompt each completion answers."""
        return [i // self.group_size for i in range(len(self))]

    def batch(self, pad_id: int) -> RolloutBatch:
        n = len(self)
        if n == 0:
            raise ValueError("an empty rollout has no batch")
        width = max(max(len(c) for c in self.completion_ids), 1)
        length = max(len(p) + len(c) for p, c in zip(self.prompt_ids, self.completion_ids))
        ids = torch.full((n, length), pad_id, dtype=torch.long)
        targets = torch.full((n, width), pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.bool)
        positions = torch.zeros((n, width), dtype=torch.long)
        for row, (prompt, completion) in enumerate(zip(self.prompt_ids, self.completion_ids)):
            whole = list(prompt) + list(completion)
            ids[row, :len(whole)] = torch.tensor(whole, dtype=torch.long)
            if completion:
                targets[row, :len(completion)] = torch.tensor(completion, dtype=torch.long)
                mask[row, :len(completion)] = True
            positions[row] = torch.arange(width) + len(prompt) - 1
            positions[row, len(completion):] = len(prompt) - 1  # padding points at a real position; masked out
        return RolloutBatch(ids, targets, mask, positions)

    def metrics(self) -> dict[str, float]:
        """TRL's completion statistics: lengths (in tokens, the end token included) and the share cut
        off at max_new_tokens."""
        lengths = [len(c) for c in self.completion_ids]
        terminated = [n for n, stopped in zip(lengths, self.stopped) if stopped]
        return {"completions/mean_length": sum(lengths) / len(lengths),
                "completions/min_length": float(min(lengths)),
                "completions/max_length": float(max(lengths)),
                "completions/clipped_ratio": 1 - len(terminated) / len(lengths),
                "completions/mean_terminated_length": sum(terminated) / len(terminated) if terminated else 0.0}


def sample(engine: Engine, prompt_ids: Sequence[Sequence[int]], *, group_size: int, max_new_tokens: int,
           temperature: float = 1.0, top_p: float | None = None, top_k: int | None = None,
           end_ids: frozenset[int] | None = None, generator: torch.Generator | None = None) -> Rollout:
    """`group_size` completions of every prompt (token ids), generated in batches of the engine's
    rows. The model is put in eval mode while sampling and returned to the mode it was in."""
    if group_size < 1:
        raise ValueError(f"group_size must be at least 1, got {group_size}")
    if not prompt_ids:
        raise ValueError("no prompts to sample from")
    if engine.active:
        raise RuntimeError("sample() needs an idle engine")
    tokenizer = engine.tokenizer
    ends = frozenset(tokenizer.eos_ids if end_ids is None else end_ids)
    if not ends:
        raise ValueError("no end-of-sequence id to stop on: give end_ids")
    prompts = [list(p) for p in prompt_ids for _ in range(group_size)]
    for prompt in prompt_ids:  # fail before generating anything
        engine.check_length(max(len(prompt), 1), max_new_tokens)
    seeds = torch.randint(0, 2**62, (len(prompts),), generator=generator).tolist()
    done: list[tuple[list[int], list[float], bool] | None] = [None] * len(prompts)
    owner: dict[int, int] = {}
    queue = list(range(len(prompts)))
    model = engine.model
    was_training = model.training
    model.eval()
    try:
        while queue or engine.active:
            joining = []
            while queue and len(joining) < engine.free_rows:
                index = queue.pop(0)
                params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                                        seed=seeds[index], logprobs=0, stop_token_ids=frozenset())  # ends: handled here
                joining.append(engine.prepare(prompts[index], params))
                owner[id(joining[-1])] = index
            engine.admit(joining)
            for seq in list(engine.active):
                stopped = bool(seq.token_ids) and seq.token_ids[-1] in ends
                if stopped or seq.finished:
                    logps = [entry.logprob for entry in (seq.logprobs or [])]
                    done[owner.pop(id(seq))] = (list(seq.token_ids), logps, stopped)
                    engine.release(seq)
            if engine.active:
                engine.step()
    finally:
        for seq in list(engine.active):
            engine.release(seq)
        model.train(was_training)
    completions = [entry for entry in done if entry is not None]
    texts = [tokenizer.decode(ids[:-1] if stopped else ids) for ids, _, stopped in completions]
    return Rollout(prompts, [c[0] for c in completions], texts, [c[1] for c in completions],
                   [c[2] for c in completions], group_size)


@torch.no_grad()
def inference_twin(model: Transformer, dtype: torch.dtype, twin: Transformer | None = None) -> Transformer:
    """A plain copy of `model` to sample from: LoRA adapters merged in, weights in `dtype`.

    Sampling from it instead of the model in training skips the adapters' extra matmuls and, in
    bfloat16, runs the matmuls on the CPU's bf16 units (AMX): about twice as fast per rollout on the
    embedded model, measured (int8/int4 twins, `lmforge.model.quant`, are slower than float at the
    batch sizes of rollouts). Given `twin` (an earlier result for the same model), its weights are
    refreshed in place: the trained parameters (every one in full fine-tuning), and the LoRA layers
    as base weight + adapter update."""
    if twin is None:
        weights = {k: v.to(dtype) for k, v in merged_state_dict(model).items()}
        return Transformer.from_state_dict(model.config, weights, device=model.lm_head.weight.device).eval()
    targets = dict(twin.named_parameters())
    for name, param in model.named_parameters():
        if param.requires_grad and name in targets:
            targets[name].copy_(param)
    for name, layer in lora_modules(model).items():
        twin.get_submodule(name).weight.copy_(layer.weight + layer.delta_weight())
    return twin

