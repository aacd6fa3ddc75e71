"""Scalar heads: values per position, scores at the last non-pad token, and the Hugging Face
sequence-classification layout checked against transformers in both directions."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, GPT2Config, GPT2ForSequenceClassification, LlamaConfig, \
    LlamaForSequenceClassification

from lmforge.core.config import ModelConfig
from lmforge.io.hf import load_pretrained, load_sequence_classifier, save_sequence_classifier
from lmforge.model.heads import ScalarHeadModel, last_non_pad_index
from lmforge.model.lora import apply_lora
from lmforge.model.transformer import Transformer, init_weights

PAD = 3


def tiny(family: str = "llama", tie: bool = True) -> Transformer:
    config = ModelConfig(family=family, vocab_size=120, dim=32, n_layers=2, n_heads=4,
                         n_kv_heads=2 if family == "llama" else None, ffn_dim=64, max_seq_len=64, tie_embeddings=tie)
    model = Transformer(config)
    init_weights(model, seed=1)
    return model.eval()


def right_padded(rows: list[list[int]]) -> torch.Tensor:
    width = max(map(len, rows))
    return torch.tensor([row + [PAD] * (width - len(row)) for row in rows])


ROWS = [[5, 9, 17, 40, 2], [7, 8, 9], [11, 12, PAD, 14, 15, 16, 19]]  # a pad id inside a row is not its end


def test_last_non_pad_index_is_the_rightmost_real_token():
    ids = right_padded(ROWS)
    assert last_non_pad_index(ids, PAD).tolist() == [4, 2, 6]
    assert last_non_pad_index(ids, None).tolist() == [6, 6, 6]
    with pytest.raises(ValueError, match="only pad tokens"):
        last_non_pad_index(torch.full((1, 4), PAD), PAD)


def test_values_and_sequence_scores_agree_with_the_backbone_and_with_rows_alone():
    base = tiny()
    head = ScalarHeadModel(base, init_std=0.02)
    ids = right_padded(ROWS)
    with torch.no_grad():
        values = head(ids)  # [B, T]
        scores = head.sequence_scores(ids, PAD)
        hidden = base(ids, head=False)
    assert values.shape == ids.shape and values.dtype == torch.float32
    torch.testing.assert_close(values, (hidden @ head.score.weight.T)[..., 0])
    for row, tokens in enumerate(ROWS):  # each padded row scores as it would alone
        with torch.no_grad():
            alone = head(torch.tensor([tokens]))[0, -1]
        torch.testing.assert_close(scores[row], alone, atol=1e-5, rtol=0)
    # A new head starts at zero by default (a value head's usual start) and shares the base's weights.
    zero = ScalarHeadModel(base)
    assert torch.count_nonzero(zero(ids)) == 0 and zero.base is base
    with pytest.raises(ValueError, match="bias=False"):
        ScalarHeadModel(base, torch.nn.Linear(32, 1))


def test_lora_on_the_base_keeps_the_head_trainable():
    head = ScalarHeadModel(tiny(), init_std=0.02)
    apply_lora(head.base, "all-linear", rank=2)
    trainable = {n for n, p in head.named_parameters() if p.requires_grad}
    assert "score.weight" in trainable and all("lora_" in n for n in trainable - {"score.weight"})
    head.sequence_scores(right_padded(ROWS), PAD).sum().backward()
    assert head.score.weight.grad is not None and head.score.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("family,tie", [("llama", True), ("llama", False), ("gpt2", True)])
def test_saved_classifier_loads_in_transformers_with_equal_scores(tmp_path, family, tie):
    head = ScalarHeadModel(tiny(family, tie), init_std=0.05)
    save_sequence_classifier(head, None, tmp_path, pad_id=PAD)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["pad_token_id"] == PAD and config["id2label"] == {"0": "LABEL_0"}
    reference = AutoModelForSequenceClassification.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert reference.config.num_labels == 1
    ids = right_padded(ROWS)
    with torch.no_grad():
        mask = (torch.arange(ids.shape[1])[None, :] < torch.tensor([len(r) for r in ROWS])[:, None]).long()
        theirs = reference(ids, attention_mask=mask).logits[:, 0]
        ours = head.sequence_scores(ids, PAD)
    assert (theirs - ours).abs().max().item() < 1e-4
    again, tokenizer, pad = load_sequence_classifier(tmp_path)
    assert tokenizer is None and pad == PAD and again.config == head.config
    with torch.no_grad():
        torch.testing.assert_close(again.sequence_scores(ids, PAD), ours, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="sequence classifier"):
        load_pretrained(tmp_path)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_transformers_classifier_loads_in_lmforge(tmp_path, family):
    torch.manual_seed(0)
    if family == "llama":
        reference = LlamaForSequenceClassification(LlamaConfig(
            vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, num_labels=1, pad_token_id=PAD, tie_word_embeddings=False))
    else:
        reference = GPT2ForSequenceClassification(GPT2Config(vocab_size=120, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                                             num_labels=1, pad_token_id=PAD, resid_pdrop=0, embd_pdrop=0,
                                                             attn_pdrop=0))
    reference.eval().save_pretrained(tmp_path)
    model, _, pad = load_sequence_classifier(tmp_path)
    assert pad == PAD
    ids = right_padded(ROWS)
    with torch.no_grad():
        theirs = reference(ids).logits[:, 0]
        assert (model.sequence_scores(ids, pad) - theirs).abs().max().item() < 1e-4
