"""BERT against transformers' BertForMaskedLM / BertForSequenceClassification on small random
configs: logits, and folders moving both ways."""

from __future__ import annotations

import pytest
import torch
import transformers

from lmforge.io.hf_seq2seq import load_bert, save_hf_folder
from lmforge.model.bert import BertConfig, BertForMaskedLM, BertForSequenceClassification, init_bert_weights

SHAPE = dict(vocab_size=91, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=40, type_vocab_size=2)


def inputs():
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 91, (2, 24), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    types = torch.zeros_like(ids)
    types[:, 12:] = 1
    return ids, mask, types


def test_mlm_logits_match_transformers():
    hf = transformers.BertForMaskedLM(transformers.BertConfig(**SHAPE, hidden_dropout_prob=0.0,
                                                              attention_probs_dropout_prob=0.0)).eval()
    torch.nn.init.normal_(hf.cls.predictions.bias)  # a non-zero output bias, so it is checked too
    ours = BertForMaskedLM(BertConfig(**SHAPE)).eval()
    weights = {k: v for k, v in hf.state_dict().items()
               if not k.startswith("cls.predictions.decoder") and k != "bert.embeddings.position_ids"}
    ours.load_state_dict(weights, strict=True)
    ids, mask, types = inputs()
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        got = ours(ids, mask, types)
    keep = mask.bool()  # padded positions' outputs are not defined by either
    torch.testing.assert_close(got[keep], expected[keep], atol=1e-4, rtol=0)


def test_mlm_folder_both_ways(tmp_path):
    ours = BertForMaskedLM(BertConfig(**SHAPE))
    init_bert_weights(ours, seed=2)
    torch.nn.init.normal_(ours.cls.predictions.bias)
    save_hf_folder(ours.eval(), None, tmp_path / "ours")
    hf = transformers.BertForMaskedLM.from_pretrained(tmp_path / "ours").eval()
    ids, mask, types = inputs()
    keep = mask.bool()
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits[keep],
                                   ours(ids, mask, types)[keep], atol=1e-4, rtol=0)
    hf.save_pretrained(tmp_path / "hf")
    back = load_bert(tmp_path / "hf")
    assert isinstance(back, BertForMaskedLM)
    with torch.no_grad():
        torch.testing.assert_close(back(ids, mask, types), ours(ids, mask, types), atol=1e-5, rtol=0)


def test_classifier_folder_both_ways(tmp_path):
    ours = BertForSequenceClassification(BertConfig(**SHAPE), ["neg", "pos", "neutral"])
    init_bert_weights(ours, seed=4)
    save_hf_folder(ours.eval(), None, tmp_path / "ours")
    hf = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "ours").eval()
    assert hf.config.id2label == {0: "neg", 1: "pos", 2: "neutral"}
    ids, mask, types = inputs()
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits,
                                   ours(ids, mask, types), atol=1e-4, rtol=0)
    hf.save_pretrained(tmp_path / "hf")
    back = load_bert(tmp_path / "hf")
    assert isinstance(back, BertForSequenceClassification) and back.labels == ["neg", "pos", "neutral"]
    with torch.no_grad():
        torch.testing.assert_close(back(ids, mask, types), ours(ids, mask, types), atol=1e-5, rtol=0)


def test_classifier_starts_from_the_pretrained_encoder():
    mlm = BertForMaskedLM(BertConfig(**SHAPE))
    init_bert_weights(mlm, seed=5)
    classifier = BertForSequenceClassification.from_encoder(mlm, ["a", "b"], seed=0)
    for name, value in mlm.bert.state_dict().items():
        assert torch.equal(classifier.bert.state_dict()[name], value), name


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="divisible"):
        BertConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="hidden_act"):
        BertConfig(hidden_act="swish")


def test_an_untied_mlm_head_is_refused(tmp_path):
    hf = transformers.BertForMaskedLM(transformers.BertConfig(**SHAPE, tie_word_embeddings=False))
    torch.nn.init.normal_(hf.cls.predictions.decoder.weight)
    hf.save_pretrained(tmp_path / "hf")
    with pytest.raises(ValueError, match="untied"):
        load_bert(tmp_path / "hf")
