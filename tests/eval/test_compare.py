"""`lmforge compare`'s measurements and report on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmforge.core.config import ModelConfig
from lmforge.eval.compare import (KEY_LEN, decode_cost, position_verdict, probe_windows, recall_probe, sample,
                                  write_report)
from lmforge.model.lstm import LSTMConfig, LSTMLanguageModel
from lmforge.model.t5 import T5Config, T5ForConditionalGeneration
from lmforge.model.transformer import Transformer
from lmforge.tokenizer.train import train_char

V, T = 30, 48
DISTANCE = 10


class CopyOracle(Transformer):
    """Predicts token t + 1 as the token KEY_LEN + DISTANCE places before it: perfect recall of
    the probe's key at DISTANCE, nothing else."""

    def forward(self, ids, *args, **kwargs):
        logits = torch.zeros(*ids.shape, V)
        lag = KEY_LEN + DISTANCE - 1  # target t + 1 copies position t + 1 - (KEY_LEN + DISTANCE)
        logits[:, lag:] = 50.0 * torch.nn.functional.one_hot(ids[:, :-lag], V).float()
        return logits


def windows():
    return torch.randint(4, V, (6, T + 1), generator=torch.Generator().manual_seed(0))


def test_probe_and_control_differ_only_in_the_first_copy():
    probe, control = probe_windows(windows(), DISTANCE, range(4, V), seed=1)
    assert torch.equal(probe[:, -KEY_LEN:], control[:, -KEY_LEN:])
    first = T + 1 - 2 * KEY_LEN - DISTANCE
    assert torch.equal(probe[:, first:first + KEY_LEN], probe[:, -KEY_LEN:])
    differs = (probe != control).any(dim=0).nonzero().flatten()
    assert differs.min() >= first and differs.max() < first + KEY_LEN
    with pytest.raises(ValueError, match="does not fit"):
        probe_windows(windows(), T, range(4, V))


def test_recall_probe_scores_a_perfect_copier():
    oracle = CopyOracle(ModelConfig(vocab_size=V, dim=8, n_layers=1, n_heads=2, max_seq_len=64))
    result = recall_probe(oracle, windows(), [DISTANCE, DISTANCE + 3], range(4, V))
    assert result[DISTANCE]["loss"] < 1e-3 and result[DISTANCE]["p_correct"] > 0.99
    assert result[DISTANCE]["control_loss"] > 10
    assert result[DISTANCE + 3]["loss"] > 10  # the key is elsewhere: the oracle copies the wrong tokens


def tiny_models():
    decoder = Transformer(ModelConfig(vocab_size=V, dim=16, n_layers=1, n_heads=2, max_seq_len=64)).eval()
    lstm = LSTMLanguageModel(LSTMConfig(vocab_size=V, dim=16, n_layers=1)).eval()
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=V, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                             pad_token_id=3, decoder_start_token_id=3, eos_token_id=0)).eval()
    return {"decoder": decoder, "lstm": lstm, "t5": t5}


def test_decode_cost_and_samples_for_every_family():
    tokenizer = train_char(["abcdefghijklmnopqrstuvwxyz"])
    for family, model in tiny_models().items():
        costs = decode_cost(model, [8, 24], new_tokens=4, repeats=1, vocab=V)
        assert list(costs) == [8, 24] and all(c > 0 for c in costs.values()), family
        assert isinstance(sample(model, tokenizer, "abc", 5), str)


def test_position_verdict_says_which_way_it_went():
    flat = np.full(64, 2.0)
    falling = np.linspace(3.0, 1.0, 64)
    assert position_verdict({"decoder": falling, "lstm": flat}).startswith("The transformer keeps improving")
    assert position_verdict({"decoder": flat, "lstm": falling}).startswith("At this scale")
    rising, rising_faster = np.linspace(1.0, 1.1, 64), np.linspace(1.0, 1.5, 64)
    verdict = position_verdict({"decoder": rising, "lstm": rising_faster})  # less worse is not improving
    assert verdict.startswith("At this scale") and "decoder's loss rises by" in verdict


def test_report_has_its_tables_and_plots(tmp_path):
    summary = {f: {"parameters": 100, "steps": 10, "flops": 1e9, "train_seconds": 5.0, "tokens_per_s": 1000.0,
                   "val_loss": 2.0, "val_loss_second_half": 1.9, "flops_share": share}
               for f, share in (("decoder", 1.0), ("lstm", 1.0), ("t5", 0.5))}
    records = {f: [{"flops": 1e8 * i, "time_s": i, "val_loss": 3.0 - 0.1 * i} for i in range(1, 4)] for f in summary}
    curves = {"decoder": np.linspace(3, 2, T), "lstm": np.full(T, 2.5), "t5": np.r_[np.full(T // 2, np.nan), np.full(T // 2, 2.2)]}
    recall = {f: {8: {"loss": 1.0, "control_loss": 3.0, "p_correct": 0.4}} for f in summary}
    decode = {f: {16: 0.5, 32: 0.7} for f in summary}
    samples = {f: [("def ", "x")] for f in summary}
    report = write_report(tmp_path, summary, records, curves, recall, decode, samples, extra="## BERT\n\nnothing")
    text = report.read_text()
    assert "| t5 | 100 |" in text and "t5 (50%)" in text and "The transformer keeps improving" in text and "## BERT" in text
    for name in ("loss_vs_flops", "loss_vs_time", "loss_per_position", "recall_probe", "decode_cost"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
