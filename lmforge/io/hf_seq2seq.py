"""Model folders for the non-decoder families: T5 (encoder-decoder), BERT (encoder) and the LSTM.

Each is config.json + model.safetensors (+ tokenizer files). T5 and BERT use the layout
`transformers` writes for T5ForConditionalGeneration, BertForMaskedLM and
BertForSequenceClassification, so either side opens the other's folders; the LSTM, which has no
Hugging Face class, is the same kind of folder with model_type "lmforge-lstm". Tied copies (T5's
encoder/decoder embed_tokens, a tied head) are not stored twice; on reading they are accepted and
dropped. Only safetensors are read (io/hf.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from lmforge.core.files import write_folder_atomically
from lmforge.io.hf import read_config, read_safetensors
from lmforge.model.bert import BertConfig, BertForMaskedLM, BertForSequenceClassification
from lmforge.model.lstm import LSTMConfig, LSTMLanguageModel
from lmforge.model.t5 import T5Config, T5ForConditionalGeneration
from lmforge.tokenizer.tokenizer import Tokenizer

Seq2SeqModel = T5ForConditionalGeneration | BertForMaskedLM | BertForSequenceClassification | LSTMLanguageModel
LSTM_TYPE = "lmforge-lstm"


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------
def t5_hf_config(config: T5Config, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """config.json of a T5ForConditionalGeneration. `scale_decoder_outputs` is how transformers 5
    spells a tied, scaled head (it always ties the head); transformers 4 reads tie_word_embeddings."""
    data = config.to_dict()
    data.update(model_type="t5", architectures=["T5ForConditionalGeneration"], is_encoder_decoder=True,
                num_decoder_layers=config.decoder_layers, dropout_rate=0.0,
                dense_act_fn=config.activation, is_gated_act=config.gated,
                scale_decoder_outputs=config.tie_word_embeddings, torch_dtype=str(dtype).removeprefix("torch."))
    return data


def t5_config_from_hf(data: dict[str, Any], where: str = "config.json") -> T5Config:
    if data.get("model_type") != "t5":
        raise ValueError(f"{where}: model_type is {data.get('model_type')!r}, expected 't5'")
    values = dict(data)
    if "scale_decoder_outputs" in values:  # transformers 5: the head is scaled exactly when it is tied
        values["tie_word_embeddings"] = bool(values["scale_decoder_outputs"])
    if isinstance(values.get("eos_token_id"), list):
        values["eos_token_id"] = values["eos_token_id"][0]
    return T5Config.from_dict(values, where)


def bert_hf_config(model: BertForMaskedLM | BertForSequenceClassification,
                   dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    data = model.config.to_dict()
    data.update(model_type="bert", architectures=[type(model).__name__], hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0, torch_dtype=str(dtype).removeprefix("torch."))
    if isinstance(model, BertForSequenceClassification):
        data.update(num_labels=model.num_labels, id2label={str(i): label for i, label in enumerate(model.labels)},
                    label2id={label: i for i, label in enumerate(model.labels)})
    return data


def bert_config_from_hf(data: dict[str, Any], where: str = "config.json") -> BertConfig:
    if data.get("model_type") != "bert":
        raise ValueError(f"{where}: model_type is {data.get('model_type')!r}, expected 'bert'")
    return BertConfig.from_dict(data, where)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def stored_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Weights to store: every tensor once (a tied head is left out), contiguous, on the CPU."""
    seen: set[int] = set()
    out = {}
    for name, value in model.state_dict(keep_vars=True).items():
        if id(value) in seen:
            continue
        seen.add(id(value))
        out[name] = value.detach().contiguous().cpu()
    return out


def save_hf_folder(model: Seq2SeqModel, tokenizer: Tokenizer | None, folder: str | os.PathLike) -> Path:
    """Write `model` (and its tokenizer) as a Hugging Face folder, atomically."""
    return write_folder_atomically(folder, lambda tmp: write_hf_files(model, tokenizer, tmp))


def write_hf_files(model: Seq2SeqModel, tokenizer: Tokenizer | None, folder: Path) -> None:
    """config.json, model.safetensors and the tokenizer's files into an existing folder (a
    temporary one the caller renames: `save_hf_folder`, training checkpoints)."""
    dtype = next(model.parameters()).dtype
    if isinstance(model, T5ForConditionalGeneration):
        config = t5_hf_config(model.config, dtype)
    elif isinstance(model, LSTMLanguageModel):
        config = {**model.config.to_dict(), "model_type": LSTM_TYPE, "torch_dtype": str(dtype).removeprefix("torch.")}
    else:
        config = bert_hf_config(model, dtype)
    if tokenizer is not None:
        for key, value in (("bos_token_id", tokenizer.bos_id), ("pad_token_id", tokenizer.pad_id)):
            config.setdefault(key, value)

    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(stored_state_dict(model), str(folder / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save(folder)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
def _load_weights(model: nn.Module, tensors: dict[str, torch.Tensor], where: Path) -> None:
    expected = set(stored_state_dict(model))
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise ValueError(f"{where}: weights do not match the {type(model).__name__} config: "
                         f"missing {missing[:4]}, unexpected {unexpected[:4]}")
    try:
        model.load_state_dict({k: tensors[k] for k in expected}, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise ValueError(f"{where}: weights do not match config.json: {error}") from None


def load_t5(folder: str | os.PathLike, dtype: torch.dtype = torch.float32) -> T5ForConditionalGeneration:
    """A T5ForConditionalGeneration folder (ours or transformers') as our model, in eval mode."""
    folder = Path(folder)
    config = t5_config_from_hf(read_config(folder), str(folder / "config.json"))
    tensors = read_safetensors(folder)
    for tied in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
        tensors.pop(tied, None)
    tensors.pop("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight", None)  # old HF files
    if config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    elif "lm_head.weight" not in tensors and "shared.weight" in tensors:
        tensors["lm_head.weight"] = tensors["shared.weight"].clone()  # transformers 5 ties the head even unscaled
    model = T5ForConditionalGeneration(config)
    _load_weights(model, tensors, folder)
    return model.to(dtype).eval()


def load_bert(folder: str | os.PathLike, dtype: torch.dtype = torch.float32) -> BertForMaskedLM | BertForSequenceClassification:
    """A BertForMaskedLM or BertForSequenceClassification folder as our model, in eval mode."""
    folder = Path(folder)
    raw = read_config(folder)
    config = bert_config_from_hf(raw, str(folder / "config.json"))
    tensors = read_safetensors(folder)
    tensors.pop("bert.embeddings.position_ids", None)  # a buffer older transformers stored
    if "classifier.weight" in tensors:
        labels = [str(raw.get("id2label", {}).get(str(i), f"LABEL_{i}")) for i in range(tensors["classifier.weight"].shape[0])]
        model: nn.Module = BertForSequenceClassification(config, labels)
    else:
        decoder = tensors.pop("cls.predictions.decoder.weight", None)
        embedding = tensors.get("bert.embeddings.word_embeddings.weight")
        if decoder is not None and embedding is not None and not torch.equal(decoder, embedding):
            raise ValueError(f"{folder}: the MLM decoder weight differs from the word embeddings (an untied head "
                             "is not supported)")
        tensors.pop("cls.predictions.decoder.bias", None)  # the same tensor as cls.predictions.bias
        model = BertForMaskedLM(config)
    _load_weights(model, tensors, folder)
    return model.to(dtype).eval()


def load_lstm(folder: str | os.PathLike, dtype: torch.dtype = torch.float32) -> LSTMLanguageModel:
    """An LSTM folder written by `save_hf_folder`, in eval mode."""
    folder = Path(folder)
    raw = read_config(folder)
    if raw.get("model_type") != LSTM_TYPE:
        raise ValueError(f"{folder / 'config.json'}: model_type is {raw.get('model_type')!r}, expected {LSTM_TYPE!r}")
    model = LSTMLanguageModel(LSTMConfig.from_dict(raw, str(folder / "config.json")))
    _load_weights(model, read_safetensors(folder), folder)
    return model.to(dtype).eval()


def load_family(folder: str | os.PathLike, dtype: torch.dtype = torch.float32) -> Seq2SeqModel:
    """A T5, BERT or LSTM folder, by its config's model_type."""
    folder = Path(folder)
    kind = read_config(folder).get("model_type")
    loaders = {"t5": load_t5, "bert": load_bert, LSTM_TYPE: load_lstm}
    if kind not in loaders:
        raise ValueError(f"{folder / 'config.json'}: model_type {kind!r} is not one of {', '.join(loaders)}")
    return loaders[kind](folder, dtype)
