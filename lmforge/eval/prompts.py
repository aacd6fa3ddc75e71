"""k-shot prompts: deterministic shot selection, plain-text and chat-template prompts, encoding.

Shot selection depends only on (seed, document id, k): the same command always builds the same
prompts, whatever --limit or the order of evaluation. Shot lists are nested (the 4 shots of an
item are the first 4 of its 16), so accuracy against shots compares like with like.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from lmforge.eval.tasks import Doc, Task
from lmforge.tokenizer.chat import render_conversation
from lmforge.tokenizer.tokenizer import Tokenizer

__all__ = [
    "chat_messages",
    "draw_shots",
    "encode_choices",
    "encode_pair",
    "plain_prompt",
    "prefix_token_id",
    "prompt_ids",
    "select_shots",
    "shot_target",
]


def draw_shots(pool_size: int, k: int, seed: int, key: str) -> list[int]:
    """k distinct indices into a pool, fixed by (seed, key); the draw for k is a prefix of the draw for k+1.

    A partial Fisher-Yates shuffle with a string-seeded `random.Random` (string seeds are hashed
    with SHA-512, so the result does not depend on PYTHONHASHSEED or the platform).
    """
    if k < 0:
        raise ValueError(f"the number of shots must be >= 0, got {k}")
    if k > pool_size:
        raise ValueError(f"{k} shots requested but the few-shot pool has only {pool_size} examples")
    rng = random.Random(f"lmforge-shots:{seed}:{key}")
    swapped: dict[int, int] = {}  # sparse view of the shuffled array
    chosen = []
    for i in range(k):
        j = rng.randrange(i, pool_size)
        chosen.append(swapped.get(j, j))
        swapped[j] = swapped.get(i, i)
    return chosen


def select_shots(task: Task, doc_index: int, k: int, seed: int) -> list[Doc]:
    """The k shots of `task.docs[doc_index]` (never the document itself)."""
    if k == 0:
        return []
    doc = task.docs[doc_index]
    pool = [d for d in task.pool_for(doc_index) if d.id != doc.id]
    if not pool:
        raise ValueError(f"task {task.name} has no few-shot examples (no train split was found); use --shots 0")
    key = doc.shot_key or doc.id
    if task.shots_per_class:
        return _shots_per_class(task, doc, pool, k, seed, key)
    return [pool[i] for i in draw_shots(len(pool), k, seed, key)]


def _shots_per_class(task: Task, doc: Doc, pool: Sequence[Doc], k: int, seed: int, key: str) -> list[Doc]:
    """k shots of every class (a shot's class is its target text), in k rounds of one shot per class.

    Classes are numbered from the document's own answer class, then in sorted order, and the draws
    and the class order of each round are fixed by (seed, key, class number, round). So two items
    that share a key and differ only in which label means what (the mirrored pairs of the ICL
    probe) see the same shots with the labels swapped. The round order is shuffled, so which
    class comes last (the one a model biased to recent labels repeats) is a coin flip.
    Nested like `draw_shots`: the shots for k are a prefix of those for k + 1.
    """
    classes: dict[str, list[Doc]] = {}
    for shot in pool:
        classes.setdefault(shot_target(task, shot, cot=False), []).append(shot)
    smallest = min(classes, key=lambda label: len(classes[label]))
    if k > len(classes[smallest]):
        raise ValueError(f"{k} shots per class requested but the few-shot pool has only {len(classes[smallest])} "
                         f"examples of class {smallest!r}")
    own = shot_target(task, doc, cot=False)
    labels = sorted(classes, key=lambda label: (label != own, label))
    draws = [[classes[label][i] for i in draw_shots(len(classes[label]), k, seed, f"{key}:class{number}")]
             for number, label in enumerate(labels)]
    chosen = []
    for round_index in range(k):
        order = list(range(len(labels)))
        random.Random(f"lmforge-shot-order:{seed}:{key}:{round_index}").shuffle(order)
        chosen += [draws[number][round_index] for number in order]
    return chosen


def shot_target(task: Task, doc: Doc, cot: bool) -> str:
    """What the answer to a shot looks like: the correct choice, or the (reasoned) answer."""
    if task.kind == "multiple_choice":
        return doc.choices[doc.gold]
    template = task.prompt.cot_answer_template if cot and doc.rationale else task.prompt.answer_template
    return template.format(rationale=doc.rationale, answer=doc.answer)


def plain_prompt(task: Task, doc: Doc, shots: Sequence[Doc], cot: bool = False) -> str:
    """lm-evaluation-harness layout: shots 'text + delimiter + target' joined by the separator, then the item."""
    fmt = task.prompt
    parts = [fmt.text.format(question=s.question) + fmt.target_delimiter + shot_target(task, s, cot) for s in shots]
    query = fmt.text.format(question=doc.question)
    if cot and not shots and task.kind == "generation":
        query += fmt.cot_trigger  # zero-shot chain of thought ("Let's think step by step.")
    return fmt.fewshot_separator.join(parts + [query])


def chat_messages(task: Task, doc: Doc, shots: Sequence[Doc], cot: bool = False,
                  system: str | None = None) -> list[dict[str, str]]:
    """Shots as user/assistant turns, then the item as the final user turn; `system` (default: the
    task's own, if any) as the system message."""
    fmt = task.prompt
    system = task.system if system is None else system
    instruction = ""
    if task.kind == "generation":
        instruction = fmt.chat_cot_instruction if cot else fmt.chat_direct_instruction
    messages = [{"role": "system", "content": system}] if system else []
    for shot in shots:
        messages.append({"role": "user", "content": fmt.chat_text.format(question=shot.question) + instruction})
        messages.append({"role": "assistant", "content": shot_target(task, shot, cot)})
    messages.append({"role": "user", "content": fmt.chat_text.format(question=doc.question) + instruction})
    return messages


def prefix_token_id(tokenizer: Tokenizer) -> int | None:
    """The token that stands for 'start of text' when a context is empty (BOS, else end-of-text)."""
    return tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of a context and its continuation, the way lm-evaluation-harness splits them.

    Trailing spaces of the context move to the continuation; context + continuation is encoded
    as one string and split after the context's tokens, so the continuation is tokenized as it
    would be in running text. An empty context becomes the prefix token; BOS is prepended when
    the tokenizer says the model expects it.
    """
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    bos = [tokenizer.bos_id] if tokenizer.add_bos_token and tokenizer.bos_id is not None else []
    if not context:
        prefix = prefix_token_id(tokenizer)
        if prefix is None:
            raise ValueError("an empty context needs a BOS or end-of-text token, and this tokenizer has neither")
        return [prefix], tokenizer.encode(continuation)
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return bos + context_ids, whole[len(context_ids):]


def prompt_ids(tokenizer: Tokenizer, task: Task, doc: Doc, shots: Sequence[Doc], *, chat: bool, cot: bool,
               system: str | None = None) -> list[int]:
    """The token ids of a generation prompt."""
    if chat:
        ids, _ = render_conversation(tokenizer, chat_messages(task, doc, shots, cot, system), add_generation_prompt=True)
        return ids
    return tokenizer.encode(plain_prompt(task, doc, shots, cot), add_bos=tokenizer.add_bos_token)


def encode_choices(tokenizer: Tokenizer, task: Task, doc: Doc, shots: Sequence[Doc], *, chat: bool,
                   system: str | None = None) -> list[tuple[list[int], list[int]]]:
    """(context ids, continuation ids) for every choice of a multiple-choice document.

    Plain mode: context "…Question: q\\nAnswer:" and continuation " choice", split as in
    `encode_pair`. Chat mode: the rendered conversation up to the assistant's turn, then the
    choice text.
    """
    if chat:
        context, _ = render_conversation(tokenizer, chat_messages(task, doc, shots, system=system),
                                         add_generation_prompt=True)
        return [(context, tokenizer.encode(choice)) for choice in doc.choices]
    text = plain_prompt(task, doc, shots)
    return [encode_pair(tokenizer, text, task.prompt.target_delimiter + choice) for choice in doc.choices]


def describe_prompt(messages_or_text: str | Sequence[Mapping[str, Any]]) -> str:
    """A prompt as readable text (for --show-prompt and samples in the results file)."""
    if isinstance(messages_or_text, str):
        return messages_or_text
    return "\n".join(f"[{m['role']}] {m['content']}" for m in messages_or_text)
