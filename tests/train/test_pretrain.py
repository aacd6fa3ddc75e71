"""End-to-end pretraining: metrics, plot, samples, checkpoints that load elsewhere, NaN handling."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lmforge.cli.main import main
from lmforge.io.checkpoint import latest_checkpoint, list_checkpoints
from lmforge.io.hf import load_pretrained
from lmforge.train.config import PretrainConfig
from lmforge.train.step import NonFiniteLossError
from lmforge.train.pretrain import pretrain
from run_helpers import tiny_config, train_losses, write_config


def test_short_run_learns_logs_and_checkpoints(tiny_data, tmp_path):
    config = PretrainConfig.from_dict(tiny_config(tiny_data, tmp_path / "run", max_steps=60, eval_every=30, save_every=25,
                                                  **{"optim.name": "muon", "optim.lr": 0.01, "optim.muon_lr": 0.03}))
    result = pretrain(config, show_progress=False)
    out = tmp_path / "run"
    losses = train_losses(out)
    assert sorted(losses) == list(range(1, 61))
    assert losses[60] < losses[1] - 1.0  # it learns
    assert [e["step"] for e in result.evals] == [30, 60] and result.evals[-1]["val_loss"] < 3.2
    assert 0 < result.evals[-1]["val_bpb"] < 5
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("sample" in r and r["prompt"] == "ROMEO:" for r in records)
    assert (out / "loss.png").stat().st_size > 10_000
    assert [p.name for p in list_checkpoints(out)] == ["step_00000050", "step_00000060"]  # keep_checkpoints=2
    assert latest_checkpoint(out) == result.checkpoint == out / "step_00000060"
    meta = json.loads((result.checkpoint / "meta.json").read_text())
    assert meta["step"] == 60 and meta["pretrain_config"]["optim"]["name"] == "muon"
    # The checkpoint is a model folder: lmforge loads it and reproduces the trained model's logits.
    model, tokenizer = load_pretrained(result.checkpoint)
    ids = torch.tensor([tokenizer.encode("ROMEO: what", add_bos=True)])
    from lmforge.data.shards import TokenData
    assert tokenizer.vocab_size == TokenData.open(tiny_data).vocab_size
    logits = model(ids)
    assert logits.shape == (1, ids.shape[1], tokenizer.vocab_size) and torch.isfinite(logits).all()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_generate_cli_and_transformers_load_a_pretrained_checkpoint(tiny_data, tmp_path, capsys, family):
    path = write_config(tmp_path / "c.yaml", tiny_config(tiny_data, tmp_path / "run", max_steps=20))
    assert main(["pretrain", "--quiet", "--config", str(path), f"model.family={family}", "model.ffn_dim=null"]) == 0
    folder = latest_checkpoint(tmp_path / "run")
    assert main(["generate", "--model", str(folder), "--prompt", "ROMEO:", "--max-new-tokens", "10"]) == 0
    assert capsys.readouterr().out.startswith("ROMEO:")
    from transformers import AutoModelForCausalLM

    ours, tokenizer = load_pretrained(folder)
    theirs = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    ids = torch.tensor([tokenizer.encode("KING: hello", add_bos=True)])
    with torch.no_grad():
        assert torch.allclose(ours(ids), theirs(ids).logits, atol=1e-4)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_good_checkpoint(tiny_data, tmp_path, capsys):
    config = tiny_config(tiny_data, tmp_path / "run", max_steps=3, save_every=1)
    path = write_config(tmp_path / "c.yaml", config)
    assert main(["pretrain", "--quiet", "--config", str(path)]) == 0
    good = latest_checkpoint(tmp_path / "run")
    good_weights = (good / "model.safetensors").read_bytes()
    # Resume with an absurd learning rate: the weights explode and the loss turns NaN/inf.
    bad = write_config(tmp_path / "bad.yaml", {**config, "max_steps": 50, "grad_clip": 0.0, "save_every": 0,
                                               "optim": {"name": "adamw", "lr": 1e30}, "schedule": {"warmup_steps": 0}})
    with pytest.raises(NonFiniteLossError, match="became (nan|inf)"):
        pretrain(PretrainConfig.from_dict({**config, "max_steps": 50, "grad_clip": 0.0, "save_every": 0,
                                           "optim": {"name": "adamw", "lr": 1e30}, "schedule": {"warmup_steps": 0}}),
                 resume=True, show_progress=False)
    assert main(["pretrain", "--quiet", "--resume", "--config", str(bad)]) == 1
    assert "training loss became" in capsys.readouterr().err
    assert latest_checkpoint(tmp_path / "run") == good and (good / "model.safetensors").read_bytes() == good_weights


def test_readonly_output_fails_clearly(tiny_data, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    path = write_config(tmp_path / "c.yaml", tiny_config(tiny_data, blocker / "run", max_steps=2))
    assert main(["pretrain", "--quiet", "--config", str(path)]) == 1
    assert "cannot write to the output folder" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Phases alone
# --------------------------------------------------------------------------------------------
def test_model_phase_takes_vocabulary_and_context_from_data_and_seed(tiny_data, tmp_path):
    from lmforge.data.shards import TokenData
    from lmforge.train.pretrain import build_model

    config = PretrainConfig.from_dict(tiny_config(tiny_data, tmp_path / "run"))
    vocab = TokenData.open(tiny_data).vocab_size
    model = build_model(config, vocab, torch.device("cpu"))
    assert model.config.vocab_size == vocab and model.config.max_seq_len == config.seq_len == 32
    assert model.config.dim == 32 and model.config.n_layers == 2
    again = build_model(config, vocab, torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    other = build_model(config.replace(seed=1), vocab, torch.device("cpu"))
    assert not torch.equal(model.lm_head.weight, other.lm_head.weight)


def test_resume_phase_restores_counters_loader_and_weights(tiny_data, tmp_path):
    from lmforge.data.loader import TrainLoader
    from lmforge.data.shards import TokenData
    from lmforge.train.distributed import DistInfo
    from lmforge.train.pretrain import build_model, resume_run

    single = DistInfo(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
    config = PretrainConfig.from_dict(tiny_config(tiny_data, tmp_path / "run", max_steps=4, sample_prompts=[],
                                                  eval_every_s=30.0))
    data = TokenData.open(tiny_data)
    fresh = build_model(config, data.vocab_size, single.device)
    loader = TrainLoader(data.train, config.seq_len, config.batch_size, seed=config.seed)
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        resume_run(config, fresh, loader, single)
    done = pretrain(config, show_progress=False)
    state, saved = resume_run(config, fresh, loader, single)
    assert (state.step, state.tokens, state.checkpoint, state.last_save_step) == (4, done.tokens, done.checkpoint, 4)
    assert state.next_eval_s == 30.0 and "optimizer" in saved
    assert loader.state_dict() == saved["loader"] and loader.state_dict()["position"] > 0
    trained, _ = load_pretrained(done.checkpoint)
    assert torch.equal(fresh.lm_head.weight, trained.lm_head.weight)


def test_an_exception_inside_the_loop_stops_the_progress_display(tiny_data, tmp_path, monkeypatch):
    """A crash mid-run must not leave the terminal's cursor hidden."""
    import lmforge.train.pretrain as module
    from run_helpers import cursor_restored, terminal_displays

    displays = terminal_displays(monkeypatch, module)
    real_step = module.train_step

    def failing_step(run, progress):
        if run.state.step == 2:
            raise RuntimeError("disk on fire")
        return real_step(run, progress)

    monkeypatch.setattr(module, "train_step", failing_step)
    config = PretrainConfig.from_dict(tiny_config(tiny_data, tmp_path / "run", max_steps=10))
    with pytest.raises(RuntimeError, match="disk on fire"):
        pretrain(config)
    assert len(displays) == 1 and cursor_restored(displays[0])
    assert "step 2 | loss" in displays[0].stream.getvalue()  # it did draw before the crash


# --------------------------------------------------------------------------------------------
# Advertised training features: time budget, torch.compile, bf16 autocast
# --------------------------------------------------------------------------------------------
def test_a_time_budget_alone_ends_the_run(tiny_data, tmp_path):
    config = PretrainConfig.from_dict(tiny_config(tiny_data, tmp_path / "run", max_steps=None, time_budget_s=1.5,
                                                  sample_prompts=[], plot=False, **{"schedule.warmup_steps": 0}))
    result = pretrain(config, show_progress=False)
    assert result.stopped_by is None and result.steps > 1 and result.train_seconds >= 1.5
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "train_loss" in r]
    assert steps == list(range(1, result.steps + 1))  # every step logged, none after the budget
    # A step starts only while the clock is inside the budget: every step but the last ended inside it
    # (time_s is rounded to the millisecond, so a step ending at 1.4996 s is logged as 1.5).
    assert all(r["time_s"] <= 1.5 for r in records if "train_loss" in r and r["step"] < result.steps)
    lrs = [r["lr"] for r in records if "lr" in r]
    assert lrs[-1] < lrs[0]  # the schedule decays over the budget (progress = time used / budget)
    assert json.loads((result.checkpoint / "meta.json").read_text())["step"] == result.steps


def _three_steps(tiny_data, out, **changes) -> dict[int, float]:
    config = PretrainConfig.from_dict(tiny_config(tiny_data, out, max_steps=3, sample_prompts=[], plot=False,
                                                  eval_every=0, deterministic=True, **changes))
    pretrain(config, show_progress=False)
    return train_losses(out)


def test_compile_trains_like_eager(tiny_data, tmp_path, monkeypatch):
    """`compile: true` goes through torch.compile (Dynamo graph capture and AOTAutograd here; the
    Inductor code generator, which needs a C compiler and minutes of CPU, runs in the slow test)
    and trains to the same losses as eager mode."""
    calls = []
    real_compile = torch.compile

    def compile_with_aot_eager(module, **kwargs):
        calls.append(module)
        return real_compile(module, backend="aot_eager", **kwargs)

    monkeypatch.setattr(torch, "compile", compile_with_aot_eager)
    eager = _three_steps(tiny_data, tmp_path / "eager")
    assert not calls
    compiled = _three_steps(tiny_data, tmp_path / "compiled", compile=True)
    assert len(calls) == 1
    assert sorted(compiled) == [1, 2, 3]
    for step in eager:
        assert compiled[step] == pytest.approx(eager[step], rel=1e-4), step


@pytest.mark.slow
def test_compile_with_inductor_trains_like_eager(tiny_data, tmp_path):
    eager = _three_steps(tiny_data, tmp_path / "eager")
    compiled = _three_steps(tiny_data, tmp_path / "compiled", compile=True)
    for step in eager:
        assert compiled[step] == pytest.approx(eager[step], rel=1e-4), step


def test_bf16_autocast_steps_stay_close_to_fp32(tiny_data, tmp_path):
    fp32 = _three_steps(tiny_data, tmp_path / "fp32")
    bf16 = _three_steps(tiny_data, tmp_path / "bf16", dtype="bfloat16")
    assert sorted(bf16) == [1, 2, 3] and all(math.isfinite(loss) for loss in bf16.values())
    assert bf16 != fp32  # autocast really changed the arithmetic
    for step in fp32:
        assert bf16[step] == pytest.approx(fp32[step], rel=2e-2), step
