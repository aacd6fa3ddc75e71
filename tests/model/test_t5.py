"""T5 against transformers' T5ForConditionalGeneration on small random configs: logits, greedy
generation, the decoder cache, and folders moving both ways."""

from __future__ import annotations

import pytest
import torch
import transformers

from lmforge.io.hf_seq2seq import load_t5, save_hf_folder
from lmforge.model.t5 import T5Config, T5ForConditionalGeneration, init_t5_weights, relative_position_bucket

VOCAB = 97


def hf_pair(feed_forward_proj: str, tie: bool, decoder_layers: int = 3):
    """A random transformers T5 and ours holding the same weights."""
    hf_config = transformers.T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=decoder_layers, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=20, feed_forward_proj=feed_forward_proj,
        tie_word_embeddings=tie, dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    hf = transformers.T5ForConditionalGeneration(hf_config).eval()
    config = T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=decoder_layers,
                      num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
                      feed_forward_proj=feed_forward_proj, tie_word_embeddings=tie)
    ours = T5ForConditionalGeneration(config).eval()
    ours.load_state_dict({k: v for k, v in hf.state_dict().items() if "embed_tokens" not in k}, strict=True)
    return hf, ours


def inputs():
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(2, VOCAB, (2, 30), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 21:] = 0  # the second row is right-padded
    decoder_ids = torch.randint(2, VOCAB, (2, 25), generator=generator)
    return ids, mask, decoder_ids


@pytest.mark.parametrize("feed_forward_proj,tie", [("relu", True), ("gated-gelu", False)])
def test_logits_match_transformers(feed_forward_proj, tie):
    hf, ours = hf_pair(feed_forward_proj, tie)
    ids, mask, decoder_ids = inputs()
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
        got = ours(ids, decoder_ids, mask)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("decoder_layers,use_cache", [(2, True), (3, False)])
def test_greedy_generation_matches_transformers(decoder_layers, use_cache):
    # transformers 5.24's cache cannot hold more decoder layers than encoder layers; with 3 it decodes without one
    hf, ours = hf_pair("gated-gelu", True, decoder_layers)
    ids, mask, _ = inputs()
    expected = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=15, do_sample=False, num_beams=1,
                           use_cache=use_cache)
    got = ours.generate(ids, mask, max_new_tokens=15)
    assert torch.equal(got, expected)


def test_cached_decoding_equals_teacher_forcing():
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2,
                                                num_heads=4, relative_attention_num_buckets=8,
                                                relative_attention_max_distance=20)).eval()
    init_t5_weights(model, seed=0)
    ids, mask, decoder_ids = inputs()
    with torch.no_grad():
        full = model(ids, decoder_ids, mask)
        cache = model.start_cache(model.encode(ids, mask), mask)
        steps = [model.decode(decoder_ids[:, :5], cache)]  # a prefix at once, then one token at a time
        steps += [model.decode(decoder_ids[:, t:t + 1], cache) for t in range(5, decoder_ids.shape[1])]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


def test_relative_buckets_match_transformers():
    relative = torch.arange(-200, 201)[None, :]
    for bidirectional in (True, False):
        expected = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
            relative, bidirectional=bidirectional, num_buckets=32, max_distance=128)
        assert torch.equal(relative_position_bucket(relative, bidirectional, 32, 128), expected)


@pytest.mark.parametrize("tie", [True, False])
def test_our_folder_loads_in_transformers(tmp_path, tie):
    model = T5ForConditionalGeneration(T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2,
                                                num_heads=4, feed_forward_proj="gated-gelu", tie_word_embeddings=tie))
    init_t5_weights(model, seed=3)  # untied: a head different from the embedding (transformers 5 unties it on load)
    save_hf_folder(model.eval(), None, tmp_path / "t5")
    hf = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "t5").eval()
    ids, mask, decoder_ids = inputs()
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits,
                                   model(ids, decoder_ids, mask), atol=1e-4, rtol=0)


@pytest.mark.parametrize("tie", [True, False])
def test_transformers_folder_loads_in_ours(tmp_path, tie):
    hf, _ = hf_pair("relu", tie)
    hf.save_pretrained(tmp_path / "hf")
    ours = load_t5(tmp_path / "hf")
    assert ours.config.tie_word_embeddings == tie
    ids, mask, decoder_ids = inputs()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, decoder_ids, mask),
                                   hf(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits,
                                   atol=1e-4, rtol=0)


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="feed_forward_proj"):
        T5Config(feed_forward_proj="gated-tanh")
    with pytest.raises(ValueError, match="num_heads"):
        T5Config(num_heads=0)
