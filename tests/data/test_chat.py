"""Chat JSONL: validation with line numbers, loss masks on assistant tokens only, packing and batching."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.data.chat import (
    IGNORE_INDEX,
    ChatBatches,
    ChatExample,
    collate,
    pack_examples,
    read_chat_jsonl,
    write_chat_jsonl,
)
from lmforge.tokenizer.chat import render_conversation
from lmforge.tokenizer.tokenizer import Tokenizer

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name a prime."},
    {"role": "assistant", "content": "Seven."},
    {"role": "user", "content": "Another one, bigger than 10?"},
    {"role": "assistant", "content": "Thirteen, which is prime."},
    {"role": "user", "content": "Thanks!"},
    {"role": "assistant", "content": "You're welcome."},
]


@pytest.fixture(scope="module")
def tokenizer(smollm_gguf) -> Tokenizer:
    import gguf

    reader = gguf.GGUFReader(smollm_gguf)
    return Tokenizer.from_gguf_metadata({k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")})


def test_reads_conversations_and_skips_blank_lines(tmp_path):
    path = write_chat_jsonl([CONVERSATION, {"messages": CONVERSATION[1:3], "id": 7}], tmp_path / "chat.jsonl")
    path.write_text(path.read_text().replace("\n", "\n\n", 1))  # a blank line between the records
    examples = read_chat_jsonl(path)
    assert [e.line for e in examples] == [1, 3]
    assert list(examples[0].messages) == CONVERSATION
    assert examples[1].messages[1] == {"role": "assistant", "content": "Seven."}
    assert examples[1].where == f"{path}:3"
    assert len(read_chat_jsonl(path, limit=1)) == 1


@pytest.mark.parametrize("line, problem", [
    ('{"messages": [{"role": "user", "content": "hi"}, ', "not valid JSON"),
    ('["user", "hi"]', "expected a JSON object"),
    ('{"conversation": []}', "missing 'messages'"),
    ('{"messages": "hi"}', "'messages' must be a list"),
    ('{"messages": []}', "'messages' is empty"),
    ('{"messages": [{"role": "robot", "content": "beep"}]}', "role 'robot'"),
    ('{"messages": [{"role": "user", "content": ["a"]}, {"role": "assistant", "content": "b"}]}', r"messages\[0\] \(user\) has no string 'content'"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "no assistant message"),
    ('{"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}, {"role": "assistant", "content": "c"}]}',
     r"messages\[1\] is a system message"),
    ('{"messages": [7]}', r"messages\[0\] must be an object"),
])
def test_a_bad_line_is_named_by_number_and_problem(tmp_path, line, problem):
    good = json.dumps({"messages": CONVERSATION[1:3]})
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{good}\n{good}\n{line}\n{good}\n")
    with pytest.raises(ValueError, match=f"bad.jsonl:3: .*{problem}"):
        read_chat_jsonl(path)


def test_non_utf8_and_empty_files(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps({"messages": CONVERSATION[1:3]}).encode() + b"\n\xff\xfe\n")
    with pytest.raises(ValueError, match="latin1.jsonl:2: not UTF-8"):
        read_chat_jsonl(path)
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match="no conversations"):
        read_chat_jsonl(tmp_path / "empty.jsonl")
    with pytest.raises(FileNotFoundError):
        read_chat_jsonl(tmp_path / "missing.jsonl")


def _runs(mask: list[int]) -> list[tuple[int, int]]:
    runs, start = [], None
    for i, m in enumerate(mask + [0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            runs.append((start, i))
            start = None
    return runs


def test_loss_mask_covers_exactly_the_assistant_tokens_of_a_multi_turn_conversation(tokenizer):
    ids, mask = render_conversation(tokenizer, CONVERSATION)
    assert len(ids) == len(mask)
    end = tokenizer.token_to_id("<|im_end|>")
    runs = _runs(mask)
    answers = [m["content"] for m in CONVERSATION if m["role"] == "assistant"]
    # One masked run per assistant turn: exactly its content plus the token that closes the turn.
    assert [tokenizer.decode(ids[a:b]) for a, b in runs] == [a + "<|im_end|>" for a in answers]
    assert all(ids[b - 1] == end for _, b in runs)
    # Everything else (system, user, role headers, the newline after each turn) is unmasked.
    unmasked = tokenizer.decode([t for t, m in zip(ids, mask) if not m])
    for message in CONVERSATION:
        if message["role"] != "assistant":
            assert message["content"] in unmasked
    assert unmasked.count("<|im_start|>assistant\n") == 3
    for answer in answers:
        assert answer not in unmasked

    # Through packing and batching the targets are still exactly the assistant tokens.
    rows, cut = pack_examples([(ids, mask)], seq_len=len(ids))
    inputs, targets, segments = collate(rows, pad_id=0)
    assert cut == 0 and (segments == 1).all()
    kept = targets[0][targets[0] != IGNORE_INDEX].tolist()
    assert kept == [t for t, m in zip(ids[1:], mask[1:]) if m]
    assert tokenizer.decode(kept) == "".join(a + "<|im_end|>" for a in answers)
    assert inputs[0].tolist() == ids[:-1]


def test_packing_fills_rows_without_losing_or_splitting_conversations():
    examples = [(list(range(100 * k, 100 * k + n)), [0] * (n // 2) + [1] * (n - n // 2))
                for k, n in enumerate([5, 9, 3, 20, 8, 8, 2, 11, 6, 4])]
    rows, cut = pack_examples(examples, seq_len=16)
    assert cut == 1  # the 20-token one is cut to 17 = seq_len + 1
    assert all(len(r.ids) <= 17 and len(r.ids) == len(r.mask) == sum(r.lengths) for r in rows)
    assert len(rows) == 5  # 73 tokens in rows of 17: first-fit-decreasing needs only 5
    seen = sorted(tuple(r.ids[sum(r.lengths[:j]):sum(r.lengths[:j + 1])]) for r in rows for j in range(len(r.lengths)))
    assert seen == sorted(tuple(ids[:17]) for ids, _ in examples)
    original = {ids[0]: mask[:17] for ids, mask in examples}
    for row in rows:  # masks travel with their tokens
        for j, length in enumerate(row.lengths):
            start = sum(row.lengths[:j])
            assert list(row.mask[start:start + length]) == original[row.ids[start]]

    unpacked, _ = pack_examples(examples, seq_len=16, pack=False)
    assert len(unpacked) == 10 and all(len(r.lengths) == 1 for r in unpacked)
    dropped, _ = pack_examples([([1, 2, 3], [1, 0, 0])], seq_len=8)
    assert dropped == []  # nothing to learn: the first token is never a target


def test_collate_pads_on_the_right_and_batches_resume_exactly():
    rows, _ = pack_examples([([5, 6, 7, 8], [0, 0, 1, 1]), ([9, 10], [0, 1])], seq_len=8, pack=False)
    inputs, targets, segments = collate(rows, pad_id=2)
    assert inputs.tolist() == [[5, 6, 7], [9, 2, 2]]
    assert targets.tolist() == [[IGNORE_INDEX, 7, 8], [10, IGNORE_INDEX, IGNORE_INDEX]]
    assert segments.tolist() == [[1, 1, 1], [1, 0, 0]]  # 0 = padding

    packed, _ = pack_examples([([5, 6, 7, 8], [0, 0, 1, 1]), ([9, 10, 11], [0, 1, 1])], seq_len=8)
    inputs, targets, segments = collate(packed, pad_id=2)
    assert inputs.tolist() == [[5, 6, 7, 8, 9, 10]]
    assert segments.tolist() == [[1, 1, 1, 1, 2, 2]]  # the conversations of a row are told apart
    assert targets.tolist() == [[IGNORE_INDEX, 7, 8, IGNORE_INDEX, 10, 11]]

    many, _ = pack_examples([([i, i + 1, i + 2], [0, 1, 1]) for i in range(0, 300, 3)], seq_len=2, pack=False)
    first = ChatBatches(many, batch_size=7, pad_id=0, seed=3)
    for _ in range(20):  # crosses an epoch boundary (100 rows)
        next(first)
    state = first.state_dict()
    expected = [next(first) for _ in range(5)]
    second = ChatBatches(many, batch_size=7, pad_id=0, seed=3)
    second.load_state_dict(state)
    for (a, b, c), (x, y, z) in zip(expected, (next(second) for _ in range(5))):
        assert torch.equal(a, x) and torch.equal(b, y) and torch.equal(c, z)
    assert second.epoch == 1 and second.epoch_progress > 1


def test_examples_keep_their_origin_for_error_messages():
    example = ChatExample(tuple(CONVERSATION), "data.jsonl", 12)
    assert example.where == "data.jsonl:12"
