"""Truncated BPTT: contiguous streams, state carried and reset, a loss that falls; the LSTM trained by
the pretraining loop (checkpoints, resume, validation, the CLI)."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
import torch

from lmforge.cli.main import main
from lmforge.data.shards import TokenData
from lmforge.io.checkpoint import latest_checkpoint, load_train_state
from lmforge.io.hf_seq2seq import load_lstm
from lmforge.model.lstm import LSTMConfig, LSTMLanguageModel, init_lstm_weights
from lmforge.train.config import OptimConfig, PretrainConfig
from lmforge.train.objective import ObjectiveConfig, train_objective
from lmforge.train.pretrain import pretrain
from lmforge.train.recurrent import (CarriedState, CarriedStateLoss, SplitTokens, StreamLoader, split_tokens,
                                     stream_batches, stream_loss)
from run_helpers import tiny_config, train_losses, write_config


def test_streams_continue_window_after_window_and_restart_fresh():
    tokens = np.arange(41)
    batches = stream_batches(tokens, batch_size=2, seq_len=5)  # 2 streams of 20 tokens: 4 windows each
    seen = [next(batches) for _ in range(5)]
    assert seen[0][2] and not any(fresh for _, _, fresh in seen[1:4]) and seen[4][2]
    assert seen[0][0].tolist() == [[0, 1, 2, 3, 4], [20, 21, 22, 23, 24]]
    assert seen[1][0][:, 0].tolist() == [5, 25]  # the next window continues each stream
    assert torch.equal(seen[0][1][:, :-1], seen[0][0][:, 1:])
    assert torch.equal(seen[4][0], seen[0][0])


def test_segments_jump_to_random_places_with_a_fresh_state_and_resume_exactly():
    tokens = np.arange(1001)
    loader = StreamLoader(tokens, seq_len=5, batch_size=3, segment_windows=2, seed=7)
    seen = [loader.next_batch() for _ in range(6)]
    assert [fresh for _, _, fresh in seen] == [True, False] * 3
    for first, second in zip(seen[0::2], seen[1::2]):  # inside a segment each stream reads on
        assert torch.equal(second[0][:, 0], first[0][:, 0] + 5)
        assert torch.equal(first[1][:, :-1], first[0][:, 1:])
    assert not torch.equal(seen[0][0], seen[2][0])  # a new segment starts elsewhere
    assert int(max(b[1].max() for b in seen)) <= 1000
    resumed = StreamLoader(tokens, seq_len=5, batch_size=3, segment_windows=2, seed=7)
    resumed.load_state_dict({"window": 1, "passes": 1})
    assert torch.equal(resumed.next_batch()[0], seen[3][0]) and torch.equal(resumed.next_batch()[0], seen[4][0])
    with pytest.raises(ValueError, match="segment_windows"):
        StreamLoader(tokens, seq_len=5, batch_size=3, segment_windows=0)
    with pytest.raises(ValueError, match="too few"):
        StreamLoader(np.arange(8), seq_len=5, batch_size=3, segment_windows=2)


def test_carried_state_is_dropped_on_a_fresh_window():
    model = LSTMLanguageModel(LSTMConfig(vocab_size=10, dim=8, n_layers=1))
    loss = CarriedStateLoss()
    x = torch.randint(10, (2, 4))
    loss(model, (x, x, True))
    carried, _ = loss(model, (x, x, False))
    fresh, _ = loss(model, (x, x, True))
    again, _ = CarriedStateLoss()(model, (x, x, True))
    assert not torch.allclose(carried, fresh) and torch.allclose(fresh, again)


def test_lstm_training_lowers_the_stream_loss(tiny_data, tmp_path):
    data = TokenData.open(tiny_data)
    model = LSTMLanguageModel(LSTMConfig(vocab_size=data.vocab_size, dim=32, n_layers=1))
    init_lstm_weights(model, seed=0)
    val = split_tokens(data.val, 4000)
    before = stream_loss(model, val, seq_len=32)
    config = ObjectiveConfig(out_dir=str(tmp_path), max_steps=40, batch_size=8,
                             optim=OptimConfig(lr=1e-2))
    train_objective(model, config, partial(next, stream_batches(split_tokens(data.train), 8, 32)), CarriedStateLoss())
    assert stream_loss(model, val, seq_len=32) < before - 0.5


# --------------------------------------------------------------------------------------------
# The LSTM in the pretraining loop (lmforge pretrain, architecture: lstm)
# --------------------------------------------------------------------------------------------
def test_stream_loader_resumes_and_gives_each_rank_its_own_streams():
    tokens = np.arange(81)
    whole = StreamLoader(tokens, seq_len=5, batch_size=4)  # 4 streams of 20 tokens
    ranks = [StreamLoader(tokens, seq_len=5, batch_size=2, rank=r, world=2) for r in (0, 1)]
    first = whole.next_batch()
    halves = [r.next_batch() for r in ranks]
    assert torch.equal(torch.cat([h[0] for h in halves]), first[0]) and all(h[2] for h in halves)
    for _ in range(5):
        whole.next_batch()
    again = StreamLoader(tokens, seq_len=5, batch_size=4)
    again.load_state_dict(whole.state_dict())
    assert whole.state_dict() == {"window": 2, "passes": 1}
    assert all(torch.equal(a, b) for a, b in zip(again.next_batch()[:2], whole.next_batch()[:2]))


def test_split_tokens_reads_across_shards_like_the_concatenated_array(tiny_data):
    data = TokenData.open(tiny_data)
    tokens = split_tokens(data.train)
    index = np.array([[0, 1, len(tokens) - 1], [5, len(tokens) // 2, 7]])
    assert np.array_equal(SplitTokens(data.train)[index], tokens[index]) and len(SplitTokens(data.train)) == len(tokens)


def test_the_carried_state_is_the_state_of_reading_the_windows_in_one_go():
    torch.manual_seed(0)
    model = LSTMLanguageModel(LSTMConfig(vocab_size=50, dim=16, n_layers=2))
    tokens = np.random.default_rng(0).integers(0, 50, 3 * 4 * 10 + 1)
    loader, carried = StreamLoader(tokens, seq_len=4, batch_size=3), CarriedState()
    windows = [loader.next_batch() for _ in range(3)]
    logits = [carried.logits(model, w) for w in windows]
    whole = torch.cat([w[0] for w in windows], dim=1)  # the first 12 tokens of each stream
    expected, state = model(whole)
    assert torch.allclose(torch.cat(logits, dim=1), expected, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(carried.state, state))
    assert not carried.state[0].requires_grad  # truncated: the graph stops at the window


def lstm_recipe(tiny_data, out, **overrides):
    return PretrainConfig.from_dict(tiny_config(
        tiny_data, out, **{"architecture": "lstm", "lstm": {"dim": 32, "n_layers": 2}, "max_steps": 8,
                           "grad_accum": 2, "eval_every": 4, "schedule": {"name": "constant", "warmup_steps": 2},
                           "optim": {"name": "adamw", "lr": 1e-2}, "plot": False, "eval_tokens": 512,
                           "lstm_segment_windows": 3, **overrides}))


def test_lstm_pretrain_checkpoint_resume_equals_an_uninterrupted_run(tiny_data, tmp_path):
    whole = pretrain(lstm_recipe(tiny_data, tmp_path / "whole"), show_progress=False)
    pretrain(lstm_recipe(tiny_data, tmp_path / "cut", max_steps=4), show_progress=False)
    state = load_train_state(latest_checkpoint(tmp_path / "cut"))
    assert state["loader"] == {"window": 2, "passes": 2} and state["carried_state"]["h"].shape == (2, 4, 32)
    resumed = pretrain(lstm_recipe(tiny_data, tmp_path / "cut"), resume=True, show_progress=False)
    expected, got = train_losses(tmp_path / "whole"), train_losses(tmp_path / "cut")
    assert sorted(got) == list(range(1, 9)) and got == expected
    assert expected[8] < expected[1]
    assert [e["val_loss"] for e in resumed.evals] == [e["val_loss"] for e in whole.evals[1:]]
    theirs, ours = load_lstm(whole.checkpoint), load_lstm(resumed.checkpoint)
    assert all(torch.equal(a, b) for a, b in zip(theirs.state_dict().values(), ours.state_dict().values()))
    records = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("prompt") == "ROMEO:" and len(r["sample"]) > 0 for r in records)


def test_lstm_pretrain_without_a_carried_state_differs(tiny_data, tmp_path, monkeypatch):
    """The state really carries: dropping it before every window changes the losses after the first."""
    def recipe(name):
        return lstm_recipe(tiny_data, tmp_path / name, max_steps=3, grad_accum=1, sample_prompts=[])

    carried = pretrain(recipe("carried"), show_progress=False)
    monkeypatch.setattr(CarriedState, "logits", lambda self, model, batch: model(batch[0])[0])
    dropped = pretrain(recipe("dropped"), show_progress=False)
    a, b = train_losses(tmp_path / "carried"), train_losses(tmp_path / "dropped")
    assert a[1] == b[1] and a[2] != b[2] and carried.steps == dropped.steps == 3


def test_pretrain_cli_trains_an_lstm_and_writes_its_cost(tiny_data, tmp_path, capsys):
    path = write_config(tmp_path / "c.yaml", tiny_config(tiny_data, tmp_path / "run", max_steps=3, plot=False,
                                                         sample_prompts=[], eval_tokens=512))
    assert main(["pretrain", "--config", str(path), "architecture=lstm", "lstm.dim=16", "lstm.n_layers=1"]) == 0
    assert "try: lmforge lstm-generate --model" in capsys.readouterr().out
    model = load_lstm(latest_checkpoint(tmp_path / "run"))
    cost = json.loads((tmp_path / "run" / "cost.json").read_text())
    assert cost["flops_per_token"] == 6 * (8 * 16 * 16 + model.config.vocab_size * 16)
    assert cost["parameters"] == sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match="fsdp"):
        PretrainConfig.from_dict(tiny_config(tiny_data, tmp_path / "x", architecture="lstm", distributed="fsdp"))



@pytest.mark.slow
def test_lstm_under_ddp_two_processes_match_one_process(tiny_data, tmp_path):
    """Rank r reads streams r*B..(r+1)*B-1 of the 2B the single process reads, each with its own carried state."""
    from run_helpers import start_pretrain
    from test_distributed import TORCHRUN

    def recipe(name, batch_size):
        return write_config(tmp_path / f"{name}.yaml", tiny_config(
            tiny_data, tmp_path / name, architecture="lstm", lstm={"dim": 32, "n_layers": 2}, max_steps=8,
            batch_size=batch_size, deterministic=True, eval_every=4, sample_prompts=[], plot=False))

    one = start_pretrain(recipe("single", 8), "--quiet")
    two = start_pretrain(recipe("multi", 4), "--quiet", prefix=TORCHRUN)
    assert one.wait(timeout=300) == 0, one.stdout.read()
    assert two.wait(timeout=300) == 0, two.stdout.read()
    expected, got = train_losses(tmp_path / "single"), train_losses(tmp_path / "multi")
    assert sorted(got) == list(range(1, 9))
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=2e-5, abs=2e-5), step
