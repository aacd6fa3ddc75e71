"""BERT training: the 80/10/10 masking rule, fill-mask, the recipe end to end (small), and that it learns."""

from __future__ import annotations

import pytest
import torch

from lmforge.io.hf_seq2seq import load_bert
from lmforge.model.bert import BertConfig, BertForMaskedLM, BertForSequenceClassification
from lmforge.tokenizer.train import train_char
from lmforge.train.losses import IGNORE_INDEX
from lmforge.train.mlm import BertRecipe, fill_mask, mask_tokens, run_bert
from lmforge.train.objective import ObjectiveConfig


def test_masking_follows_the_80_10_10_rule():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 50, (400, 250), generator=generator)
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = True
    inputs, labels = mask_tokens(ids, mask_id=60, vocab_size=50, special=special, generator=generator)
    chosen = labels != IGNORE_INDEX
    assert not chosen[:, 0].any()
    assert abs(chosen[:, 1:].float().mean().item() - 0.15) < 0.005
    assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(inputs[~chosen], ids[~chosen])
    masked = (inputs == 60)[chosen].float().mean().item()
    kept = (inputs == ids)[chosen].float().mean().item()
    assert abs(masked - 0.8) < 0.01
    assert abs(kept - (0.1 + 0.1 / 50)) < 0.01  # kept, plus random draws that hit the same token
    assert inputs.max() <= 60 and ((inputs < 50) | (inputs == 60)).all()


def test_fill_mask_reads_the_mask_positions():
    tokenizer = train_char(["abcdefgh"])
    V = tokenizer.vocab_size
    model = BertForMaskedLM(BertConfig(vocab_size=V + 1, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32, max_position_embeddings=32)).eval()
    with torch.no_grad():  # an output bias that prefers "c" whatever the input
        model.cls.predictions.bias.zero_()
        model.cls.predictions.bias[tokenizer.encode("c")[0]] = 50.0
        model.cls.predictions.bias[V] = 100.0  # the mask id itself is never proposed
    answers = fill_mask(model, tokenizer, "ab<mask>d<mask>", mask_id=V, top_k=2)
    assert len(answers) == 2 and all(a[0][0] == "c" and a[0][1] > 0.99 for a in answers)
    with pytest.raises(ValueError, match="no <mask>"):
        fill_mask(model, tokenizer, "abc", mask_id=V)


def small_recipe(tiny_data, out, steps: int, classifier_steps: int, **changes) -> BertRecipe:
    return BertRecipe(data=str(tiny_data), out_dir=str(out),
                      model=BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                       max_position_embeddings=64), seq_len=32,
                      pretrain=ObjectiveConfig(max_steps=steps, batch_size=8), train_items=100, heldout_items=40,
                      classifier=ObjectiveConfig(max_steps=classifier_steps, batch_size=8), **changes)


def test_recipe_runs_and_writes_loadable_folders(tiny_data, tmp_path):
    results = run_bert(small_recipe(tiny_data, tmp_path / "bert", 3, 3))
    assert 0.0 <= results["heldout_accuracy"] <= 1.0
    mlm, classifier = load_bert(tmp_path / "bert" / "pretrained"), load_bert(tmp_path / "bert" / "classifier")
    assert isinstance(mlm, BertForMaskedLM) and isinstance(classifier, BertForSequenceClassification)
    assert mlm.config.mask_token_id == mlm.config.vocab_size - 1
    assert classifier.labels == ["animal", "food", "people", "place"]


@pytest.mark.slow
def test_bert_classifier_beats_chance(tiny_data, tmp_path):
    """A trial run of this setting reached 37% held-out accuracy (4 topics, chance 25%; train and held-out
    sentences use different templates)."""
    torch.set_num_threads(1)
    recipe = BertRecipe(data=str(tiny_data), out_dir=str(tmp_path / "bert"),
                        model=BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=256, max_position_embeddings=64), seq_len=64,
                        pretrain=ObjectiveConfig(max_steps=300, batch_size=16), train_items=2000, heldout_items=200,
                        classifier=ObjectiveConfig(max_steps=1500, batch_size=16))
    assert run_bert(recipe)["heldout_accuracy"] >= 0.3
