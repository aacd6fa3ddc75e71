"""Fine-tuning end to end on a small model: full and LoRA runs, resume, adapters, merge, export."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from lmforge.cli.main import main
from lmforge.core.config import ModelConfig
from lmforge.data.chat import write_chat_jsonl
from lmforge.data.synthetic import make_items
from lmforge.io.gguf import load_gguf_model
from lmforge.io.hf import load_pretrained, save_pretrained
from lmforge.io.peft import load_adapter, read_adapter_config
from lmforge.model.transformer import Transformer, init_weights
from lmforge.tokenizer.train import train_bpe
from lmforge.train.finetune import FinetuneConfig, finetune

ROOT = Path(__file__).resolve().parents[2]
IDS = torch.tensor([[1, 320, 28, 9, 400, 2, 30, 77, 123, 5]])


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """A small random Llama with a small ChatML byte-level BPE tokenizer, saved as a model folder."""
    docs = [f"{i.question} {i.answer}" for task in ("reverse", "add") for i in make_items(task, 200)]
    tokenizer = train_bpe(docs + ["Be brief. Say sun. Again? moon star comet"] * 10, vocab_size=512)
    config = ModelConfig(family="llama", vocab_size=tokenizer.vocab_size, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                         ffn_dim=64, max_seq_len=256, tie_embeddings=True)
    model = Transformer(config)
    init_weights(model, seed=0)
    folder = tmp_path_factory.mktemp("small") / "base"
    save_pretrained(model, tokenizer, folder)
    return folder


def config_for(folder, out, **changes) -> FinetuneConfig:
    base = dict(model=str(folder), task="reverse", train_items=64, eval_items=0, val_max=16, out_dir=str(out),
                seq_len=128, batch_size=8, epochs=None, max_steps=6, threads=1, log_every=1, eval_every=3,
                eval_before=False, plot=False)
    base.update(changes)
    return FinetuneConfig.from_dict(base)


def logits_of(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(IDS)


def reverse_scorer(n: int, out_dir=None):
    """The eval runner's score of the generated reverse task (the train layer is handed it, as the CLI does)."""
    from lmforge.eval.runner import EvalConfig, task_scorer
    from lmforge.eval.tasks import synthetic_task

    return task_scorer(synthetic_task("reverse", n_docs=n), EvalConfig(chat=True, max_new_tokens=16), out_dir=out_dir)


def test_full_finetune_of_a_small_model(tmp_path, small_model):
    config = config_for(small_model, tmp_path / "full", method="full", max_steps=10, eval_items=6, eval_before=True,
                        optim={"lr": 3e-3, "weight_decay": 0.0}, schedule={"warmup_steps": 2}, plot=True)
    result = finetune(config, show_progress=False, score=reverse_scorer(6))
    assert result.steps == 10 and result.stopped_by is None and result.adapter is None
    assert result.trainable_parameters == result.total_parameters
    records = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in records if "train_loss" in r]
    val = [r["val_loss"] for r in records if "val_loss" in r]
    assert len(losses) == 10 and losses[-1] < losses[0] - 0.5  # it learns (the answers' tokens at least)
    assert len(val) >= 3 and val[-1] < val[0]
    assert {"accuracy_before", "strict_match_before", "accuracy_after", "strict_match_after"} <= set().union(*records)
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert summary["steps"] == 10 and summary["scores_after"] == result.scores_after
    assert set(result.scores_before) == {"accuracy", "strict_match", "n"} and result.scores_before["n"] == 6
    assert (tmp_path / "full" / "loss.png").stat().st_size > 0
    # The checkpoint is a complete model folder whose weights moved away from the base.
    trained, tokenizer = load_pretrained(result.checkpoint)
    base, _ = load_pretrained(small_model)
    assert tokenizer is not None and tokenizer.chat_template
    assert (logits_of(trained) - logits_of(base)).abs().max() > 1e-3

    # Interrupted after its step-5 checkpoint and resumed, a full fine-tune ends where the straight run did.
    again = config.replace(out_dir=str(tmp_path / "again"), save_every=5, eval_items=0, plot=False)
    finetune(again, show_progress=False)
    shutil.rmtree(tmp_path / "again" / "step_00000010")
    resumed = finetune(again, resume=True, show_progress=False)
    torch.testing.assert_close(logits_of(load_pretrained(resumed.checkpoint)[0]), logits_of(trained), atol=1e-5, rtol=0)


def test_lora_run_resumes_exactly_and_writes_adapter_and_merged_model(tmp_path, small_model):
    changes = dict(method="lora", lora={"rank": 4, "alpha": 8.0, "dropout": 0.0, "targets": ["q_proj", "v_proj", "up_proj"]},
                   optim={"lr": 1e-2, "weight_decay": 0.0}, schedule={"warmup_steps": 2}, save_every=3, merge=True)
    straight = finetune(config_for(small_model, tmp_path / "a", **changes), show_progress=False)
    assert straight.trainable_parameters < straight.total_parameters / 20

    # The same run, "killed" after its step-3 checkpoint, then resumed.
    finetune(config_for(small_model, tmp_path / "b", **changes), show_progress=False)
    shutil.rmtree(tmp_path / "b" / "step_00000006")
    resumed = finetune(config_for(small_model, tmp_path / "b", **changes), resume=True, show_progress=False)
    assert resumed.steps == 6
    records = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train_loss" in r] == [1, 2, 3, 4, 5, 6]  # no step logged twice

    base_a, _ = load_pretrained(small_model)
    base_b, _ = load_pretrained(small_model)
    load_adapter(base_a, straight.adapter)
    load_adapter(base_b, resumed.adapter)
    torch.testing.assert_close(logits_of(base_b), logits_of(base_a), atol=1e-5, rtol=0)
    base, _ = load_pretrained(small_model)
    assert (logits_of(base_a) - logits_of(base)).abs().max() > 1e-3  # training changed something

    # PEFT layout, and the merged model (and each checkpoint) equals base + adapter.
    config = read_adapter_config(straight.adapter)
    assert config["target_modules"] == ["q_proj", "up_proj", "v_proj"] and config["r"] == 4
    assert config["base_model_name_or_path"] == str(small_model)
    merged, _ = load_pretrained(straight.merged)
    torch.testing.assert_close(logits_of(merged), logits_of(base_a), atol=1e-4, rtol=0)
    checkpoint, _ = load_pretrained(straight.checkpoint)
    torch.testing.assert_close(logits_of(checkpoint), logits_of(base_a), atol=1e-4, rtol=0)


def test_cli_scores_a_generated_task_through_the_eval_runner(tmp_path, small_model, capsys):
    """`lmforge finetune --task` scores before and after with the eval runner, and `lmforge eval`
    on the finished checkpoint gives the same after-figures: one evaluation path."""
    run = tmp_path / "run"
    assert main(["finetune", "--model", str(small_model), "--task", "reverse", "--train-items", "32", "--eval-items", "3",
                 "--method", "full", "--max-steps", "2", "--batch-size", "4", "--seq-len", "64", "--threads", "1",
                 "--lr", "1e-3", "--out", str(run), "plot=false", "val_max=4"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"held-out reverse \(3 items\): accuracy \d+\.\d% -> \d+\.\d%, strict match .*\d% -> \d+\.\d%", out), out
    summary = json.loads((run / "summary.json").read_text())
    for label in ("before", "after"):
        results = json.loads((run / "eval" / f"reverse_{label}.json").read_text())
        metrics = results["runs"][0]["metrics"]
        assert results["config"]["chat"] and results["runs"][0]["n"] == 3
        assert summary[f"scores_{label}"] == {"accuracy": metrics["accuracy"], "strict_match": metrics["strict_match"], "n": 3}
    assert main(["eval", "--model", summary["checkpoint"], "--task", "reverse", "--chat", "--limit", "3",
                 "--max-new-tokens", "16", "--json", str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())["runs"][0]
    after = json.loads((run / "eval" / "reverse_after.json").read_text())["runs"][0]
    assert [s["output"] for s in again["samples"]] == [s["output"] for s in after["samples"]]
    assert again["metrics"] == pytest.approx(after["metrics"], nan_ok=True)


def test_cli_trains_on_chat_jsonl_and_names_a_bad_line(tmp_path, small_model, capsys):
    conversations = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Say {w}."},
                      {"role": "assistant", "content": w}, {"role": "user", "content": "Again?"},
                      {"role": "assistant", "content": f"{w} {w}"}] for w in ("sun", "moon", "star", "comet") * 4]
    data = write_chat_jsonl(conversations, tmp_path / "chats.jsonl")
    code = main(["finetune", "--model", str(small_model), "--data", str(data), "--method", "lora", "--targets", "q_proj",
                 "v_proj", "--rank", "2", "--max-steps", "2", "--batch-size", "2", "--seq-len", "64", "--threads", "1",
                 "--out", str(tmp_path / "run"), "--quiet", "plot=false"])
    assert code == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["scores_after"] is None and summary["data"] == str(data)
    assert read_adapter_config(tmp_path / "run" / "adapter")["target_modules"] == ["q_proj", "v_proj"]
    run_config = json.loads((tmp_path / "run" / "run_config.json").read_text())
    assert run_config["epochs"] is None and run_config["optim"]["lr"] == 2e-4 and run_config["pack"] is True

    bad = tmp_path / "bad.jsonl"
    bad.write_text(data.read_text().splitlines()[0] + "\n" + '{"messages": [{"role": "user", "content": "hi"}]}\n')
    capsys.readouterr()
    code = main(["finetune", "--model", str(small_model), "--data", str(bad), "--max-steps", "1", "--out",
                 str(tmp_path / "bad-run"), "--quiet"])
    assert code == 2
    assert f"{bad}:2: no assistant message" in capsys.readouterr().err


def test_export_cli_writes_hf_folder_and_gguf_with_the_adapter_merged(tmp_path, small_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = finetune(config_for(small_model, tmp_path / "run", method="lora", max_steps=3, eval_every=0,
                                 optim={"lr": 1e-2, "weight_decay": 0.0},
                                 lora={"rank": 4, "alpha": 8.0, "dropout": 0.0}), show_progress=False)
    expected, tokenizer = load_pretrained(small_model)
    load_adapter(expected, result.adapter)
    want = logits_of(expected)

    assert main(["export", "--model", str(small_model), "--adapter", str(result.adapter), "--to", "hf",
                 "--out", str(tmp_path / "hf")]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
        hf_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    with torch.no_grad():
        torch.testing.assert_close(hf(IDS).logits, want, atol=1e-4, rtol=0)
    messages = [{"role": "user", "content": "Reverse the word \"sun\"."}]
    rendered = hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered.endswith("<|im_start|>assistant\n") and (tmp_path / "hf" / "chat_template.jinja").is_file()

    assert main(["export", "--model", str(small_model), "--adapter", str(result.adapter), "--to", "gguf",
                 "--type", "f16", "--out", str(tmp_path / "model.gguf")]) == 0
    loaded, loaded_tokenizer = load_gguf_model(tmp_path / "model.gguf")
    torch.testing.assert_close(logits_of(loaded), want, atol=1e-2, rtol=0)  # f16 weights
    assert loaded_tokenizer.chat_template == tokenizer.chat_template


@pytest.mark.parametrize("recipe", sorted(p.name for p in (ROOT / "configs").glob("finetune-*.yaml")))
def test_finetune_recipes_parse(recipe):
    from lmforge.cli.finetune import build_config
    from lmforge.cli.main import build_parser

    args = build_parser().parse_args(["finetune", "--config", str(ROOT / "configs" / recipe), "--max-steps", "3"])
    config = build_config(args)
    assert config.max_steps == 3 and config.method in ("full", "lora")


@pytest.mark.slow
def test_smollm_with_adapter_exports_to_an_hf_folder_transformers_loads(tmp_path, smollm):
    from transformers import AutoModelForCausalLM

    from lmforge.io.peft import save_adapter
    from lmforge.model.lora import apply_lora, lora_modules

    model, tokenizer = smollm
    adapted = Transformer.from_state_dict(model.config, model.state_dict())
    apply_lora(adapted, "all-linear", rank=8, alpha=16.0)
    with torch.no_grad():
        for module in lora_modules(adapted).values():
            module.lora_B.weight.normal_(std=0.02)
    save_adapter(adapted, tmp_path / "adapter")
    ids = torch.tensor([tokenizer.encode("The capital of France is Paris. 12 + 30 = 42, said the assistant.")])
    with torch.no_grad():
        want = adapted.eval()(ids)
    assert main(["export", "--model", "smollm2-135m-instruct", "--adapter", str(tmp_path / "adapter"), "--to", "hf",
                 "--out", str(tmp_path / "hf")]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, want, atol=1e-3, rtol=0)


@pytest.mark.slow
def test_lora_sft_raises_held_out_exact_match_on_smollm(tmp_path):
    """A short version of the acceptance experiment (the full one is in the closing note)."""
    config = FinetuneConfig.from_dict(dict(
        model="smollm2-135m-instruct", task="convert", train_items=2000, eval_items=60, val_max=16,
        out_dir=str(tmp_path / "run"), method="lora", lora={"rank": 16, "alpha": 32.0, "dropout": 0.0},
        optim={"lr": 1e-3, "weight_decay": 0.0}, schedule={"warmup_steps": 5}, batch_size=16, pack=False,
        epochs=None, max_steps=60, dtype="bfloat16", eval_every=0, plot=False))
    from lmforge.cli.finetune import task_score

    result = finetune(config, show_progress=False, score=task_score(config))
    before, after = result.scores_before["strict_match"], result.scores_after["strict_match"]
    assert after >= before + 0.3, (before, after)


# --------------------------------------------------------------------------------------------
# Phases alone
# --------------------------------------------------------------------------------------------
def test_data_phase_renders_packs_and_splits(tmp_path, small_model):
    from lmforge.tokenizer.chat import render_conversation
    from lmforge.train.finetune import build_data

    _, tokenizer = load_pretrained(small_model)
    config = config_for(small_model, tmp_path / "run", train_items=12, val_max=3, pack=False, batch_size=4)
    data = build_data(config, tokenizer, tokenizer.vocab_size, max_seq_len=256)
    items = make_items("reverse", 12, "train", seed=0)
    assert len(data.batches.rows) == 12 and len(data.val_rows) == 3  # one conversation per row
    assert data.summary.startswith("data: 12 train conversations in 12 rows of <= 129 tokens, 3 validation")
    ids, mask = render_conversation(tokenizer, items[0].messages())
    assert any(list(row.ids) == ids for row in data.batches.rows)
    assert int(data.token_bytes.sum()) > 0 and data.token_bytes.shape == (tokenizer.vocab_size,)
    packed = build_data(config.replace(pack=True), tokenizer, tokenizer.vocab_size, max_seq_len=256)
    assert len(packed.batches.rows) < 12  # several short conversations share a row
    short = build_data(config.replace(seq_len=4096), tokenizer, tokenizer.vocab_size, max_seq_len=64)
    assert "rows of <= 64 tokens" in short.summary  # rows never outgrow the model's context


def test_method_phase_wraps_lora_layers_or_trains_everything(tmp_path, small_model):
    from lmforge.model.lora import count_parameters
    from lmforge.train.finetune import build_method

    model, _ = load_pretrained(small_model)
    line = build_method(config_for(small_model, tmp_path, method="full"), model)
    trainable, total = count_parameters(model)
    assert trainable == total and "method full" in line and "LoRA" not in line
    config = config_for(small_model, tmp_path, method="lora", lora={"rank": 2, "targets": ["q_proj", "v_proj"]})
    line = build_method(config, model)
    trainable, total = count_parameters(model)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names) and len(names) == 2 * 2 * 2  # A and B, 2 layers, 2 targets
    assert line.endswith(f"{trainable:,} trainable parameters ({100 * trainable / total:.3f}%) in 4 LoRA layers")


def test_resume_phase_refuses_a_checkpoint_of_another_method(tmp_path, small_model):
    from lmforge.train.distributed import DistInfo
    from lmforge.train.finetune import build_data, build_method, resume_run

    single = DistInfo(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
    full = config_for(small_model, tmp_path / "run", method="full", max_steps=2, eval_every=0)
    done = finetune(full, show_progress=False)
    model, tokenizer = load_pretrained(small_model)
    data = build_data(full, tokenizer, tokenizer.vocab_size, 256)
    state, saved = resume_run(full, model, data.batches, single)
    assert (state.step, state.checkpoint, state.scores_before) == (2, done.checkpoint, None)
    assert data.batches.state_dict() == saved["loader"]
    lora = full.replace(method="lora")
    model, _ = load_pretrained(small_model)
    build_method(lora, model)
    with pytest.raises(ValueError, match="is from a full run; this run's method is lora"):
        resume_run(lora, model, data.batches, single)


def test_an_exception_inside_the_loop_stops_the_progress_display(tmp_path, small_model, monkeypatch):
    import lmforge.train.finetune as module
    from run_helpers import cursor_restored, terminal_displays

    displays = terminal_displays(monkeypatch, module)
    monkeypatch.setattr(module, "validate", lambda run: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        finetune(config_for(small_model, tmp_path / "run", eval_every=2))
    assert len(displays) == 1 and cursor_restored(displays[0])


def test_a_time_budget_alone_ends_a_finetune(tmp_path, small_model):
    result = finetune(config_for(small_model, tmp_path / "run", max_steps=None, time_budget_s=1.0, eval_every=0),
                      show_progress=False)
    assert result.stopped_by is None and result.steps >= 1 and result.train_seconds >= 1.0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train_loss" in r] == list(range(1, result.steps + 1))
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == result.steps


def test_cli_flags_and_overrides_build_the_recipe():
    """`lmforge finetune` builds its recipe as the other training verbs do (recipes.recipe_from_args):
    flags, then KEY=VALUE overrides; a step budget alone turns epochs off; lr defaults by method."""
    from lmforge.cli.finetune import build_config
    from lmforge.cli.main import build_parser

    def config(*argv):
        return build_config(build_parser().parse_args(["finetune", *argv]))

    assert config().pack is True and config().epochs == 1.0 and config().optim.lr == 2e-4
    packed_off = config("--no-pack", "--max-steps", "3", "--method", "full")
    assert packed_off.pack is False and packed_off.epochs is None and packed_off.optim.lr == 2e-5
    assert config("pack=false", "optim.lr=0.01").pack is False and config("optim.lr=0.01").optim.lr == 0.01
