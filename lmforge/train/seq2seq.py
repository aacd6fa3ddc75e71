"""T5 training: span-corruption pretraining and sequence-to-sequence fine-tuning, with exact match.

Span corruption (Raffel et al. 2020): from a window of text, about `noise_density` of the tokens,
in spans of mean length `mean_span`, are cut out; the encoder reads the rest with one sentinel in
place of each span, the decoder writes each sentinel followed by the span it stands for:

    window   a b c d e f g h i j
    input    a b <s0> e f g <s1> j </s>
    target   <s0> c d <s1> h i </s>

Sentinels are extra ids at the top of the vocabulary, T5's convention (<extra_id_0> is the last
id): a model over a tokenizer of V ids has V + `SENTINELS` ids, and no tokenizer change is needed.

Fine-tuning reads input -> target pairs (a JSONL of {"input", "target"} or the generated tasks
of lmforge.data.synthetic); held-out exact match greedily decodes each input.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.core.files import write_text_atomically
from lmforge.core.progress import ProgressDisplay
from lmforge.data.readers import jsonl_objects
from lmforge.data.shards import Split, TokenData
from lmforge.data.synthetic import make_items
from lmforge.io.hf_seq2seq import save_hf_folder
from lmforge.model.t5 import T5Config, T5ForConditionalGeneration, init_t5_weights
from lmforge.tokenizer.tokenizer import Tokenizer
from lmforge.train.config import RecipeConfig
from lmforge.train.losses import IGNORE_INDEX, token_cross_entropy
from lmforge.train.objective import ObjectiveConfig, mean_loss, train_objective
from lmforge.train.reproducibility import prepare_process

SENTINELS = 32  # extra ids reserved for span corruption


def sentinel_id(vocab_size: int, index: int) -> int:
    """The id of <extra_id_index> in a model of `vocab_size` ids (counting down from the last)."""
    return vocab_size - 1 - index


def random_partition(total: int, parts: int, rng: np.random.Generator) -> np.ndarray:
    """`parts` positive lengths summing to `total`, uniformly among such splits."""
    cuts = np.sort(rng.choice(np.arange(1, total), size=parts - 1, replace=False)) if parts > 1 else np.array([], dtype=np.int64)
    return np.diff(np.concatenate(([0], cuts, [total]))).astype(np.int64)


def span_corrupt(tokens: np.ndarray, rng: np.random.Generator, *, vocab_size: int, eos_id: int,
                 noise_density: float = 0.15, mean_span: float = 3.0) -> tuple[list[int], list[int]]:
    """(encoder input, decoder target) of one window, as in the module docstring; spans alternate
    kept, noise, kept, noise, ... starting with kept text."""
    length = len(tokens)
    if length < 2:
        raise ValueError("span corruption needs windows of at least 2 tokens")
    noise = min(max(int(round(length * noise_density)), 1), length - 1)
    spans = min(max(int(round(noise / mean_span)), 1), SENTINELS, noise, length - noise)
    noise_lengths = random_partition(noise, spans, rng)
    keep_lengths = random_partition(length - noise, spans, rng)
    inputs: list[int] = []
    targets: list[int] = []
    position = 0
    for index, (keep, cut) in enumerate(zip(keep_lengths, noise_lengths)):
        sentinel = sentinel_id(vocab_size, index)
        inputs.extend(int(t) for t in tokens[position:position + keep])
        inputs.append(sentinel)
        position += keep
        targets.append(sentinel)
        targets.extend(int(t) for t in tokens[position:position + cut])
        position += cut
    return inputs + [eos_id], targets + [eos_id]


@dataclass(frozen=True)
class Seq2SeqBatch:
    input_ids: torch.Tensor  # [B, S] right-padded with pad_token_id
    attention_mask: torch.Tensor  # [B, S] 1 = token, 0 = padding
    labels: torch.Tensor  # [B, T] IGNORE_INDEX past each target's end


def collate(pairs: list[tuple[list[int], list[int]]], pad_id: int) -> Seq2SeqBatch:
    """Right-pad (input, target) id lists into a batch."""
    S = max(len(i) for i, _ in pairs)
    T = max(len(t) for _, t in pairs)
    input_ids = torch.full((len(pairs), S), pad_id, dtype=torch.long)
    mask = torch.zeros((len(pairs), S), dtype=torch.long)
    labels = torch.full((len(pairs), T), IGNORE_INDEX, dtype=torch.long)
    for row, (inputs, targets) in enumerate(pairs):
        input_ids[row, :len(inputs)] = torch.tensor(inputs)
        mask[row, :len(inputs)] = 1
        labels[row, :len(targets)] = torch.tensor(targets)
    return Seq2SeqBatch(input_ids, mask, labels)


def seq2seq_loss(model: T5ForConditionalGeneration, batch: Seq2SeqBatch) -> tuple[torch.Tensor, int]:
    """Summed target cross-entropy under teacher forcing, and the number of target tokens."""
    device = model.shared.weight.device
    labels = batch.labels.to(device)
    logits = model(batch.input_ids.to(device), model.shift_right(labels), batch.attention_mask.to(device))
    loss_sum, count = token_cross_entropy(logits, labels)
    return loss_sum, int(count)


def span_corruption_batches(split: Split, window: int, batch_size: int, *, vocab_size: int, eos_id: int, pad_id: int,
                            seed: int = 0, noise_density: float = 0.15, mean_span: float = 3.0) -> Iterator[Seq2SeqBatch]:
    """Endless batches of corrupted windows of `window` tokens drawn at random from the split."""
    arrays = [a for a in split.arrays() if len(a) > window]
    if not arrays:
        raise ValueError(f"split '{split.name}' has no document-free stretch of {window + 1} tokens")
    sizes = np.array([len(a) - window for a in arrays], dtype=np.float64)
    rng = np.random.default_rng(seed)
    while True:
        pairs = []
        for shard in rng.choice(len(arrays), size=batch_size, p=sizes / sizes.sum()):
            start = int(rng.integers(0, len(arrays[shard]) - window))
            pairs.append(span_corrupt(np.asarray(arrays[shard][start:start + window], dtype=np.int64), rng,
                                      vocab_size=vocab_size, eos_id=eos_id, noise_density=noise_density,
                                      mean_span=mean_span))
        yield collate(pairs, pad_id)


# --------------------------------------------------------------------------------------------
# input -> target pairs
# --------------------------------------------------------------------------------------------
def read_pairs(path: str | Path) -> list[tuple[str, str]]:
    """(input, target) pairs of a JSONL file of {"input": ..., "target": ...} objects."""
    pairs = []
    for number, record in jsonl_objects(path, 'an object with string fields "input" and "target"'):
        if not isinstance(record.get("input"), str) or not isinstance(record.get("target"), str):
            raise ValueError(f"{path}:{number}: expected an object with string fields 'input' and 'target'")
        pairs.append((record["input"], record["target"]))
    if not pairs:
        raise ValueError(f"{path}: no input/target records")
    return pairs


def task_pairs(task: str, n: int, split: str, seed: int = 0) -> list[tuple[str, str]]:
    """(question, answer) pairs of a generated task (lmforge.data.synthetic)."""
    return [(item.question, item.answer) for item in make_items(task, n, split, seed)]


def encode_pairs(pairs: list[tuple[str, str]], tokenizer: Tokenizer, eos_id: int,
                 max_len: int | None = None) -> list[tuple[list[int], list[int]]]:
    """Token ids of each pair, both ending with eos (inputs cut to `max_len`)."""
    encoded = []
    for source, target in pairs:
        ids = tokenizer.encode(source)
        if max_len is not None:
            ids = ids[:max_len - 1]
        encoded.append((ids + [eos_id], tokenizer.encode(target) + [eos_id]))
    return encoded


def pair_batches(encoded: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int,
                 seed: int = 0) -> Iterator[Seq2SeqBatch]:
    """Endless shuffled batches of encoded pairs, epoch after epoch."""
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(encoded))
        for begin in range(0, len(order) - batch_size + 1, batch_size):
            yield collate([encoded[i] for i in order[begin:begin + batch_size]], pad_id)
        if len(order) < batch_size:
            yield collate([encoded[i] for i in order], pad_id)


def generate_texts(model: T5ForConditionalGeneration, tokenizer: Tokenizer, inputs: list[str], *, eos_id: int,
                   pad_id: int, max_new_tokens: int = 32, batch_size: int = 64) -> list[str]:
    """Greedy outputs of the model for each input, decoded up to eos (sentinel ids dropped)."""
    device = model.shared.weight.device
    outputs = []
    for begin in range(0, len(inputs), batch_size):
        batch = collate([(ids, [eos_id]) for ids, _ in
                         encode_pairs([(text, "") for text in inputs[begin:begin + batch_size]], tokenizer, eos_id)], pad_id)
        generated = model.generate(batch.input_ids.to(device), batch.attention_mask.to(device),
                                   max_new_tokens=max_new_tokens)
        for row in generated[:, 1:].tolist():
            ids = row[:row.index(eos_id)] if eos_id in row else row
            outputs.append(tokenizer.decode([t for t in ids if t < tokenizer.vocab_size]))
    return outputs


def exact_match(model: T5ForConditionalGeneration, tokenizer: Tokenizer, pairs: list[tuple[str, str]], *, eos_id: int,
                pad_id: int, max_new_tokens: int = 32) -> float:
    """Share of pairs whose greedy output equals the target (surrounding whitespace ignored)."""
    outputs = generate_texts(model, tokenizer, [source for source, _ in pairs], eos_id=eos_id, pad_id=pad_id,
                             max_new_tokens=max_new_tokens)
    return sum(out.strip() == target.strip() for out, (_, target) in zip(outputs, pairs)) / max(1, len(pairs))


# --------------------------------------------------------------------------------------------
# The recipe: pretrain with span corruption, fine-tune on pairs, score held-out exact match
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class T5Recipe(RecipeConfig):
    data: str  # a folder of `lmforge prepare` (its tokenizer is the model's)
    out_dir: str = "runs/t5"
    model: T5Config = field(default_factory=lambda: T5Config(d_model=128, d_kv=32, d_ff=512, num_layers=3, num_heads=4))
    window: int = 128  # tokens per pretraining window before corruption
    noise_density: float = 0.15
    mean_span: float = 3.0
    pretrain: ObjectiveConfig = field(default_factory=lambda: ObjectiveConfig(max_steps=1000, batch_size=32))
    task: str = "reverse"  # generated task (lmforge.data.synthetic) when `pairs` is not given
    pairs: str | None = None  # JSONL of {"input", "target"}: fine-tuning data (its last `heldout_items` held out)
    train_items: int = 20000
    heldout_items: int = 500
    finetune: ObjectiveConfig = field(default_factory=lambda: ObjectiveConfig(max_steps=1000, batch_size=32))
    max_new_tokens: int = 32

    def __post_init__(self) -> None:
        if self.window < 4:
            raise ValueError(f"window must be at least 4 tokens, got {self.window}")
        if not 0 < self.noise_density < 1 or self.mean_span < 1:
            raise ValueError("noise_density must be in (0, 1) and mean_span at least 1")
        if self.train_items < 1 or self.heldout_items < 1:
            raise ValueError("train_items and heldout_items must be positive")


def fine_tuning_pairs(recipe: T5Recipe) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, held-out) pairs: the JSONL's (its last `heldout_items` held out) or the generated task's."""
    if recipe.pairs is not None:
        pairs = read_pairs(recipe.pairs)
        if len(pairs) <= recipe.heldout_items:
            raise ValueError(f"{recipe.pairs}: {len(pairs)} records leave none to train on after {recipe.heldout_items} held out")
        return pairs[:-recipe.heldout_items], pairs[-recipe.heldout_items:]
    return (task_pairs(recipe.task, recipe.train_items, "train", recipe.pretrain.seed),
            task_pairs(recipe.task, recipe.heldout_items, "heldout", recipe.pretrain.seed))


def run_t5(recipe: T5Recipe, display: ProgressDisplay | None = None) -> dict[str, Any]:
    """The whole recipe; writes pretrained/ and finetuned/ model folders, metrics and results.json
    under out_dir, and returns the results (held-out exact match and losses)."""
    out = Path(recipe.out_dir)
    prepare_process(recipe.pretrain.threads, False, recipe.pretrain.seed)
    data = TokenData.open(recipe.data)
    tokenizer = Tokenizer.from_folder(data.tokenizer_folder)
    eos = tokenizer.eos_id if tokenizer.eos_id is not None else data.boundary_id
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else eos
    config = recipe.model.replace(vocab_size=data.vocab_size + SENTINELS, pad_token_id=pad, eos_token_id=eos,
                                  decoder_start_token_id=pad)
    model = T5ForConditionalGeneration(config)
    init_t5_weights(model, seed=recipe.pretrain.seed)
    corrupt = dict(vocab_size=config.vocab_size, eos_id=eos, pad_id=pad, noise_density=recipe.noise_density,
                   mean_span=recipe.mean_span)
    val = list(islice(span_corruption_batches(data.val, recipe.window, 32, seed=1, **corrupt), 4))
    results: dict[str, Any] = {"parameters": model.num_parameters(), "config": config.to_dict()}
    if recipe.pretrain.max_steps != 0:
        trained = train_objective(
            model, recipe.pretrain.replace(out_dir=str(out / "pretrain")),
            partial(next, span_corruption_batches(data.train, recipe.window, recipe.pretrain.batch_size,
                                                  seed=recipe.pretrain.seed, **corrupt)),
            seq2seq_loss, evaluate=lambda: {"val_loss": mean_loss(model, seq2seq_loss, val)}, name="t5 pretrain", display=display)
        results["pretrain"] = {"steps": trained.steps, "seconds": round(trained.train_seconds, 1),
                               "val_loss": trained.evals[-1]["val_loss"]}
        save_hf_folder(model, tokenizer, out / "pretrained")
    train_pairs, heldout_pairs = fine_tuning_pairs(recipe)
    encoded = encode_pairs(train_pairs, tokenizer, eos)
    score = dict(eos_id=eos, pad_id=pad, max_new_tokens=recipe.max_new_tokens)
    probe = heldout_pairs[:100]
    trained = train_objective(
        model, recipe.finetune.replace(out_dir=str(out / "finetune")),
        partial(next, pair_batches(encoded, recipe.finetune.batch_size, pad, recipe.finetune.seed)),
        seq2seq_loss, evaluate=lambda: {"heldout_exact_match_100": exact_match(model, tokenizer, probe, **score)},
        name="t5 finetune", display=display)
    results["finetune"] = {"steps": trained.steps, "seconds": round(trained.train_seconds, 1),
                           "train_pairs": len(train_pairs)}
    results["heldout_exact_match"] = exact_match(model, tokenizer, heldout_pairs, **score)
    results["heldout_items"] = len(heldout_pairs)
    results["examples"] = [{"input": source, "target": target, "output": output} for (source, target), output in
                           zip(heldout_pairs[:8], generate_texts(model, tokenizer, [s for s, _ in heldout_pairs[:8]],
                                                                  **score))]
    save_hf_folder(model, tokenizer, out / "finetuned")
    write_text_atomically(out / "results.json", json.dumps(results, indent=2) + "\n")
    return results
