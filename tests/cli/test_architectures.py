"""`lmforge t5`, `lmforge bert` and `lmforge fill-mask` from the command line."""

from __future__ import annotations

import json

import torch

from lmforge.cli.main import main
from lmforge.io.hf_seq2seq import save_hf_folder
from lmforge.model.bert import BertConfig, BertForMaskedLM, BertForSequenceClassification
from lmforge.tokenizer.train import train_char
from tests.train import conftest as train_fixtures

tiny_data = train_fixtures.tiny_data  # the tiny prepared corpus fixture


def bert_folder(tmp_path, classifier: bool = False):
    tokenizer = train_char(["abcdefgh"])
    config = BertConfig(vocab_size=tokenizer.vocab_size + 1, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, mask_token_id=tokenizer.vocab_size)
    model = BertForSequenceClassification(config, ["a", "b"]) if classifier else BertForMaskedLM(config)
    if not classifier:
        with torch.no_grad():
            model.cls.predictions.bias[tokenizer.encode("e")[0]] = 40.0
    return save_hf_folder(model, tokenizer, tmp_path / ("classifier" if classifier else "mlm"))


def test_fill_mask_prints_candidates(tmp_path, capsys):
    assert main(["fill-mask", "--model", str(bert_folder(tmp_path)), "--text", "ab<mask>d", "--top-k", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("<mask> 1: 'e' 1.000")


def test_fill_mask_refuses_what_it_cannot_do(tmp_path, capsys):
    assert main(["fill-mask", "--model", str(bert_folder(tmp_path, classifier=True)), "--text", "a<mask>"]) == 2
    assert "classifier" in capsys.readouterr().err
    assert main(["fill-mask", "--model", str(bert_folder(tmp_path)), "--text", "no slot"]) == 2
    assert "<mask>" in capsys.readouterr().err


def test_training_verbs_run_and_report(tiny_data, tmp_path, capsys):
    assert main(["bert", "--data", str(tiny_data), "--out", str(tmp_path / "bert"), "--pretrain-steps", "2",
                 "--classifier-steps", "2", "--batch-size", "4", "--quiet", "model.hidden_size=16",
                 "model.num_hidden_layers=1", "model.num_attention_heads=2", "model.intermediate_size=32",
                 "seq_len=32", "train_items=40", "heldout_items=10", "classifier.batch_size=4"]) == 0
    assert "heldout_accuracy" in json.loads(capsys.readouterr().out)
    assert main(["t5", "--data", str(tiny_data), "--out", str(tmp_path / "t5"), "--pretrain-steps", "0",
                 "--finetune-steps", "2", "--task", "add", "--quiet", "model.d_model=16", "model.d_kv=8",
                 "model.d_ff=32", "model.num_layers=1", "model.num_heads=2", "train_items=20", "heldout_items=4",
                 "finetune.batch_size=4", "max_new_tokens=4"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert "pretrain" not in results and results["heldout_items"] == 4
    assert main(["t5", "--out", str(tmp_path / "x")]) == 2
    assert "--data" in capsys.readouterr().err


def test_overrides_keep_the_recipes_other_defaults():
    from lmforge.cli.architectures import T5_FLAGS, merged
    from lmforge.cli.main import build_parser
    from lmforge.cli.recipes import default_recipe, recipe_data
    from lmforge.train.config import build_dataclass
    from lmforge.train.seq2seq import T5Recipe

    args = build_parser().parse_args(["t5", "--data", "d", "--pretrain-time", "240", "model.feed_forward_proj=gated-gelu"])
    recipe = build_dataclass(T5Recipe, merged(default_recipe(T5Recipe), recipe_data(args, T5_FLAGS)), "")
    default = T5Recipe(data="d")
    assert recipe.model == default.model.replace(feed_forward_proj="gated-gelu")
    assert recipe.pretrain == default.pretrain.replace(time_budget_s=240.0)  # still at most 1000 steps


def test_the_shipped_t5_reverse_recipe_reads_as_written():
    from pathlib import Path

    from lmforge.cli.architectures import T5_FLAGS, merged
    from lmforge.cli.main import build_parser
    from lmforge.cli.recipes import default_recipe, recipe_data
    from lmforge.train.config import build_dataclass
    from lmforge.train.seq2seq import T5Recipe

    config = Path(__file__).resolve().parents[2] / "configs" / "t5-reverse.yaml"
    args = build_parser().parse_args(["t5", "--config", str(config), "--data", "d"])
    recipe = build_dataclass(T5Recipe, merged(default_recipe(T5Recipe), recipe_data(args, T5_FLAGS)), "")
    assert recipe.task == "reverse" and recipe.model.d_model == 64 and recipe.model.relative_attention_num_buckets == 64
    assert (recipe.pretrain.time_budget_s, recipe.finetune.time_budget_s, recipe.finetune.batch_size) == (120, 480, 128)
    assert recipe.finetune.optim.lr == 3e-3 and recipe.finetune.optim.weight_decay == T5Recipe(data="d").finetune.optim.weight_decay


def t5_folder(tmp_path):
    from lmforge.model.t5 import T5Config, T5ForConditionalGeneration, init_t5_weights

    tokenizer = train_char(["abcdefgh <>"])
    config = T5Config(vocab_size=tokenizer.vocab_size, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    model = T5ForConditionalGeneration(config)
    init_t5_weights(model, seed=3)
    return save_hf_folder(model, tokenizer, tmp_path / "t5"), tokenizer


def lstm_folder(tmp_path):
    from lmforge.model.lstm import LSTMConfig, LSTMLanguageModel, init_lstm_weights

    tokenizer = train_char(["abcdefgh "])
    model = LSTMLanguageModel(LSTMConfig(vocab_size=tokenizer.vocab_size, dim=16, n_layers=1))
    init_lstm_weights(model, seed=1)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(50)  # peaked distributions: a greedy choice far from any tie
    return save_hf_folder(model, tokenizer, tmp_path / "lstm"), tokenizer, model


def test_t5_generate_prints_what_transformers_generates(tmp_path, capsys):
    from transformers import T5ForConditionalGeneration as HFT5

    folder, tokenizer = t5_folder(tmp_path)
    assert main(["t5-generate", "--model", str(folder), "--text", "abc", "--text", "hgf", "--max-new-tokens", "6"]) == 0
    lines = capsys.readouterr().out.splitlines()
    theirs = HFT5.from_pretrained(str(folder)).eval()
    for text, line in zip(["abc", "hgf"], lines, strict=True):
        ids = torch.tensor([tokenizer.encode(text) + [1]])
        out = theirs.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                              num_beams=1)[0, 1:].tolist()
        assert line == tokenizer.decode(out[:out.index(1)] if 1 in out else out)


def test_lstm_generate_greedy_equals_argmax_over_the_whole_prefix(tmp_path, capsys):
    folder, tokenizer, model = lstm_folder(tmp_path)
    assert main(["lstm-generate", "--model", str(folder), "--prompt", "abc", "--max-new-tokens", "5",
                 "--temperature", "0"]) == 0
    ids = [tokenizer.bos_id] + tokenizer.encode("abc")
    for _ in range(5):  # no carried state: the whole sequence read again for each token
        ids.append(int(model(torch.tensor([ids]))[0][0, -1].argmax()))
    assert capsys.readouterr().out == "abc" + tokenizer.decode(ids[4:]) + "\n"
    assert main(["lstm-generate", "--model", str(folder), "--max-new-tokens", "0"]) == 2


def test_decoder_verbs_say_what_to_use_for_other_architectures(tmp_path, capsys):
    folders = {"fill-mask": bert_folder(tmp_path), "t5-generate": t5_folder(tmp_path)[0],
               "lstm-generate": lstm_folder(tmp_path)[0]}
    for instead, folder in folders.items():
        assert main(["generate", "--model", str(folder), "--prompt", "ab"]) == 2
        err = capsys.readouterr().err
        assert f"lmforge {instead} --model FOLDER" in err and "not a decoder-only model" in err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["chat", "--model", str(folders["t5-generate"])]) == 2
    assert "lmforge t5-generate" in capsys.readouterr().err
