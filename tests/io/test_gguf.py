"""Our GGUF loader against Hugging Face transformers loading the same file."""

from __future__ import annotations

import time
import warnings

import gguf
import numpy as np
import pytest
import torch

from lmforge.infer import Engine, SamplingParams
from lmforge.io.gguf import load_gguf, unpermute_rows
from lmforge.io.gguf_writer import tokenizer_metadata
from lmforge.model.transformer import Transformer

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "Once upon a time, in a land far away, there lived",
    "Über den Wolken muss die Freiheit wohl grenzenlos sein. 東京は日本の首都です。",
    "<|im_start|>user\nWhat is 17 * 23?<|im_end|>\n<|im_start|>assistant\n",
]


def test_config_and_tokenizer_come_from_metadata(smollm):
    model, tokenizer = smollm
    c = model.config
    assert (c.family, c.dim, c.n_layers, c.n_heads, c.kv_heads, c.hidden_dim) == ("llama", 576, 30, 9, 3, 1536)
    assert c.rope_theta == 100000.0 and c.max_seq_len == 8192 and c.tie_embeddings
    assert tokenizer.vocab_size == 49152 and tokenizer.chat_template.startswith("{% for message in messages %}")


@pytest.mark.parametrize("prompt", PROMPTS)
def test_logits_match_transformers(smollm, hf_smollm, prompt):
    model, tokenizer = smollm
    ids = torch.tensor([tokenizer.encode(prompt)])
    with torch.no_grad():
        ours = model(ids)
        theirs = hf_smollm(ids).logits
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() < 1e-3


def test_greedy_64_tokens_identical_to_transformers(smollm, hf_smollm):
    model, tokenizer = smollm
    engine = Engine(model, tokenizer, max_batch_size=3)
    prompts = [PROMPTS[0], PROMPTS[2], PROMPTS[1]]
    # Both sides stop on token 2 (<|im_end|>, the GGUF's eos), as transformers' generate does.
    params = SamplingParams(max_new_tokens=64, stop_token_ids=frozenset({2}))
    ours = engine.generate([tokenizer.encode(p) for p in prompts], params)
    full_length = 0
    for prompt, completion in zip(prompts, ours):
        ids = torch.tensor([tokenizer.encode(prompt)])
        with torch.no_grad():
            out = hf_smollm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=64, do_sample=False,
                                     pad_token_id=2)
        theirs = out[0, ids.shape[1]:].tolist()
        if completion.finish_reason == "stop":
            assert theirs[-1] == 2
            theirs = theirs[:-1]
        assert completion.token_ids == theirs
        full_length += len(theirs) == 64
    assert full_length >= 1  # at least one prompt really runs the whole 64 tokens


def test_unpermute_inverts_llama_cpp_permutation():
    n_heads, head, cols = 3, 8, 5
    w = torch.randn(n_heads * head, cols)
    # llama.cpp's converter: interleave the two rotary halves of each head
    permuted = w.reshape(n_heads, 2, head // 2, cols).transpose(1, 2).reshape(w.shape)
    assert torch.equal(unpermute_rows(permuted, n_heads), w)


def test_load_is_fast_and_bf16_works(smollm_gguf):
    start = time.process_time()  # CPU seconds, so a busy machine does not fail it
    contents = load_gguf(smollm_gguf, dtype=torch.bfloat16)
    assert time.process_time() - start < 30
    assert all(t.dtype == torch.bfloat16 for t in contents.state_dict.values())
    assert contents.metadata["general.architecture"] == "llama"


# --------------------------------------------------------------------------------------------
# Every tensor type the loader claims, on small hand-written files
# --------------------------------------------------------------------------------------------
# Types the gguf package can quantize: real values go in. For the K-quants it cannot, blocks of
# random bytes are made valid by writing finite float16 scales at the offsets of ggml's layout.
QUANTIZABLE = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")
K_QUANT_SCALES = {  # block bytes -> offsets of the float16 super-block scales (d, dmin)
    "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,),
}
DIM, HEADS, KV_HEADS, FFN = 256, 4, 2, 256  # rows of 256 values hold whole K-quant super-blocks


@pytest.fixture(scope="module")
def small_tokenizer():
    from lmforge.tokenizer.train import train_bpe

    return train_bpe(["the cat sat on the mat, said the hat"] * 4, vocab_size=280)


def encode_tensor(values: np.ndarray, type_name: str, rng: np.random.Generator) -> np.ndarray:
    """The file's bytes (or plain floats) for one 2-D tensor of GGUF type `type_name`."""
    kind = gguf.GGMLQuantizationType[type_name]
    if type_name in QUANTIZABLE:
        return gguf.quants.quantize(values, kind)
    block_size, block_bytes = gguf.GGML_QUANT_SIZES[kind]
    rows, cols = values.shape
    blocks = rng.integers(0, 256, (rows, cols // block_size, block_bytes), dtype=np.uint8)
    for offset in K_QUANT_SCALES.get(type_name, ()):
        scale = rng.uniform(2e-4, 2e-3, (rows, cols // block_size)).astype(np.float16)
        blocks[..., offset:offset + 2] = scale.view(np.uint8).reshape(rows, cols // block_size, 2)
    return blocks.reshape(rows, -1)


def write_typed_llama(path, tokenizer, type_name: str, seed: int = 0) -> dict[str, np.ndarray]:
    """A one-block llama GGUF whose matrices are all `type_name`; returns gguf's dequantization of each."""
    rng = np.random.default_rng(seed)
    vocab, head = tokenizer.vocab_size, DIM // HEADS
    shapes = {"token_embd.weight": (vocab, DIM), "output.weight": (vocab, DIM),
              "blk.0.attn_q.weight": (HEADS * head, DIM), "blk.0.attn_k.weight": (KV_HEADS * head, DIM),
              "blk.0.attn_v.weight": (KV_HEADS * head, DIM), "blk.0.attn_output.weight": (DIM, HEADS * head),
              "blk.0.ffn_gate.weight": (FFN, DIM), "blk.0.ffn_up.weight": (FFN, DIM), "blk.0.ffn_down.weight": (DIM, FFN)}
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_context_length(64)
    writer.add_embedding_length(DIM)
    writer.add_block_count(1)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    meta = tokenizer_metadata(tokenizer, vocab, "gpt-2")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(meta["tokenizer.ggml.tokens"])
    writer.add_token_types(meta["tokenizer.ggml.token_type"])
    writer.add_token_merges(meta["tokenizer.ggml.merges"])
    expected = {}
    for name in ("output_norm.weight", "blk.0.attn_norm.weight", "blk.0.ffn_norm.weight"):
        expected[name] = (1 + 0.1 * rng.standard_normal(DIM)).astype(np.float32)
        writer.add_tensor(name, expected[name])
    kind = gguf.GGMLQuantizationType[type_name]
    for name, shape in shapes.items():
        data = encode_tensor((0.05 * rng.standard_normal(shape)).astype(np.float32), type_name, rng)
        if type_name in QUANTIZABLE or type_name in K_QUANT_SCALES:
            expected[name] = gguf.quants.dequantize(data, kind).reshape(shape)
        writer.add_tensor(name, data, raw_dtype=None if type_name in ("F32", "F16") else kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


GGUF_TO_HF = {"token_embd.weight": "model.embed_tokens.weight", "output.weight": "lm_head.weight",
              "output_norm.weight": "model.norm.weight", "blk.0.attn_norm.weight": "model.layers.0.input_layernorm.weight",
              "blk.0.ffn_norm.weight": "model.layers.0.post_attention_layernorm.weight",
              "blk.0.attn_q.weight": "model.layers.0.self_attn.q_proj.weight",
              "blk.0.attn_k.weight": "model.layers.0.self_attn.k_proj.weight",
              "blk.0.attn_v.weight": "model.layers.0.self_attn.v_proj.weight",
              "blk.0.attn_output.weight": "model.layers.0.self_attn.o_proj.weight",
              "blk.0.ffn_gate.weight": "model.layers.0.mlp.gate_proj.weight",
              "blk.0.ffn_up.weight": "model.layers.0.mlp.up_proj.weight",
              "blk.0.ffn_down.weight": "model.layers.0.mlp.down_proj.weight"}


def llama_cpp_unpermute(rows: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's converter, which stores each head's rotary halves interleaved."""
    return rows.reshape(n_heads, -1, 2, rows.shape[1]).swapaxes(1, 2).reshape(rows.shape)


@pytest.mark.parametrize("type_name", [*QUANTIZABLE, *K_QUANT_SCALES])
def test_every_supported_tensor_type_loads_like_gguf_and_transformers(tmp_path, small_tokenizer, type_name):
    from transformers import AutoModelForCausalLM

    path = tmp_path / f"tiny-{type_name}.gguf"
    expected = write_typed_llama(path, small_tokenizer, type_name)
    assert {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}["blk.0.ffn_up.weight"] == type_name
    contents = load_gguf(path)
    for name, values in expected.items():
        if name == "blk.0.attn_q.weight":
            values = llama_cpp_unpermute(values, HEADS)
        elif name == "blk.0.attn_k.weight":
            values = llama_cpp_unpermute(values, KV_HEADS)
        ours = contents.state_dict[GGUF_TO_HF[name]]
        np.testing.assert_allclose(ours.numpy(), values, rtol=0, atol=1e-6, err_msg=name)

    model = Transformer.from_state_dict(contents.config, contents.state_dict)
    ids = torch.tensor([small_tokenizer.encode("the cat sat on the mat")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32).eval()
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    assert float(theirs.abs().max()) > 0.1  # logits the weights really shape
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("type_name", ["Q8_K", "IQ4_NL"])
def test_other_tensor_types_are_refused_by_name(tmp_path, small_tokenizer, type_name):
    path = tmp_path / f"tiny-{type_name}.gguf"
    write_typed_llama(path, small_tokenizer, type_name)
    with pytest.raises(ValueError, match=f"tensor 'token_embd.weight' has unsupported type {type_name}"):
        load_gguf(path)


# --------------------------------------------------------------------------------------------
# Q4_0 / Q4_1 / Q8_0 loaded as they are stored, into the quantized layers
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_1", "Q8_0"])
def test_packed_blocks_load_exactly_into_quantized_layers(tmp_path, small_tokenizer, type_name):
    from lmforge.model.quant import Int4Linear, QuantEmbedding

    path = tmp_path / f"tiny-{type_name}.gguf"
    expected = write_typed_llama(path, small_tokenizer, type_name)
    contents = load_gguf(path, quant="auto")
    assert set(contents.state_dict) == {GGUF_TO_HF[n] for n in expected if n.endswith("norm.weight")}
    for name, values in expected.items():
        if name.endswith("norm.weight"):
            continue
        if name == "blk.0.attn_q.weight":
            values = llama_cpp_unpermute(values, HEADS)
        elif name == "blk.0.attn_k.weight":
            values = llama_cpp_unpermute(values, KV_HEADS)
        packed = contents.packed[GGUF_TO_HF[name].removesuffix(".weight")]
        assert torch.equal(packed.dequantize(), torch.from_numpy(values)), name  # bit for bit: no requantization

    dequantized = Transformer.from_state_dict(*_floats(path))
    exact = Transformer.from_state_dict(contents.config, contents.state_dict, quant="auto", packed=contents.packed,
                                        compute_dtype=torch.float32)
    fast = Transformer.from_state_dict(contents.config, contents.state_dict, quant="auto", packed=contents.packed)
    assert isinstance(exact.lm_head, Int4Linear) and isinstance(exact.model.embed_tokens, QuantEmbedding)
    assert exact.lm_head.planes == (2 if type_name == "Q8_0" else 1)  # 8-bit blocks as two 4-bit planes
    ids = torch.tensor([small_tokenizer.encode("the cat sat on the mat")])
    with torch.no_grad():
        reference = dequantized(ids)
        torch.testing.assert_close(exact(ids), reference, atol=1e-5, rtol=1e-5)
        assert (fast(ids) - reference).abs().max() < 0.02 * reference.abs().max()  # bfloat16 activations


def _floats(path):
    contents = load_gguf(path)
    return contents.config, contents.state_dict


def test_embedded_q4_1_model_runs_as_stored(smollm_gguf, smollm):
    """Every Q4_1 matrix and the Q8_0 embedding of the embedded file, read as blocks, equal gguf's
    dequantization (the session's float model) exactly."""
    contents = load_gguf(smollm_gguf, quant="int4")
    floats = smollm[0].state_dict()
    assert len(contents.packed) == 30 * 7 + 1
    for name, packed in contents.packed.items():
        assert torch.equal(packed.dequantize(), floats[f"{name}.weight"]), name


@pytest.mark.slow
def test_embedded_model_as_stored_gives_the_dequantized_logits(smollm_gguf, smollm):
    """Int4 kernels over the file's own blocks, float32 activations: the dequantized model's logits
    within 1e-3 (the kernel's float32 path is exact but slow, hence a slow test)."""
    from lmforge.io.gguf import load_gguf_model

    model, tokenizer = load_gguf_model(smollm_gguf, quant="auto", compute_dtype=torch.float32)
    ids = torch.tensor([tokenizer.encode(PROMPTS[0])])
    with torch.no_grad():
        assert (model(ids) - smollm[0](ids)).abs().max() < 1e-3


# ---------------------------------------------------------------------- SentencePiece vocabularies
SP_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    " leading space, and  two  spaces",
    "   three leading spaces and trailing   ",
    "Numbers 12345, 3.14159 and 2024-01-01 appear here.",
    "naïve café déjà vu über alles",
    "Emoji need bytes: 🙂👍🏽 and 日本語 too",
    "line one\nline two\n\n\ttabbed line",
    "",
]


def start_gguf(path, arch: str, config) -> gguf.GGUFWriter:
    """A writer with the model's shape in `arch`'s metadata keys."""
    writer = gguf.GGUFWriter(path, arch)
    writer.add_context_length(config.max_seq_len)
    writer.add_embedding_length(config.dim)
    writer.add_block_count(config.n_layers)
    writer.add_feed_forward_length(config.hidden_dim)
    writer.add_head_count(config.n_heads)
    writer.add_head_count_kv(config.kv_heads)
    return writer


def finish_gguf(writer: gguf.GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def sentencepiece_tokenizer_json(path):
    """A Llama-2-style tokenizer.json: <unk> <s> </s>, 256 <0xNN> byte tokens, learned pieces with ▁ for
    spaces (learned behind the Metaspace pre-tokenizer); BPE with byte fallback, Llama 2's normalizer
    (prepend ▁, spaces -> ▁) and decoder."""
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    space = "\u2581"
    corpus = ["The quick brown fox jumps over the lazy dog.", "Numbers like 12345 and 3.14 appear here.",
              "Hello world, hello there; the world is wide.", "naïve café déjà vu über", "  indented text\nnew line\ttab"] * 20
    learner = HFTokenizer(models.BPE(unk_token="<unk>"))
    learner.pre_tokenizer = pre_tokenizers.Metaspace(replacement=space, prepend_scheme="first", split=True)
    learner.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"],
                                                            show_progress=False))
    learned = sorted(learner.get_vocab().items(), key=lambda item: item[1])
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    pieces += [piece for piece, _ in learned if piece not in ("<unk>", "<s>", "</s>")]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in
              __import__("json").loads(learner.to_str())["model"]["merges"]]
    tok = HFTokenizer(models.BPE(vocab={p: i for i, p in enumerate(pieces)}, merges=merges, unk_token="<unk>",
                                 fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(space), normalizers.Replace(" ", space)])
    tok.decoder = decoders.Sequence([decoders.Replace(space, " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(content=" ", left=1, right=0)])
    from tokenizers import AddedToken
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    tok.save(str(path))
    return pieces


def write_sentencepiece_llama(path, pieces, model):
    """A llama GGUF as llama.cpp's converter writes Llama 2: tokenizer.ggml.model 'llama', scores
    (later pieces score lower), token types (control, unknown, byte, normal), BOS added."""
    from lmforge.io.gguf_writer import gguf_tensors

    writer = start_gguf(path, "llama", model.config)
    writer.add_layer_norm_rms_eps(model.config.norm_eps)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(pieces)
    writer.add_token_scores([0.0 if i < 259 else -float(i) for i in range(len(pieces))])
    writer.add_token_types([2, 3, 3] + [6] * 256 + [1] * (len(pieces) - 259))
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    for name, value in gguf_tensors(model).items():
        writer.add_tensor(name, value.numpy())
    finish_gguf(writer)


def test_sentencepiece_gguf_tokenizes_like_transformers_and_round_trips(tmp_path):
    from transformers import LlamaTokenizerFast

    from lmforge.core.config import ModelConfig
    from lmforge.io.gguf import load_gguf_model
    from lmforge.model.transformer import init_weights

    pieces = sentencepiece_tokenizer_json(tmp_path / "tokenizer.json")
    reference = LlamaTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"), bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", add_bos_token=True)
    config = ModelConfig(vocab_size=len(pieces), dim=32, n_layers=1, n_heads=4, n_kv_heads=2, ffn_dim=64,
                         max_seq_len=64, tie_embeddings=False)
    source = Transformer(config)
    init_weights(source, seed=0)
    write_sentencepiece_llama(tmp_path / "sp.gguf", pieces, source.eval())
    model, tokenizer = load_gguf_model(tmp_path / "sp.gguf")

    assert tokenizer.add_bos_token and tokenizer.bos_id == 1 and tokenizer.eos_id == 2
    byte_fallbacks = 0
    for text in SP_TEXTS + ["\n".join(SP_TEXTS)]:
        ids = tokenizer.encode(text)
        assert ids == reference.encode(text, add_special_tokens=False), text
        assert tokenizer.encode(text, add_bos=True) == reference.encode(text), text
        assert tokenizer.decode(ids) == text == reference.decode(ids)
        byte_fallbacks += sum(3 <= i < 259 for i in ids)
    assert byte_fallbacks > 10  # the emoji and CJK text went through <0xNN> tokens
    # Streaming never splits a character that came as bytes; a saved folder reloads the same vocabulary.
    from lmforge.tokenizer.tokenizer import StreamDecoder, Tokenizer

    stream, text = StreamDecoder(tokenizer), SP_TEXTS[5]
    assert "".join(stream.push(i) for i in tokenizer.encode(text)) + stream.flush() == text
    tokenizer.save(tmp_path / "folder")
    assert Tokenizer.from_folder(tmp_path / "folder").encode(SP_TEXTS[1]) == tokenizer.encode(SP_TEXTS[1])
    ids = torch.tensor([tokenizer.encode(SP_TEXTS[0], add_bos=True)])
    with torch.no_grad():
        assert (model(ids) - source(ids)).abs().max() < 1e-5


def test_unsupported_vocabulary_is_refused_by_name(tmp_path):
    from lmforge.io.gguf import load_gguf_model

    writer = gguf.GGUFWriter(tmp_path / "t5.gguf", "llama")
    for add, value in ((writer.add_context_length, 8), (writer.add_embedding_length, 8), (writer.add_block_count, 1),
                       (writer.add_feed_forward_length, 8), (writer.add_head_count, 2)):
        add(value)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("t5")
    writer.add_token_list(["a", "b"])
    for name, shape in {"token_embd.weight": (2, 8), "output_norm.weight": (8,), "blk.0.attn_norm.weight": (8,),
                        "blk.0.attn_q.weight": (8, 8), "blk.0.attn_k.weight": (8, 8), "blk.0.attn_v.weight": (8, 8),
                        "blk.0.attn_output.weight": (8, 8), "blk.0.ffn_norm.weight": (8,), "blk.0.ffn_gate.weight": (8, 8),
                        "blk.0.ffn_up.weight": (8, 8), "blk.0.ffn_down.weight": (8, 8)}.items():
        writer.add_tensor(name, np.zeros(shape, dtype=np.float32))
    finish_gguf(writer)
    with pytest.raises(ValueError, match="tokenizer.ggml.model='t5' is not supported"):
        load_gguf_model(tmp_path / "t5.gguf")


# ---------------------------------------------------------------------- Falcon, MPT, BLOOM files
FUSED_CONFIGS = {
    "falcon-7b": dict(family="falcon", n_kv_heads=1, parallel_block=True),
    "falcon-40b": dict(family="falcon", n_kv_heads=2, parallel_block=True, parallel_norms=2),
    "mpt": dict(family="mpt", alibi_bias_max=6.0),
    "bloom": dict(family="bloom"),
}


def write_fused_gguf(path, model, tokenizer):
    """A GGUF as llama.cpp's converter writes these models: names from gguf's own TensorNameMap, the
    fused q/k/v rows of Falcon and BLOOM reordered to [all q | all k | all v]."""
    config = model.config
    arch = config.family
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], config.n_layers)
    writer = start_gguf(path, arch, config)
    writer.add_layer_norm_eps(config.norm_eps)
    if arch == "mpt":
        writer.add_max_alibi_bias(config.alibi_bias_max)
    meta = tokenizer_metadata(tokenizer, config.vocab_size, "gpt-2")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(meta["tokenizer.ggml.tokens"])
    writer.add_token_types(meta["tokenizer.ggml.token_type"])
    writer.add_token_merges(meta["tokenizer.ggml.merges"])
    K, H, Dh = config.kv_heads, config.n_heads, config.head_size
    for key, value in model.state_dict().items():
        if key == "lm_head.weight" and config.tie_embeddings:
            continue
        hf_key = key.removeprefix("transformer.") if arch == "bloom" else key  # the map knows BLOOM's hub names
        name = names.get_name(hf_key, try_suffixes=(".weight", ".bias"))
        assert name is not None, key
        value = value.detach().float()
        if arch in ("falcon", "bloom") and "query_key_value" in key:
            grouped = value.reshape(K, H // K + 2, Dh, *value.shape[1:])
            value = torch.cat([grouped[:, :-2].reshape(-1, *value.shape[1:]), grouped[:, -2].reshape(-1, *value.shape[1:]),
                               grouped[:, -1].reshape(-1, *value.shape[1:])])
        writer.add_tensor(name, value.contiguous().numpy())
    finish_gguf(writer)


@pytest.mark.parametrize("kind", sorted(FUSED_CONFIGS))
def test_falcon_mpt_bloom_gguf_files_load(tmp_path, small_tokenizer, kind):
    from lmforge.core.config import ModelConfig
    from lmforge.io.gguf import load_gguf_model
    from lmforge.model.transformer import init_weights

    config = ModelConfig(vocab_size=small_tokenizer.vocab_size, dim=32, n_layers=2, n_heads=4, max_seq_len=64,
                         **FUSED_CONFIGS[kind])
    source = Transformer(config)
    init_weights(source, seed=3)
    with torch.no_grad():  # norms and biases away from 1 and 0, so misplaced ones show
        for name, p in source.named_parameters():
            if p.dim() == 1:
                p.add_(0.2 * torch.randn_like(p))
    write_fused_gguf(tmp_path / f"{kind}.gguf", source.eval(), small_tokenizer)
    model, tokenizer = load_gguf_model(tmp_path / f"{kind}.gguf")
    got = model.config
    assert (got.family, got.kv_heads, got.hidden_dim, got.parallel_block, got.parallel_norms, got.alibi_bias_max) == \
        (config.family, config.kv_heads, config.hidden_dim, config.parallel_block, config.parallel_norms, config.alibi_bias_max)
    ids = torch.tensor([tokenizer.encode("the cat sat on the mat")])
    with torch.no_grad():
        assert (model(ids) - source(ids)).abs().max() < 1e-5
