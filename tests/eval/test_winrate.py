"""Win rates with rule, reward-model and model judges; order randomisation; compliance; the eval flag."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.cli.main import main
from lmforge.core.config import ModelConfig
from lmforge.eval.judge import Judge
from lmforge.eval.winrate import answer, compliance, model_judgement, reward_judgement, rule_judgement, win_rate
from lmforge.infer.sampling import SamplingParams
from lmforge.io.hf import load_sequence_classifier, save_pretrained, save_sequence_classifier
from lmforge.model.heads import ScalarHeadModel
from lmforge.model.transformer import Transformer, init_weights
from lmforge.tokenizer.train import train_bpe

PROMPTS = [[{"role": "user", "content": f"Tell me about {w}."}] for w in "sun moon star comet river stone cloud rain".split()]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("winrate")
    tokenizer = train_bpe(["Tell me about the sun and the moon and a star, a comet, a river, stone, cloud, rain!"] * 20,
                          vocab_size=300)
    folders = []
    for seed in (0, 1):
        config = ModelConfig(family="llama", vocab_size=tokenizer.vocab_size, dim=32, n_layers=2, n_heads=4,
                             n_kv_heads=2, ffn_dim=64, max_seq_len=256, tie_embeddings=True)
        model = Transformer(config)
        init_weights(model, seed=seed)
        save_pretrained(model, tokenizer, root / f"m{seed}")
        folders.append(root / f"m{seed}")
    head = ScalarHeadModel(model, init_std=0.5)
    save_sequence_classifier(head, tokenizer, root / "rm", pad_id=tokenizer.pad_id)
    return root, folders, model, tokenizer


def test_rule_judge_and_order_randomisation():
    short = ["ok"] * 8
    long = ["this answer is long"] * 8
    result = win_rate(PROMPTS, short, long, rule_judgement(lambda text: len(text.split()) <= 2), seed=3)
    m = result["metrics"]
    assert m["win_rate"] == 1.0 and m["wins"] == 8 and m["win_rate_ci"] == [1.0, 1.0]
    shown_first = [item["a_shown_first"] for item in result["items"]]
    assert 0 < sum(shown_first) < 8  # both orders occur

    def first_always_wins(prompts, first, second):  # a judge with nothing but position bias
        return [1.0] * len(first)

    biased = win_rate(PROMPTS * 25, ["a"] * 200, ["b"] * 200, first_always_wins, seed=0)["metrics"]
    assert abs(biased["win_rate"] - 0.5) < 0.1 and biased["first_shown_wins"] == 1.0
    low, high = biased["win_rate_ci"]
    assert low < 0.5 < high  # randomised order: pure position bias is no evidence either way
    tie = win_rate(PROMPTS, short, short, rule_judgement(len))["metrics"]
    assert tie["ties"] == 8 and tie["win_rate"] == 0.5
    with pytest.raises(ValueError, match="same positive number"):
        win_rate(PROMPTS, short[:3], long, rule_judgement(len))


def test_reward_and_model_judges(tiny):
    root, _, model, tokenizer = tiny
    rm, rm_tokenizer, pad = load_sequence_classifier(root / "rm")
    judgement = reward_judgement(rm, rm_tokenizer, pad)
    first, second = ["the sun", "rain rain", "a comet"], ["a stone", "cloud", "the moon is a star"]
    verdicts = judgement(PROMPTS[:3], first, second)
    assert set(verdicts) <= {0.0, 0.5, 1.0}
    assert [1.0 - v for v in verdicts] == judgement(PROMPTS[:3], second, first)  # the order does not matter
    judge = model_judgement(Judge(model, tokenizer), "The response is short.")
    p = judge(PROMPTS[:3], first, second)
    q = judge(PROMPTS[:3], second, first)
    assert all(0 < x < 1 for x in p)
    torch.testing.assert_close(torch.tensor(p) + torch.tensor(q), torch.ones(3), atol=1e-6, rtol=0)  # both orders


def test_answers_and_compliance(tiny):
    _, _, model, tokenizer = tiny
    answers = answer(model, tokenizer, PROMPTS[:4], SamplingParams(max_new_tokens=5))
    assert len(answers) == 4 and all(isinstance(a, str) for a in answers)
    result = compliance(["Short.", "No shouting!", "A long answer of many words here."],
                        {"short": lambda t: len(t.split()) <= 3, "calm": lambda t: "!" not in t})
    assert result["all"]["rate"] == pytest.approx(1 / 3) and result["short"]["rate"] == pytest.approx(2 / 3)
    assert result["passed"] == [True, False, False] and result["all"]["stderr"] > 0


def test_eval_winrate_flag(tmp_path, tiny, capsys):
    root, (a, b), _, _ = tiny
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p[0]["content"]}) + "\n" for p in PROMPTS))
    constitution = tmp_path / "c.yaml"
    constitution.write_text("principles:\n  - {name: short, critique: c, revision: r, check: {max_words: 3}}\n")
    out = tmp_path / "winrate.json"
    for judge in (f"rule:{constitution}", f"rm:{root / 'rm'}", "model"):
        assert main(["eval", "--model", str(a), "--winrate", str(b), "--task", f"prompts:{prompts}", "--winrate-judge",
                     judge, "--max-new-tokens", "6", "--threads", "1", "--json", str(out)]) == 0
        printed = capsys.readouterr().out
        assert "win rate of" in printed and "95% CI" in printed
        report = json.loads(out.read_text())
        assert report["metrics"]["n"] == len(PROMPTS) and len(report["items"]) == len(PROMPTS)
        assert {"answer_a", "answer_b", "p_a"} <= set(report["items"][0])
