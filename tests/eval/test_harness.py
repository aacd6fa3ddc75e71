"""lm-evaluation-harness drives an lmforge model on small local tasks, fully offline.

The multiple-choice task copies lm-eval's own ARC-Easy definition (prompt, choices, metrics) onto
the local jsonl file, so the harness's numbers must equal `lmforge eval`'s, item by item.
"""

from __future__ import annotations

import json
import math

import pytest

from lmforge.eval.prompts import prefix_token_id
from lmforge.eval.runner import EvalConfig, evaluate
from lmforge.eval.tasks import arc_task
from lmforge.infer.engine import generate
from lmforge.infer.scoring import score_rolling

N_ARC = 8

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Rain in Spain stays mainly in the plain, they say."]
QA_QUESTION = "What is the capital city of France? Answer with one word."  # SmolLM2 answers " Paris" greedily


@pytest.fixture()
def offline(monkeypatch, tmp_path):
    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True, raising=False)


def _task_folder(tmp_path, shared_data):
    folder = tmp_path / "tasks"
    folder.mkdir()
    arc = shared_data / "arc" / "ARC-Easy-validation.jsonl"
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"question": QA_QUESTION, "answer": "Paris"}) + "\n")
    cache = tmp_path / "hf-datasets"
    (folder / "local_arc.yaml").write_text(f"""
task: local_arc_easy
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {arc}
  cache_dir: {cache}
output_type: multiple_choice
validation_split: validation
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{choices.label.index(answerKey)}}}}"
doc_to_choice: "{{{{choices.text}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
""")
    (folder / "local_ppl.yaml").write_text(f"""
task: local_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {texts}
  cache_dir: {cache}
output_type: loglikelihood_rolling
test_split: test
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: bits_per_byte
""")
    (folder / "local_qa.yaml").write_text(f"""
task: local_qa
dataset_path: json
dataset_kwargs:
  data_files:
    test: {qa}
  cache_dir: {cache}
output_type: generate_until
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: " {{{{answer}}}}"
generation_kwargs:
  until: ["\\n", "."]
  max_gen_toks: 12
  do_sample: false
metric_list:
  - metric: exact_match
    ignore_case: true
    ignore_punctuation: true
""")
    return folder


def test_lm_eval_harness_runs_lmforge_models_offline(offline, tmp_path, smollm, shared_data):
    from lmforge.eval.harness import LmforgeLM, run_harness

    model, tokenizer = smollm
    lm = LmforgeLM(model=model, tokenizer=tokenizer, batch_size=8)
    folder = _task_folder(tmp_path, shared_data)
    output = run_harness(lm, ["local_arc_easy", "local_ppl", "local_qa"], include_path=folder,
                         limit=N_ARC, log_samples=True, bootstrap_iters=0)
    results = output["results"]

    # Multiple choice: same accuracy and the same log-likelihood for every choice as lmforge eval.
    ours = evaluate(model, tokenizer, arc_task(shared_data).limited(N_ARC), EvalConfig())["runs"][0]
    assert results["local_arc_easy"]["acc,none"] == pytest.approx(ours["metrics"]["acc"])
    assert results["local_arc_easy"]["acc_norm,none"] == pytest.approx(ours["metrics"]["acc_norm"])
    samples = sorted(output["samples"]["local_arc_easy"], key=lambda s: s["doc_id"])
    for sample, mine in zip(samples, ours["samples"]):
        theirs = [resp[0][0] for resp in sample["resps"]]
        assert theirs == pytest.approx(mine["logprobs"], abs=2e-3)

    # Rolling log-likelihood: bits per byte from the same windows as lmforge's perplexity.
    scores = score_rolling(model, [tokenizer.encode(t) for t in TEXTS], prefix_id=prefix_token_id(tokenizer))
    n_bytes = sum(len(t.encode()) for t in TEXTS)
    expected_bpb = -sum(s.logprob for s in scores) / (n_bytes * math.log(2))
    assert results["local_ppl"]["bits_per_byte,none"] == pytest.approx(expected_bpb, rel=1e-4)

    # Generation: greedy text through the engine, stopped at the task's stop strings.
    [qa] = output["samples"]["local_qa"]
    answer = qa["resps"][0][0]
    direct = generate(model, tokenizer, [f"Question: {QA_QUESTION}\nAnswer:"], max_new_tokens=12)[0]
    assert answer == direct.split("\n")[0].split(".")[0] == " Paris"
    assert results["local_qa"]["exact_match,none"] == 1.0


def test_adapter_registers_with_the_harness_and_maps_gen_kwargs(smollm):
    from lm_eval.api.registry import get_model

    from lmforge.eval.harness import lm_class

    cls = lm_class()
    assert get_model("lmforge") is cls
    model, tokenizer = smollm
    lm = cls(model=model, tokenizer=tokenizer, batch_size="auto", max_length=512)
    assert lm.max_length == 512 and lm.batch_size == 16
    params = lm._sampling_params({"until": "\n\n", "max_gen_toks": 7, "temperature": 0.7, "do_sample": True, "top_p": 0.9})
    assert params.stop == ("\n\n",) and params.max_new_tokens == 7 and params.temperature == 0.7 and params.top_p == 0.9
    greedy = lm._sampling_params({"temperature": 0.7, "do_sample": False})
    assert greedy.temperature == 0.0 and greedy.max_new_tokens == 256
    text = lm.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert text.endswith("<|im_start|>assistant\n") and "<|im_start|>user\nHi<|im_end|>" in text
    with pytest.raises(ValueError, match="both model and tokenizer"):
        cls(model=model)


def test_arc_scores_equal_lm_evals_own_hf_backend(offline, tmp_path, smollm, hf_smollm, hf_smollm_tokenizer, shared_data):
    """The independent reference: lm-eval's HFLM on the `transformers` model loaded from the same
    GGUF, running lm-eval's prompt and tokenization code, gives the log-likelihood of every choice
    that `lmforge eval` computes with its own prompts, tokenization and model."""
    from lm_eval.models.huggingface import HFLM

    from lmforge.eval.harness import run_harness

    reference = HFLM(pretrained=hf_smollm, tokenizer=hf_smollm_tokenizer, batch_size=8)
    output = run_harness(reference, ["local_arc_easy"], include_path=_task_folder(tmp_path, shared_data),
                         limit=N_ARC, log_samples=True, bootstrap_iters=0)
    model, tokenizer = smollm
    ours = evaluate(model, tokenizer, arc_task(shared_data).limited(N_ARC), EvalConfig())["runs"][0]
    samples = sorted(output["samples"]["local_arc_easy"], key=lambda s: s["doc_id"])
    assert len(samples) == N_ARC
    for sample, mine in zip(samples, ours["samples"]):
        theirs = [resp[0][0] for resp in sample["resps"]]
        assert theirs == pytest.approx(mine["logprobs"], abs=2e-3)
    assert output["results"]["local_arc_easy"]["acc,none"] == pytest.approx(ours["metrics"]["acc"])
