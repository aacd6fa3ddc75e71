"""The LSTM language model: tied head, parameter count, carried state, generation."""

from __future__ import annotations

import pytest
import torch

from lmforge.model.lstm import LSTMConfig, LSTMLanguageModel, init_lstm_weights


@pytest.fixture
def model():
    model = LSTMLanguageModel(LSTMConfig(vocab_size=50, dim=16, n_layers=2))
    init_lstm_weights(model, seed=0)
    return model.eval()


def test_head_is_the_embedding_and_the_count_matches_the_config(model):
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert sum(p.numel() for p in model.parameters()) == model.config.num_parameters()


def test_forget_gate_bias_starts_at_one(model):
    D = model.config.dim
    assert torch.all(model.model.lstm.bias_ih_l0[D:2 * D] == 1) and torch.all(model.model.lstm.bias_hh_l0[D:2 * D] == 0)


def test_carried_state_reads_a_sequence_in_pieces_as_in_one_pass(model):
    ids = torch.randint(50, (3, 20))
    with torch.no_grad():
        whole, _ = model(ids)
        first, state = model(ids[:, :7])
        second, _ = model(ids[:, 7:], model.detach_state(state))
    torch.testing.assert_close(torch.cat((first, second), dim=1), whole, atol=1e-6, rtol=0)


def test_greedy_generation_follows_the_argmax(model):
    ids = torch.randint(50, (2, 5))
    out = model.generate(ids, 6)
    assert out.shape == (2, 6)
    with torch.no_grad():  # each generated token is the argmax after the prompt plus the tokens before it
        logits, _ = model(torch.cat((ids, out[:, :-1]), dim=1))
    assert torch.equal(logits[:, 4:].argmax(-1), out)


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="dim"):
        LSTMConfig(dim=0)


def test_folder_round_trip(model, tmp_path):
    from lmforge.io.hf_seq2seq import load_family, save_hf_folder

    save_hf_folder(model, None, tmp_path / "lstm")
    back = load_family(tmp_path / "lstm")
    assert isinstance(back, LSTMLanguageModel) and back.config == model.config
    assert back.lm_head.weight is back.model.embed_tokens.weight
    ids = torch.randint(50, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(back(ids)[0], model(ids)[0], atol=0, rtol=0)
