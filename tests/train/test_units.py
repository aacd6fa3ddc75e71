"""Config parsing, schedules, losses, optimizers and token-weighted accumulation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lmforge.cli.pretrain import load_config
from lmforge.cli.recipes import apply_overrides
from lmforge.core.config import ModelConfig
from lmforge.model.transformer import Transformer, init_weights
from lmforge.train.config import PretrainConfig, ScheduleConfig
from lmforge.train.distributed import DistInfo
from lmforge.train.step import accumulate_gradients, clip_gradients
from lmforge.train.losses import bits_per_byte, token_cross_entropy
from lmforge.train.optim import build_optimizer, split_parameters
from lmforge.train.schedule import lr_multiplier
from lmforge.train.config import OptimConfig

ROOT = Path(__file__).resolve().parents[2]
SINGLE = DistInfo(rank=0, world=1, local_rank=0, device=torch.device("cpu"))


def test_config_from_nested_dict_with_overrides_and_type_errors():
    data = {"data": "d", "model": {"dim": 64, "n_layers": 2, "n_heads": 4}, "max_steps": 10, "optim": {"lr": "1e-3"}}
    config = PretrainConfig.from_dict(apply_overrides(data, ["optim.name=muon", "model.qk_norm=true", "sample_prompts=[a, b]"]))
    assert config.model == ModelConfig(dim=64, n_layers=2, n_heads=4, qk_norm=True)
    assert config.optim.name == "muon" and config.optim.lr == 1e-3 and config.sample_prompts == ("a", "b")
    with pytest.raises(ValueError, match="unknown config key.*optim.learning_rate"):
        PretrainConfig.from_dict({"data": "d", "max_steps": 1, "optim": {"learning_rate": 1}})
    with pytest.raises(ValueError, match="batch_size: expected an integer"):
        PretrainConfig.from_dict({"data": "d", "max_steps": 1, "batch_size": "big"})
    with pytest.raises(ValueError, match="optim.name: must be one of"):
        PretrainConfig.from_dict({"data": "d", "max_steps": 1, "optim": {"name": "sgd"}})
    with pytest.raises(ValueError, match="at least one of max_steps"):
        PretrainConfig.from_dict({"data": "d"})
    with pytest.raises(ValueError, match="not KEY=VALUE"):
        apply_overrides({}, ["oops"])


@pytest.mark.parametrize("name", ["speedrun-shakespeare-char.yaml", "tiny-stdlib.yaml"])
def test_shipped_pretrain_recipes_load(name):
    config = load_config(ROOT / "configs" / name)
    assert isinstance(config, PretrainConfig) and config.time_budget_s is not None


def test_schedules():
    cosine = ScheduleConfig(name="cosine", warmup_steps=10, min_lr_frac=0.1)
    assert lr_multiplier(cosine, 0, 0.0) == pytest.approx(0.1)  # warmup
    assert lr_multiplier(cosine, 9, 0.0) == pytest.approx(1.0)
    assert lr_multiplier(cosine, 500, 0.5) == pytest.approx(0.55)
    assert lr_multiplier(cosine, 999, 1.0) == pytest.approx(0.1)
    wsd = ScheduleConfig(name="wsd", warmup_steps=0, min_lr_frac=0.0, decay_frac=0.2)
    assert [lr_multiplier(wsd, 100, p) for p in (0.5, 0.8, 0.9, 1.0)] == pytest.approx([1.0, 1.0, 0.5, 0.0])
    linear = ScheduleConfig(name="linear", warmup_steps=0, min_lr_frac=0.0)
    assert lr_multiplier(linear, 3, 0.25) == pytest.approx(0.75)


def test_losses_are_token_sums():
    logits = torch.randn(2, 5, 11)
    targets = torch.randint(0, 11, (2, 5))
    targets[0, :2] = -100
    total, count = token_cross_entropy(logits, targets)
    assert int(count) == 8
    assert float(total) == pytest.approx(float(F.cross_entropy(logits.view(-1, 11), targets.view(-1), ignore_index=-100)) * 8, rel=1e-5)
    assert bits_per_byte(math.log(2) * 100, 50) == pytest.approx(2.0)


def _model(**kw) -> Transformer:
    model = Transformer(ModelConfig(vocab_size=50, dim=32, n_layers=2, n_heads=2, max_seq_len=16, **kw))
    init_weights(model, seed=0)
    return model


def test_parameter_roles_and_muon_optimizer():
    model = _model(tie_embeddings=False)
    roles = {role: [n for n, _ in items] for role, items in split_parameters(model).items()}
    assert roles["embedding"] == ["model.embed_tokens.weight"] and roles["head"] == ["lm_head.weight"]
    assert all(n.endswith("_proj.weight") for n in roles["matrix"]) and all("norm" in n for n in roles["vector"])
    optimizer = build_optimizer(model, OptimConfig(name="muon", lr=1e-3, muon_lr=0.02))
    assert isinstance(optimizer.optimizers[0], torch.optim.Muon)
    optimizer.set_lr_multiplier(0.5)
    assert optimizer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.01)
    x = torch.randint(0, 50, (2, 16))
    before = model.model.layers[0].mlp.up_proj.weight.clone()
    token_cross_entropy(model(x), x)[0].backward()
    optimizer.step()
    assert not model.model.layers[0].mlp.up_proj.weight.equal(before)
    state = optimizer.state_dict()
    again = build_optimizer(model, OptimConfig(name="muon"))
    again.load_state_dict(state)
    assert again.optimizers[0].state_dict()["state"].keys() == optimizer.optimizers[0].state_dict()["state"].keys()


def test_accumulation_weights_every_token_equally():
    """Two micro-batches with different numbers of masked targets give the full batch's gradient."""
    x = torch.randint(0, 50, (4, 16))
    y = torch.randint(0, 50, (4, 16))
    y[0, :12] = -100  # micro-batch 1 has far fewer targets than micro-batch 2
    y[1, :3] = -100
    reference = _model()
    total, count = token_cross_entropy(reference(x), y)
    (total / count).backward()
    model = _model()
    loss, tokens = accumulate_gradients(model, [(x[:2], y[:2]), (x[2:], y[2:])], SINGLE)
    assert tokens == int(count) and loss == pytest.approx(float(total.detach() / count), rel=1e-5)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), name
    norm = clip_gradients(model, 1e-3)
    assert norm > 1e-3
    assert clip_gradients(model, 0.0) == pytest.approx(1e-3, rel=1e-3)


def test_packed_batch_trains_like_its_conversations_apart():
    """Through collate's segment ids, a row packing two conversations gives the gradient of the
    two trained as separate rows: packing changes speed, not the result."""
    from lmforge.data.chat import collate, pack_examples

    examples = [(list(range(1, 8)), [0, 0, 0, 1, 1, 1, 1]), (list(range(20, 26)), [0, 0, 1, 1, 1, 1])]
    packed = collate(pack_examples(examples, seq_len=16)[0], pad_id=0)
    apart = collate(pack_examples(examples, seq_len=16, pack=False)[0], pad_id=0)
    assert packed[0].shape[0] == 1 and apart[0].shape[0] == 2
    reference, model = _model(), _model()
    loss_apart, tokens_apart = accumulate_gradients(reference, [apart[:2]], SINGLE)
    loss_packed, tokens_packed = accumulate_gradients(model, [packed], SINGLE)
    assert tokens_packed == tokens_apart and loss_packed == pytest.approx(loss_apart, rel=1e-5)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), name
    mixed = _model()
    loss_mixed, _ = accumulate_gradients(mixed, [packed[:2]], SINGLE)  # no segment ids: conversations attend across
    assert loss_mixed != pytest.approx(loss_apart, rel=1e-5)


def test_train_clock_excludes_and_freezes_during_pauses():
    import time

    from lmforge.train.signals import TrainClock

    # Bounds from the elapsed times themselves, so a slow, loaded machine cannot fail it.
    before = time.perf_counter()
    clock = TrainClock(already=10.0)
    time.sleep(0.05)
    with clock.paused():
        frozen = clock.seconds
        pause_began = time.perf_counter()
        time.sleep(0.2)
        assert clock.seconds == frozen
        paused = time.perf_counter() - pause_began
    running = time.perf_counter() - before - paused  # the most the clock may have counted
    assert 10.05 <= clock.seconds <= 10.0 + running and paused >= 0.2


def test_run_progress_is_the_furthest_budget():
    from lmforge.train.schedule import fraction_done

    assert fraction_done((30, 100), (5, None), (2.0, 8.0)) == pytest.approx(0.3)
    assert fraction_done((30, 100), (6.0, 8.0)) == pytest.approx(0.75)  # the time budget runs out first
    assert fraction_done((101, 100)) > 1.0
    with pytest.raises(ValueError, match="at least one budget"):
        fraction_done((3, None))


def test_throughput_counts_tokens_since_the_last_reading():
    from lmforge.train.metrics import Throughput

    meter = Throughput(seconds=10.0, tokens=1000)
    assert meter.rate(12.0, 5000) == pytest.approx(2000.0)
    assert meter.rate(14.0, 6000) == pytest.approx(500.0)


def test_checkpoint_if_due_saves_on_schedule_and_on_a_signal():
    from lmforge.train.checkpointing import RunState, checkpoint_if_due

    class Signals:
        received: str | None = None

        def requested(self, dist) -> bool:
            return self.received is not None

    state, signals, saved, said = RunState(), Signals(), [], []

    def save():
        saved.append(state.step)
        state.checkpoint = Path(f"step_{state.step}")

    for step in range(1, 8):
        state.step = step
        if step == 6:
            signals.received = "SIGTERM"
        if checkpoint_if_due(state, signals, SINGLE, 4, save, said.append):
            break
    assert saved == [4, 6] and state.stopped_by == "SIGTERM" and state.step == 6
    assert said == ["stopped by SIGTERM at step 6; checkpoint saved to step_6; continue with --resume"]
    state = RunState(step=3)
    assert not checkpoint_if_due(state, Signals(), SINGLE, 0, save, said.append) and saved == [4, 6]  # 0: never


def test_a_resumed_run_state_starts_where_its_checkpoint_was_saved():
    from lmforge.train.checkpointing import RunState

    state = RunState.resumed(Path("run/step_00000040"), {"step": 40, "tokens": 5120, "train_seconds": 12.5})
    assert (state.step, state.tokens, state.train_seconds) == (40, 5120, 12.5)
    assert state.checkpoint == Path("run/step_00000040") and state.last_save_step == 40 and state.last_eval_step == -1
