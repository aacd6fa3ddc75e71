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
