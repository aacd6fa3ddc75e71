"""Falcon, MPT, BLOOM and sliding-window Mistral/Qwen2 against transformers on tiny random configs:
logits, greedy generation, batched decode of unequal prompts, HF folders both ways."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoModelForCausalLM, BloomConfig, BloomForCausalLM, FalconConfig, FalconForCausalLM, MistralConfig,
    MistralForCausalLM, MptConfig, MptForCausalLM, Qwen2Config, Qwen2ForCausalLM,
)

from lmforge.core.config import ModelConfig
from lmforge.infer import Engine, SamplingParams
from lmforge.io.hf import load_pretrained, save_pretrained
from lmforge.model.transformer import Transformer, alibi_slopes, init_weights
from lmforge.tokenizer.train import train_bpe

VOCAB = 300
LLAMA_SHAPE = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=128)
REFERENCES = {
    # multi-query, attention and MLP side by side with one norm (Falcon-7B)
    "falcon-7b": lambda: FalconForCausalLM(FalconConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, multi_query=True,
        parallel_attn=True, bias=False, max_position_embeddings=128, rope_theta=500.0, hidden_dropout=0.0,
        attention_dropout=0.0)),
    # grouped kv heads, ln_attn + ln_mlp, biases (Falcon-40B)
    "falcon-40b": lambda: FalconForCausalLM(FalconConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_kv_heads=2,
        new_decoder_architecture=True, bias=True, ffn_hidden_size=48, max_position_embeddings=128,
        tie_word_embeddings=False, hidden_dropout=0.0, attention_dropout=0.0)),
    # one kv head per query head, sequential blocks
    "falcon-seq": lambda: FalconForCausalLM(FalconConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, multi_query=False,
        parallel_attn=False, bias=True, max_position_embeddings=128, hidden_dropout=0.0, attention_dropout=0.0)),
    "mpt": lambda: MptForCausalLM(MptConfig(
        vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, max_seq_len=128,
        resid_pdrop=0.0, emb_pdrop=0.0)),
    "bloom": lambda: BloomForCausalLM(BloomConfig(
        vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4, hidden_dropout=0.0, attention_dropout=0.0)),
    # the window (4) is shorter than every prompt and the generation
    "mistral-window": lambda: MistralForCausalLM(MistralConfig(**LLAMA_SHAPE, sliding_window=4)),
    # Qwen2: full attention in layer 0, the window from layer 1 (max_window_layers)
    "qwen2-window": lambda: Qwen2ForCausalLM(Qwen2Config(**LLAMA_SHAPE, use_sliding_window=True, sliding_window=5,
                                                         max_window_layers=1)),
}
PROMPTS = [[5, 17, 3, 99, 42, 8, 61, 7, 23, 11], [9, 2, 77, 31, 4, 58], [100, 12, 45, 6, 19, 88, 30, 2, 14, 71, 3, 50, 26]]


@pytest.fixture(scope="module")
def tokenizer():
    """Any tokenizer with VOCAB ids: the engine decodes text, the tests compare ids."""
    words = " ".join(f"w{i} x{i % 7} y{i % 13}" for i in range(400))
    tok = train_bpe([words] * 5, vocab_size=VOCAB)
    assert tok.vocab_size == VOCAB
    return tok


def randomised(reference: torch.nn.Module) -> torch.nn.Module:
    """Random norms and biases too, so that every parameter's place is checked (HF inits them to 1 / 0)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if p.dim() == 1:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.3 * torch.randn_like(p))
            else:
                p.normal_(0, 0.1)
    return reference.eval()


def naive_greedy(model, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


@pytest.mark.parametrize("kind", sorted(REFERENCES))
def test_family_matches_transformers(tmp_path, tokenizer, kind):
    reference = randomised(REFERENCES[kind]())
    reference.save_pretrained(tmp_path / "hf")
    model, _ = load_pretrained(tmp_path / "hf")
    ids = torch.randint(0, VOCAB, (2, 14))
    with torch.no_grad():
        expected = reference(ids).logits
        assert (model(ids) - expected).abs().max().item() < 1e-4

        # Greedy generation over 32 tokens: transformers' cached generate against our engine.
        prompt = torch.tensor([PROMPTS[0]])
        theirs = reference.generate(prompt, max_new_tokens=32, do_sample=False, pad_token_id=0, eos_token_id=None)
    engine = Engine(model, tokenizer, max_batch_size=3)
    params = SamplingParams(max_new_tokens=32, ignore_eos=True)
    ours = engine.generate([PROMPTS[0]], params)[0].token_ids
    assert ours == theirs[0, len(PROMPTS[0]):].tolist()

    # Unequal prompts decoded together (right-padded prefill, rows at their own lengths) = alone, uncached.
    for prompt, completion in zip(PROMPTS, engine.generate(PROMPTS, SamplingParams(max_new_tokens=20, ignore_eos=True))):
        assert completion.token_ids == naive_greedy(model, prompt, 20)

    # Our folder loads in transformers with the same logits, and back in lmforge unchanged.
    save_pretrained(model, None, tmp_path / "ours")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "ours", dtype=torch.float32).eval()
    with torch.no_grad():
        assert (again(ids).logits - expected).abs().max().item() < 1e-4
    assert load_pretrained(tmp_path / "ours")[0].config == model.config


@pytest.mark.parametrize("family", ["falcon", "mpt", "bloom"])
def test_padding_and_cache_agree_with_plain_forward(family):
    config = ModelConfig(family=family, vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4,
                         n_kv_heads=1 if family == "falcon" else None, max_seq_len=64,
                         parallel_block=family == "falcon")
    model = Transformer(config)
    init_weights(model, seed=0)
    model.eval()
    assert sum(p.numel() for p in model.parameters()) == config.num_parameters()
    ids = torch.randint(0, VOCAB, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 7:] = False
    with torch.no_grad():
        full = model(ids)
        padded = model(ids, padding_mask=mask)
        cache = model.new_cache(2, 32)
        parts = [model(ids[:, :5], cache=cache)] + [model(ids[:, t:t + 1], cache=cache, starts=[t, t]) for t in range(5, 12)]
        step = model.decode_step(ids[:, 11:12], torch.tensor([[11], [11]]), cache)
    assert (padded[1, :7] - model(ids[1:, :7])[0]).abs().max() < 1e-5
    assert (torch.cat(parts, 1) - full).abs().max() < 1e-5
    assert (step[:, 0] - full[:, 11]).abs().max() < 1e-5


def test_sliding_window_limits_what_a_token_sees():
    config = ModelConfig(vocab_size=VOCAB, dim=32, n_layers=1, n_heads=4, n_kv_heads=2, max_seq_len=64, sliding_window=3)
    model = Transformer(config)
    init_weights(model, seed=0)
    model.eval()
    ids = torch.randint(0, VOCAB, (1, 10))
    changed = ids.clone()
    changed[0, 2] = (ids[0, 2] + 1) % VOCAB
    with torch.no_grad():
        a, b = model(ids), model(changed)
    # One layer, window 3: position p sees p-2..p, so token 2 reaches positions 2, 3, 4 and no further.
    assert (a[0, 2:5] - b[0, 2:5]).abs().max() > 1e-4
    assert (a[0, 5:] - b[0, 5:]).abs().max() < 1e-6


@pytest.mark.parametrize("heads", [4, 6, 12])
def test_alibi_slopes_follow_each_family(heads):
    from transformers.models.bloom.modeling_bloom import _get_alibi_slopes
    from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor

    bloom = ModelConfig(family="bloom", vocab_size=8, dim=heads * 4, n_layers=1, n_heads=heads)
    mpt = ModelConfig(family="mpt", vocab_size=8, dim=heads * 4, n_layers=1, n_heads=heads)
    assert torch.allclose(alibi_slopes(bloom), _get_alibi_slopes(heads, torch.device("cpu")), rtol=1e-6)
    # MPT's tensor is slope * (k - (L - 1)) for L keys; with L = 2 its first column is -slope.
    assert torch.allclose(alibi_slopes(mpt), -build_mpt_alibi_tensor(heads, 2)[:, 0, 0], rtol=1e-6)
    # By hand, for 4 heads: 2^(-8h/4), h = 1..4.
    four = ModelConfig(family="mpt", vocab_size=8, dim=16, n_layers=1, n_heads=4)
    assert alibi_slopes(four).tolist() == [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8]


@pytest.mark.parametrize("change, message", [
    ({"model_type": "falcon", "alibi": True}, "alibi"),
    ({"model_type": "mpt", "attn_config": {"qk_ln": True}}, "qk_ln"),
    ({"model_type": "bloom", "apply_residual_connection_post_layernorm": True}, "apply_residual"),
    ({"model_type": "gptj"}, "model_type 'gptj' is not supported"),
])
def test_unsupported_variants_are_refused_by_name(change, message):
    from lmforge.io.hf import config_from_hf

    base = {"vocab_size": VOCAB, "hidden_size": 32, "d_model": 32, "n_layer": 2, "n_layers": 2, "num_hidden_layers": 2,
            "n_head": 4, "n_heads": 4, "num_attention_heads": 4}
    with pytest.raises(ValueError, match=message):
        config_from_hf({**base, **change})


@pytest.mark.parametrize("family", ["falcon", "mpt", "bloom", "mistral"])
def test_lora_finetuning_and_evaluation_run_on_each_family(tmp_path, family):
    import json

    from lmforge.data.synthetic import make_items
    from lmforge.eval.runner import EvalConfig, evaluate
    from lmforge.eval.tasks import synthetic_task
    from lmforge.train.finetune import FinetuneConfig, finetune

    docs = [f"{i.question} {i.answer}" for i in make_items("reverse", 100)]
    tokenizer = train_bpe(docs + ["Be brief. Say sun."] * 10, vocab_size=400)
    shape = dict(vocab_size=tokenizer.vocab_size, dim=32, n_layers=2, n_heads=4, max_seq_len=128)
    extra = {"falcon": dict(n_kv_heads=1, parallel_block=True), "mistral": dict(family="llama", n_kv_heads=2, sliding_window=8)}
    config = ModelConfig(**{"family": family, **shape, **extra.get(family, {})})
    model = Transformer(config)
    init_weights(model, seed=0)
    save_pretrained(model, tokenizer, tmp_path / "base")
    run = FinetuneConfig.from_dict(dict(
        model=str(tmp_path / "base"), task="reverse", train_items=16, eval_items=0, val_max=4, out_dir=str(tmp_path / "run"),
        seq_len=64, batch_size=4, max_steps=4, threads=1, log_every=1, eval_every=100, eval_before=False, plot=False,
        method="lora", optim={"lr": 1e-2, "weight_decay": 0.0}))
    result = finetune(run, show_progress=False)
    assert result.steps == 4 and 0 < result.trainable_parameters < result.total_parameters
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in records if "train_loss" in r]
    assert len(losses) == 4 and losses[-1] < losses[0]

    task = synthetic_task("reverse", n_docs=3)
    scores = evaluate(model, tokenizer, task, EvalConfig(chat=True, max_new_tokens=6))["runs"][0]
    assert scores["n"] == 3 and 0.0 <= scores["metrics"]["accuracy"] <= 1.0
    assert all(sample["tokens"] > 0 for sample in scores["samples"])  # it generated through the engine
