"""`lmforge models` lists what each family supports; the README lists exactly what loads; anything
else is refused with an error naming the architecture or vocabulary."""

from __future__ import annotations

import json
import re
from pathlib import Path

import gguf
import numpy as np
import pytest

from lmforge.cli.main import main
from lmforge.cli.models import family_support
from lmforge.io.gguf_validate import ARCHITECTURES
from lmforge.io.hf import MODEL_TYPES, load_pretrained

README = Path(__file__).resolve().parents[2] / "README.md"


def test_models_lists_every_family_with_its_support(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    rows = {row["family"]: row for row in family_support()}
    assert set(rows) == {"llama", "gpt2", "falcon", "mpt", "bloom"}
    assert rows["falcon"]["lora"] == "dense dense_4h_to_h dense_h_to_4h query_key_value"
    assert rows["mpt"]["lora"] == "Wqkv down_proj out_proj up_proj"
    assert "GGUF" not in rows["bloom"]["export"] and "GGUF" in rows["llama"]["export"]
    for row in rows.values():
        assert f"LoRA targets (all-linear): {row['lora']}" in out and f"GGUF architecture: {row['gguf']}" in out
    assert "'llama' (SentencePiece BPE" in out


def test_readme_lists_exactly_what_loads():
    section = README.read_text().split("- **What loads**", 1)[1].split("- Benchmark data", 1)[0]
    hf_part, gguf_part = section.split("- GGUF files", 1)
    listed_types = set(re.findall(r"`(\w+)`", hf_part.split("Variants", 1)[0]))
    assert set(MODEL_TYPES) <= listed_types
    assert listed_types - set(MODEL_TYPES) <= {"model_type", "sliding_window", "use_sliding_window", "max_window_layers",
                                              "ln_attn", "ln_mlp"}
    listed_archs = set(re.findall(r"`(\w+)`", gguf_part.split("with a byte-level", 1)[0]))
    assert listed_archs - {"general", "architecture"} == set(ARCHITECTURES)


def test_an_unsupported_model_type_is_refused_by_name(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gptj", "vocab_size": 10}))
    with pytest.raises(ValueError, match="model_type 'gptj' is not supported"):
        load_pretrained(tmp_path)


def test_an_unsupported_gguf_architecture_is_refused_by_name(tmp_path):
    from lmforge.io.gguf import load_gguf

    writer = gguf.GGUFWriter(tmp_path / "phi2.gguf", "phi2")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="general.architecture 'phi2' is not supported"):
        load_gguf(tmp_path / "phi2.gguf")


def test_models_lists_the_architectures_with_how_to_train_and_use_each(capsys):
    from lmforge.cli.models import architecture_rows
    from lmforge.io.hf import OTHER_ARCHITECTURES
    from lmforge.io.hf_seq2seq import LSTM_TYPE

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    rows = {row["name"]: row for row in architecture_rows()}
    assert list(rows) == ["decoder", "T5", "BERT", "LSTM"]
    assert set(OTHER_ARCHITECTURES) == {"t5", "bert", LSTM_TYPE}  # the model_types io/hf_seq2seq.load_family reads
    assert "architecture=lstm" in rows["LSTM"]["train"] and "fill-mask" in rows["BERT"]["use"]
    for row in rows.values():
        assert f"{row['name']}: {row['what']}\n  model_type: {row['model_type']}\n  train: {row['train']}" in out
    for verb in ("lmforge pretrain", "lmforge t5 ", "lmforge bert ", "lmforge t5-generate", "lmforge lstm-generate"):
        assert verb in out
