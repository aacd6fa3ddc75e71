"""The preference loop (DPO, IPO, SimPO, ORPO, KTO) end to end on a small model: learning, the cached
reference, TRL's metric names, resume, bad data, and the CLI."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lmforge.cli.main import main
from lmforge.core.config import ModelConfig
from lmforge.data.preference import PreferencePair, write_preference_jsonl
from lmforge.data.synthetic import make_items
from lmforge.io.hf import load_pretrained, save_pretrained
from lmforge.io.peft import load_adapter
from lmforge.model.transformer import Transformer, init_weights
from lmforge.tokenizer.train import train_bpe
from lmforge.train.preference import REFERENCE_FILE, PreferenceConfig, build_data, train_preference

TRL_NAMES = {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A small random Llama with a ChatML BPE tokenizer, and pairs: a word's reversal preferred to the word."""
    root = tmp_path_factory.mktemp("pref")
    items = [i for i in make_items("reverse", 140) if i.answer != i.answer[::-1]]
    tokenizer = train_bpe([f"{i.question} {i.answer}" for i in items] * 3, vocab_size=400)
    config = ModelConfig(family="llama", vocab_size=tokenizer.vocab_size, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                         ffn_dim=64, max_seq_len=256, tie_embeddings=True)
    model = Transformer(config)
    init_weights(model, seed=0)
    save_pretrained(model, tokenizer, root / "base")
    pairs = [PreferencePair(tuple(i.prompt_messages()), ({"role": "assistant", "content": i.answer},),
                            ({"role": "assistant", "content": i.answer[::-1]},)) for i in items]
    write_preference_jsonl(pairs, root / "pairs.jsonl")
    return root


def config_for(root, out, **changes) -> PreferenceConfig:
    base = dict(model=str(root / "base"), data=str(root / "pairs.jsonl"), out_dir=str(out), max_steps=6, epochs=None,
                batch_size=8, threads=1, log_every=1, eval_every=3, val_fraction=0.15, plot=False,
                optim={"lr": 5e-3, "weight_decay": 0.0}, schedule={"warmup_steps": 1},
                lora={"rank": 4, "alpha": 8.0, "dropout": 0.0, "targets": ["all-linear"]})
    base.update(changes)
    return PreferenceConfig.from_dict(base)


def records(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_dpo_learns_logs_trl_metrics_and_caches_the_reference(tmp_path, setup):
    out = tmp_path / "dpo"
    result = train_preference(config_for(setup, out, max_steps=24, plot=True, beta=0.5, optim={"lr": 2e-2}),
                              show_progress=False)
    logged = records(out)
    train = [r for r in logged if "train_loss" in r]
    assert TRL_NAMES <= set(train[0]) and {f"eval_{n}" for n in TRL_NAMES} <= set(result.evals[-1])
    assert train[0]["train_loss"] == pytest.approx(0.6931, abs=1e-3)  # the policy starts as its reference
    assert sum(r["train_loss"] for r in train[-4:]) / 4 < 0.67  # from log 2
    assert sum(r["rewards/accuracies"] for r in train[-4:]) / 4 >= 0.6
    assert result.evals[-1]["val_loss"] < 0.68  # held-out pairs too, if less (a tiny random model)
    assert result.evals[-1]["eval_rewards/margins"] > result.evals[0]["eval_rewards/margins"] + 0.05
    assert (out / "loss.png").stat().st_size and (out / "rewards.png").stat().st_size
    summary = json.loads((out / "summary.json").read_text())
    assert summary["loss"] == "dpo" and summary["beta"] == 0.5 and summary["steps"] == 24

    # The reference is cached, keyed by weights and tokens: a new run reuses it without recomputing.
    cache = out / REFERENCE_FILE
    stamp = cache.stat().st_mtime_ns
    again = tmp_path / "again"
    train_preference(config_for(setup, again, max_steps=1, reference_cache=str(cache)), show_progress=False)
    assert cache.stat().st_mtime_ns == stamp and not (again / REFERENCE_FILE).exists()
    # Other data: the key no longer matches, so it is recomputed.
    other = tmp_path / "other.jsonl"
    shutil.copy(setup / "pairs.jsonl", other)
    with open(other, "a") as handle:
        handle.write(json.dumps({"prompt": "say yes", "chosen": " yes", "rejected": " no"}) + "\n")
    train_preference(config_for(setup, tmp_path / "third", max_steps=1, data=str(other), reference_cache=str(cache)),
                     show_progress=False)
    assert cache.stat().st_mtime_ns != stamp


def test_lora_run_resumes_exactly(tmp_path, setup):
    straight = train_preference(config_for(setup, tmp_path / "a"), show_progress=False)
    config = config_for(setup, tmp_path / "b", save_every=3)
    train_preference(config, show_progress=False)
    shutil.rmtree(tmp_path / "b" / "step_00000006")
    resumed = train_preference(config, resume=True, show_progress=False)
    assert resumed.steps == 6
    assert [r["step"] for r in records(tmp_path / "b") if "train_loss" in r] == [1, 2, 3, 4, 5, 6]
    ids = torch.tensor([[1, 5, 9, 30, 77, 12]])
    models = []
    for run in (straight, resumed):
        model, _ = load_pretrained(setup / "base")
        load_adapter(model, run.adapter)
        models.append(model.eval())
    with torch.no_grad():
        torch.testing.assert_close(models[1](ids), models[0](ids), atol=1e-5, rtol=0)


def test_full_run_resumes_against_the_starting_model(tmp_path, setup):
    config = config_for(setup, tmp_path / "full", method="full", save_every=2, max_steps=4, optim={"lr": 1e-3})
    train_preference(config, show_progress=False)
    (tmp_path / "full" / REFERENCE_FILE).unlink()  # recomputed from --model, never from trained weights
    shutil.rmtree(tmp_path / "full" / "step_00000004")
    resumed = train_preference(config, resume=True, show_progress=False)
    train = [r for r in records(tmp_path / "full") if "train_loss" in r]
    assert resumed.steps == 4 and train[0]["train_loss"] == pytest.approx(0.6931, abs=1e-3)
    assert train[-1]["rewards/margins"] != 0


@pytest.mark.parametrize("loss", ["ipo", "simpo", "orpo", "kto"])
def test_every_loss_trains(tmp_path, setup, loss):
    result = train_preference(config_for(setup, tmp_path / loss, loss=loss, max_steps=4, eval_every=4),
                              show_progress=False)
    last = result.evals[-1]
    assert result.steps == 4 and all(torch.isfinite(torch.tensor(v)) for k, v in last.items() if isinstance(v, float))
    assert {"eval_rewards/chosen", "eval_rewards/rejected", "eval_logps/chosen"} <= set(last)
    assert (REFERENCE_FILE in {p.name for p in (tmp_path / loss).iterdir()}) == (loss in ("ipo", "kto"))
    if loss == "kto":
        assert "eval_kl" in last


def test_bad_data_is_refused_or_counted(tmp_path, setup):
    unpaired = tmp_path / "unpaired.jsonl"
    unpaired.write_text(json.dumps({"prompt": "a", "completion": "b", "label": True}) + "\n")
    with pytest.raises(ValueError, match="needs pairs"):
        train_preference(config_for(setup, tmp_path / "u", data=str(unpaired)), show_progress=False)
    mixed = tmp_path / "mixed.jsonl"
    long_prompt = "word " * 400
    mixed.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "say", "chosen": " yes", "rejected": " no"}, {"prompt": "say", "chosen": " ok", "rejected": " ok"},
        {"prompt": long_prompt, "chosen": " yes", "rejected": " no"}, {"prompt": "say", "chosen": " fine", "rejected": " bad"}]))
    config = config_for(setup, tmp_path / "m", data=str(mixed), max_length=128, val_fraction=0.0, max_steps=1)
    _, tokenizer = load_pretrained(setup / "base")
    data = build_data(config, tokenizer, max_seq_len=256)
    assert len(data.train) == 2
    assert "1 chosen identical to rejected" in data.summary and "1 prompt longer than the context" in data.summary
    assert train_preference(config, show_progress=False).steps == 1
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n{oops\n")
    with pytest.raises(ValueError, match="broken.jsonl:2: not valid JSON"):
        train_preference(config_for(setup, tmp_path / "b", data=str(broken)), show_progress=False)
    assert not (tmp_path / "b" / "metrics.jsonl").exists()  # nothing trained on a half-read file


def test_cli_trains_on_a_file_and_reports_a_bad_line(tmp_path, setup, capsys):
    out = tmp_path / "cli"
    code = main(["dpo", "--model", str(setup / "base"), "--data", str(setup / "pairs.jsonl"), "--max-steps", "2",
                 "--batch-size", "4", "--out", str(out), "--threads", "1", "--quiet", "--loss", "simpo", "beta=1.5",
                 "lora.rank=2"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "held-out pairs: reward accuracy" in printed and "2 steps" in printed
    assert json.loads((out / "run_config.json").read_text())["beta"] == 1.5
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "chosen": "b"}) + "\n")
    assert main(["dpo", "--model", str(setup / "base"), "--data", str(bad), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "bad.jsonl:1: missing 'rejected'" in capsys.readouterr().err
