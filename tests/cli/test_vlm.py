"""`lmforge vlm data`, `lmforge chat --image` and their errors, through the CLI entry point."""

from __future__ import annotations

import io
import json

import torch
from PIL import Image

from lmforge.cli.main import main
from lmforge.core.config import ModelConfig
from lmforge.infer.vision import answer_prompt
from lmforge.io.hf import save_pretrained
from lmforge.io.vision import save_vision_model
from lmforge.model.transformer import Transformer, init_weights
from lmforge.model.vision import Projector, VisionConfig, VisionEncoder, VisionLanguageModel
from lmforge.tokenizer.image_chat import choose_image_token
from lmforge.tokenizer.train import train_bpe


def tiny_vlm(tmp_path):
    """A tiny untrained vision-language model, saved: (model, tokenizer, folder)."""
    tokenizer = train_bpe(["What is in the picture? red green blue"] * 20, vocab_size=300)
    torch.manual_seed(0)
    lm = Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=1, n_heads=4, ffn_dim=64, max_seq_len=128))
    init_weights(lm, seed=0)
    token, token_id = choose_image_token(tokenizer)
    config = VisionConfig(image_size=24, patch_size=6, dim=32, n_layers=1, n_heads=2, ffn_dim=64, lm_dim=32, image_token=token)
    vlm = VisionLanguageModel(lm, VisionEncoder(config), Projector(config), token_id).eval()
    return vlm, tokenizer, save_vision_model(tmp_path / "vlm", vlm, tokenizer)


def test_vlm_data_and_chat_with_an_image(tmp_path, capsys):
    assert main(["vlm", "data", "--out", str(tmp_path / "data"), "--train", "2", "--test", "1", "--heldout", "1",
                 "--image-size", "24"]) == 0
    picture = tmp_path / "data" / "images" / "test-00000.png"
    assert picture.is_file()
    vlm, tokenizer, folder = tiny_vlm(tmp_path)
    lm = vlm.lm
    capsys.readouterr()
    assert main(["chat", "--model", str(folder), "--image", str(picture), "--prompt", "What is in the picture?",
                 "--max-new-tokens", "4"]) == 0
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": str(picture)}},
                                             {"type": "text", "text": "What is in the picture?"}]}]
    assert capsys.readouterr().out == answer_prompt(vlm, tokenizer, messages, max_new_tokens=4)[0] + "\n"

    (tmp_path / "broken.png").write_bytes(picture.read_bytes()[:40])
    assert main(["chat", "--model", str(folder), "--image", str(tmp_path / "broken.png"), "--prompt", "?"]) == 2
    assert "truncated or corrupt" in capsys.readouterr().err
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buffer, format="TIFF")
    (tmp_path / "a.tiff").write_bytes(buffer.getvalue())
    assert main(["chat", "--model", str(folder), "--image", str(tmp_path / "a.tiff"), "--prompt", "?"]) == 2
    assert "accepted format" in capsys.readouterr().err
    save_pretrained(lm, tokenizer, tmp_path / "text-only")
    assert main(["chat", "--model", str(tmp_path / "text-only"), "--image", str(picture), "--prompt", "?"]) == 2
    assert "needs a vision-language model folder" in capsys.readouterr().err


def test_eval_image_qa_prints_each_kind_and_writes_results(tmp_path, capsys):
    from lmforge.eval.report import build_report

    data = tmp_path / "data"
    assert main(["vlm", "data", "--out", str(data), "--train", "1", "--test", "2", "--heldout", "1",
                 "--image-size", "24"]) == 0
    _, _, folder = tiny_vlm(tmp_path)
    capsys.readouterr()
    assert main(["eval", "--task", "image-qa", "--model", str(folder), "--data", str(data), "--limit", "2",
                 "--max-new-tokens", "3", "--json", str(tmp_path / "qa.json"), "--run-dir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "qa.json").read_text())
    assert json.loads((tmp_path / "run" / "eval" / "image-qa.json").read_text())["runs"] == results["runs"]
    test, heldout = results["runs"]
    assert (test["split"], test["pictures"], test["n"], heldout["pictures"]) == ("test", 2, 8, 1)
    assert results["config"]["max_new_tokens"] == 3 and results["model"] == str(folder)
    for kind in ("colour", "shape", "count", "position"):
        row = f"| {kind} | {test['metrics'][f'acc_{kind}']:.3f} | {test['metrics'][f'chance_{kind}']:.3f} | 2 |"
        assert row in out
    assert "image-qa test: 2 pictures, 8 questions" in out and "image-qa heldout: 1 pictures, 4 questions" in out
    assert "| image-qa |" in build_report(tmp_path / "run")

    for flags, message in ((["--data", str(tmp_path / "nowhere")], "nowhere/test-qa.jsonl does not exist"),
                           ([], "needs --data FOLDER"),
                           (["--data", str(data), "--shots", "1"], "--shots (image-qa is zero-shot) does not apply"),
                           (["--data", str(data), "--split", "train"], "--split must be one of test, heldout")):
        assert main(["eval", "--task", "image-qa", "--model", str(folder), *flags]) == 2
        assert message in capsys.readouterr().err
    assert main(["eval", "--task", "image-qa", "--model", str(folder / "lm"), "--data", str(data)]) == 2
    assert "needs a vision-language model folder" in capsys.readouterr().err
