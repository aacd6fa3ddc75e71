"""BERT training: masked-language-model pretraining (the 80/10/10 rule) and classifier fine-tuning.

Masking (Devlin et al. 2019): `mask_prob` of the tokens that are not special are chosen as
targets; of those, 80% are replaced by the mask id, 10% by a random ordinary token, 10% kept.
The loss reads the chosen positions only. Like T5's sentinels, the mask id is an extra id after
the tokenizer's vocabulary (model vocab = tokenizer vocab + 1), so any lmforge tokenizer serves.
Each window starts with the tokenizer's BOS id, which plays BERT's [CLS].
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
from lmforge.data.shards import Split, TokenData
from lmforge.data.topics import LabelledText, labels as topic_labels, make_topic_items
from lmforge.io.hf_seq2seq import save_hf_folder
from lmforge.model.bert import BertConfig, BertForMaskedLM, BertForSequenceClassification, init_bert_weights
from lmforge.tokenizer.tokenizer import Tokenizer
from lmforge.train.config import RecipeConfig
from lmforge.train.losses import IGNORE_INDEX, token_cross_entropy
from lmforge.train.objective import ObjectiveConfig, mean_loss, train_objective
from lmforge.train.reproducibility import prepare_process


def mask_tokens(ids: torch.Tensor, *, mask_id: int, vocab_size: int, special: torch.Tensor, generator: torch.Generator,
                mask_prob: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) for MLM: ids [B, T]; `special` [B, T] bool marks positions never chosen
    (BOS, padding); random replacements are drawn from ids [0, vocab_size) that are not the mask."""
    chosen = (torch.rand(ids.shape, generator=generator) < mask_prob) & ~special
    labels = ids.masked_fill(~chosen, IGNORE_INDEX)
    roll = torch.rand(ids.shape, generator=generator)
    inputs = ids.clone()
    inputs[chosen & (roll < 0.8)] = mask_id
    randomised = chosen & (roll >= 0.8) & (roll < 0.9)
    inputs[randomised] = torch.randint(0, vocab_size, (int(randomised.sum()),), generator=generator)
    return inputs, labels


def mlm_windows(split: Split, seq_len: int, batch_size: int, *, bos_id: int, seed: int = 0) -> Iterator[torch.Tensor]:
    """Endless batches [B, seq_len] of windows drawn at random from the split, each led by BOS."""
    arrays = [a for a in split.arrays() if len(a) >= seq_len]
    if not arrays:
        raise ValueError(f"split '{split.name}' has no stretch of {seq_len} tokens")
    sizes = np.array([len(a) - seq_len + 1 for a in arrays], dtype=np.float64)
    rng = np.random.default_rng(seed)
    while True:
        rows = []
        for shard in rng.choice(len(arrays), size=batch_size, p=sizes / sizes.sum()):
            start = int(rng.integers(0, len(arrays[shard]) - seq_len + 2))
            rows.append(np.concatenate(([bos_id], np.asarray(arrays[shard][start:start + seq_len - 1], dtype=np.int64))))
        yield torch.from_numpy(np.stack(rows))


def masked_batches(windows: Iterator[torch.Tensor], *, mask_id: int, vocab_size: int, bos_id: int,
                   seed: int = 0, mask_prob: float = 0.15) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    for ids in windows:
        yield mask_tokens(ids, mask_id=mask_id, vocab_size=vocab_size, special=ids == bos_id, generator=generator,
                          mask_prob=mask_prob)


def mlm_loss(model: BertForMaskedLM, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
    device = model.cls.predictions.bias.device
    inputs, labels = (t.to(device) for t in batch)
    loss_sum, count = token_cross_entropy(model(inputs), labels)
    return loss_sum, int(count)


def fill_mask(model: BertForMaskedLM, tokenizer: Tokenizer, text: str, *, mask_id: int, marker: str = "<mask>",
              top_k: int = 5) -> list[list[tuple[str, float]]]:
    """For each `marker` in `text`, the `top_k` (token text, probability) the model fills in."""
    parts = text.split(marker)
    if len(parts) < 2:
        raise ValueError(f"the text has no {marker} to fill")
    ids = [tokenizer.bos_id if tokenizer.bos_id is not None else 0]
    positions = []
    for index, part in enumerate(parts):
        ids.extend(tokenizer.encode(part))
        if index < len(parts) - 1:
            positions.append(len(ids))
            ids.append(mask_id)
    if len(ids) > model.config.max_position_embeddings:
        raise ValueError(f"the text is {len(ids)} tokens; the model reads at most {model.config.max_position_embeddings}")
    device = model.cls.predictions.bias.device
    with torch.no_grad():
        logits = model(torch.tensor([ids], device=device))[0, positions].float()
    logits[:, tokenizer.vocab_size:] = float("-inf")  # never propose the mask id itself
    probs = torch.softmax(logits, -1)
    answers = []
    for row in probs:
        top = torch.topk(row, top_k)
        answers.append([(tokenizer.decode([int(i)]), float(p)) for p, i in zip(top.values, top.indices)])
    return answers


# --------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------
def encode_labelled(items: list[LabelledText], tokenizer: Tokenizer, labels: list[str], max_len: int
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids [N, L], attention mask [N, L], label index [N]) with BOS first and right padding."""
    bos = tokenizer.bos_id if tokenizer.bos_id is not None else 0
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    encoded = [[bos] + tokenizer.encode(item.text)[:max_len - 1] for item in items]
    L = max(len(e) for e in encoded)
    ids = torch.full((len(items), L), pad, dtype=torch.long)
    mask = torch.zeros((len(items), L), dtype=torch.long)
    for row, e in enumerate(encoded):
        ids[row, :len(e)] = torch.tensor(e)
        mask[row, :len(e)] = 1
    targets = torch.tensor([labels.index(item.label) for item in items])
    return ids, mask, targets


def classification_batches(data: tuple[torch.Tensor, torch.Tensor, torch.Tensor], batch_size: int,
                           seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    n = data[0].shape[0]
    while True:
        order = torch.randperm(n, generator=generator)
        for begin in range(0, n - batch_size + 1, batch_size):
            index = order[begin:begin + batch_size]
            yield tuple(t[index] for t in data)


def classification_loss(model: BertForSequenceClassification, batch) -> tuple[torch.Tensor, int]:
    device = model.classifier.weight.device
    ids, mask, targets = (t.to(device) for t in batch)
    loss_sum, count = token_cross_entropy(model(ids, mask)[:, None], targets[:, None])
    return loss_sum, int(count)


def accuracy(model: BertForSequenceClassification, data: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
             batch_size: int = 256) -> float:
    device = model.classifier.weight.device
    ids, mask, targets = data
    right = 0
    with torch.no_grad():
        for begin in range(0, ids.shape[0], batch_size):
            logits = model(ids[begin:begin + batch_size].to(device), mask[begin:begin + batch_size].to(device))
            right += int((logits.argmax(-1).cpu() == targets[begin:begin + batch_size]).sum())
    return right / max(1, ids.shape[0])


# --------------------------------------------------------------------------------------------
# The recipe: MLM pretraining, then a topic classifier on the pretrained encoder
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BertRecipe(RecipeConfig):
    data: str  # a folder of `lmforge prepare` (its tokenizer is the model's)
    out_dir: str = "runs/bert"
    model: BertConfig = field(default_factory=lambda: BertConfig(hidden_size=128, num_hidden_layers=3, num_attention_heads=4,
                                                                 intermediate_size=512, max_position_embeddings=256))
    seq_len: int = 128
    mask_prob: float = 0.15
    pretrain: ObjectiveConfig = field(default_factory=lambda: ObjectiveConfig(max_steps=1000, batch_size=32))
    train_items: int = 4000  # generated topic sentences (lmforge.data.topics)
    heldout_items: int = 500
    classifier: ObjectiveConfig = field(default_factory=lambda: ObjectiveConfig(max_steps=300, batch_size=32))

    def __post_init__(self) -> None:
        if not 2 <= self.seq_len <= self.model.max_position_embeddings:
            raise ValueError(f"seq_len must be in [2, model.max_position_embeddings = {self.model.max_position_embeddings}]")
        if not 0 < self.mask_prob < 1:
            raise ValueError(f"mask_prob must be in (0, 1), got {self.mask_prob}")
        if self.train_items < 1 or self.heldout_items < 1:
            raise ValueError("train_items and heldout_items must be positive")


def run_bert(recipe: BertRecipe, display: ProgressDisplay | None = None) -> dict[str, Any]:
    """The whole recipe; writes pretrained/ (BertForMaskedLM) and classifier/ (BertForSequenceClassification)
    folders, metrics and results.json under out_dir, and returns the results."""
    out = Path(recipe.out_dir)
    prepare_process(recipe.pretrain.threads, False, recipe.pretrain.seed)
    data = TokenData.open(recipe.data)
    tokenizer = Tokenizer.from_folder(data.tokenizer_folder)
    bos = tokenizer.bos_id if tokenizer.bos_id is not None else data.boundary_id
    config = recipe.model.replace(vocab_size=data.vocab_size + 1, mask_token_id=data.vocab_size,
                                  pad_token_id=tokenizer.pad_id if tokenizer.pad_id is not None else 0)
    model = BertForMaskedLM(config)
    init_bert_weights(model, seed=recipe.pretrain.seed)
    masking = dict(mask_id=config.mask_token_id, vocab_size=data.vocab_size, bos_id=bos, mask_prob=recipe.mask_prob)
    val = list(islice(masked_batches(mlm_windows(data.val, recipe.seq_len, 32, bos_id=bos, seed=1), seed=1, **masking), 4))
    results: dict[str, Any] = {"parameters": sum(p.numel() for p in model.parameters()), "config": config.to_dict()}
    if recipe.pretrain.max_steps != 0:
        batches = masked_batches(mlm_windows(data.train, recipe.seq_len, recipe.pretrain.batch_size, bos_id=bos,
                                             seed=recipe.pretrain.seed), seed=recipe.pretrain.seed, **masking)
        trained = train_objective(model, recipe.pretrain.replace(out_dir=str(out / "pretrain")), partial(next, batches),
                                  mlm_loss, evaluate=lambda: {"val_loss": mean_loss(model, mlm_loss, val)}, name="bert mlm",
                                  display=display)
        results["pretrain"] = {"steps": trained.steps, "seconds": round(trained.train_seconds, 1),
                               "val_masked_loss": trained.evals[-1]["val_loss"]}
        save_hf_folder(model, tokenizer, out / "pretrained")
    names = topic_labels()
    seed = recipe.classifier.seed
    train = encode_labelled(make_topic_items(recipe.train_items, "train", seed), tokenizer, names, recipe.seq_len)
    heldout = encode_labelled(make_topic_items(recipe.heldout_items, "heldout", seed), tokenizer, names, recipe.seq_len)
    classifier = BertForSequenceClassification.from_encoder(model, names, seed=seed)
    trained = train_objective(classifier, recipe.classifier.replace(out_dir=str(out / "classifier-train")),
                              partial(next, classification_batches(train, recipe.classifier.batch_size, seed)),
                              classification_loss, evaluate=lambda: {"heldout_accuracy": accuracy(classifier, heldout)},
                              name="bert classifier", display=display)
    results["classifier"] = {"steps": trained.steps, "seconds": round(trained.train_seconds, 1),
                             "train_items": recipe.train_items, "labels": names}
    results["heldout_accuracy"] = accuracy(classifier, heldout)
    results["heldout_items"] = recipe.heldout_items
    save_hf_folder(classifier, tokenizer, out / "classifier")
    write_text_atomically(out / "results.json", json.dumps(results, indent=2) + "\n")
    return results

