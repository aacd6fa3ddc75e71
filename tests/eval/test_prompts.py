"""Few-shot prompt construction: deterministic for a seed, nested across shot counts, lm-eval layout."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lmforge.eval.prompts import (
    chat_messages,
    draw_shots,
    encode_choices,
    encode_pair,
    plain_prompt,
    prompt_ids,
    select_shots,
)
from lmforge.eval.tasks import Doc, Task, arc_task, gsm8k_task, icl_probe_task


def test_draw_shots_is_deterministic_distinct_and_nested():
    first = draw_shots(1000, 16, seed=7, key="doc-1")
    assert first == draw_shots(1000, 16, seed=7, key="doc-1")
    assert len(set(first)) == 16 and all(0 <= i < 1000 for i in first)
    for k in (0, 1, 4, 15):
        assert draw_shots(1000, k, seed=7, key="doc-1") == first[:k]
    assert draw_shots(1000, 16, seed=8, key="doc-1") != first
    assert draw_shots(1000, 16, seed=7, key="doc-2") != first
    assert sorted(draw_shots(5, 5, seed=0, key="x")) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="only 5"):
        draw_shots(5, 6, seed=0, key="x")


def test_shot_draw_is_stable_across_processes():
    """String seeds go through SHA-512, so PYTHONHASHSEED cannot change the prompts."""
    code = "from lmforge.eval.prompts import draw_shots; print(draw_shots(7473, 8, 1234, 'test-17'))"
    outputs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={"PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert len(outputs) == 1
    assert outputs.pop().strip() == str(draw_shots(7473, 8, 1234, "test-17"))


def test_arc_few_shot_prompt_layout_and_determinism(shared_data):
    task = arc_task(shared_data)
    assert len(task.docs) == 570 and len(task.fewshot_pool) > 2000
    doc = task.docs[0]
    assert plain_prompt(task, doc, []) == f"Question: {doc.question}\nAnswer:"
    shots = select_shots(task, 0, 2, seed=1234)
    assert shots == select_shots(task, 0, 2, seed=1234)
    assert shots == select_shots(task.limited(3), 0, 2, seed=1234)  # --limit does not change prompts
    assert shots != select_shots(task, 0, 2, seed=99)
    expected = "\n\n".join(
        [f"Question: {s.question}\nAnswer: {s.choices[s.gold]}" for s in shots] + [f"Question: {doc.question}\nAnswer:"]
    )
    assert plain_prompt(task, doc, shots) == expected


def test_shots_never_include_the_document_itself():
    docs = tuple(Doc(id=f"d{i}", question=f"q{i}", choices=("a", "b"), gold=i % 2) for i in range(6))
    task = Task(name="t", kind="multiple_choice", docs=docs, fewshot_pool=docs)
    for index in range(6):
        assert docs[index] not in select_shots(task, index, 5, seed=0)
    with pytest.raises(ValueError, match="only 5"):
        select_shots(task, 0, 6, seed=0)
    empty = Task(name="t", kind="multiple_choice", docs=docs)
    with pytest.raises(ValueError, match="--shots 0"):
        select_shots(empty, 0, 1, seed=0)


def test_gsm8k_chain_of_thought_prompts(shared_data):
    task = gsm8k_task(shared_data)
    doc = task.docs[0]
    zero = plain_prompt(task, doc, [], cot=True)
    assert zero == f"Question: {doc.question}\nAnswer: Let's think step by step."
    shots = select_shots(task, 0, 2, seed=0)
    few = plain_prompt(task, doc, shots, cot=True)
    assert few.count("The answer is") == 2 and few.endswith(f"Question: {doc.question}\nAnswer:")
    direct = plain_prompt(task, doc, shots, cot=False)
    assert f"Answer: The answer is {shots[0].answer}." in direct
    messages = chat_messages(task, doc, shots, cot=True, system="Be brief.")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert messages[2]["content"].endswith(f"The answer is {shots[0].answer}.")
    assert "step by step" in messages[-1]["content"]


def test_encode_pair_follows_lm_eval(smollm):
    _, tokenizer = smollm
    context, continuation = encode_pair(tokenizer, "Question: Which is hot?\nAnswer:", " the sun")
    assert context == tokenizer.encode("Question: Which is hot?\nAnswer:")
    assert context + continuation == tokenizer.encode("Question: Which is hot?\nAnswer: the sun")
    # A trailing space moves to the continuation, where the tokenizer expects it.
    assert encode_pair(tokenizer, "Answer: ", "sun") == encode_pair(tokenizer, "Answer:", " sun")
    # An empty context is replaced by the start-of-text token.
    start, rest = encode_pair(tokenizer, "", "Hello")
    assert start == [tokenizer.bos_id] and rest == tokenizer.encode("Hello")


def test_chat_mode_prompts_use_the_template(smollm, shared_data):
    _, tokenizer = smollm
    task = icl_probe_task(n_items=4)
    doc, shots = task.docs[0], select_shots(task, 0, 1, seed=0)  # one per label: 2 shots
    pairs = encode_choices(tokenizer, task, doc, shots, chat=True)
    text = tokenizer.decode(pairs[0][0])
    assert text.endswith("<|im_start|>assistant\n") and text.count("<|im_start|>user") == 3
    assert [tokenizer.decode(c) for _, c in pairs] == list(doc.choices)
    plain = encode_choices(tokenizer, task, doc, shots, chat=False)
    assert tokenizer.decode(plain[0][0]).endswith(f"\n{doc.question}:")
    assert [tokenizer.decode(c) for _, c in plain] == [" " + c for c in doc.choices]
    gsm = gsm8k_task(shared_data)
    ids = prompt_ids(tokenizer, gsm, gsm.docs[0], [], chat=True, cot=True)
    assert tokenizer.decode(ids).endswith("<|im_start|>assistant\n")
