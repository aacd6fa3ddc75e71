"""Inference engine: prefill, incremental decode over a preallocated KV cache, sampling, stopping.

The engine holds up to `max_batch_size` sequences, one per KV-cache row. `admit` prefills new
sequences (checked by `prepare`) into free rows, several in one batched call, and picks their
first tokens (`add` does one); `step` advances every active sequence by one
token in a single batched forward call; finished sequences leave through `release`. Because
sequences may join and leave between steps, the same three calls serve plain `generate`, a
streaming iterator, and the HTTP server's continuous batching.
"""

from __future__ import annotations

import logging
import math
import types
from collections.abc import Callable, Iterator, Sequence as Seq
from dataclasses import dataclass, field
from typing import Protocol

import torch

from lmforge.infer.sampling import SamplingParams, apply_penalties, choose_token
from lmforge.infer.speculative import DraftModel, PromptLookup, SpeculationStats
from lmforge.model.transformer import KVCache, Transformer
from lmforge.tokenizer.tokenizer import StreamDecoder, Tokenizer

log = logging.getLogger("lmforge.infer")


class Constraint(Protocol):
    """Restricts which tokens may come next (structured output). Stateful, one per sequence."""

    def allowed(self) -> torch.Tensor | None:  # [V] bool, or None for "anything"
        ...

    def advance(self, token_id: int) -> None:
        ...

    def is_complete(self) -> bool:  # True once the output may end here
        ...


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # most likely alternatives at this position


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (end token or stop string) or "length"
    prompt_tokens: int
    logprobs: list[TokenLogprob] | None = None

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(eq=False)
class Sequence:
    """One request being generated. `pending_text` holds text that is safe to show."""

    prompt_ids: list[int]
    params: SamplingParams
    stop_ids: frozenset[int]
    decoder: StreamDecoder
    constraint: Constraint | None = None
    generator: torch.Generator | None = None
    row: int = -1
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0  # characters of `text` already handed out by `take_delta`
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] | None = None
    seen: torch.Tensor | None = None  # [V] bool, for the repetition penalty
    counts: torch.Tensor | None = None  # [V] generated-token counts, for presence/frequency penalties

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def length(self) -> int:
        """Tokens held in the KV cache for this sequence."""
        return len(self.prompt_ids) + max(len(self.token_ids) - 1, 0)

    def take_delta(self) -> str:
        """New text since the last call, holding back what could still become a stop string."""
        end = len(self.text)
        if not self.finished:
            end -= _stop_prefix_overlap(self.text, self.params.stop)
        delta = self.text[self.emitted:end] if end > self.emitted else ""
        self.emitted = max(self.emitted, end)
        return delta

    def completion(self) -> Completion:
        return Completion(self.text, list(self.token_ids), self.finish_reason or "length", len(self.prompt_ids), self.logprobs)


def _stop_prefix_overlap(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of a stop string."""
    best = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:k]):
                best = k
                break
    return best


class Engine:
    """Generation over one model. Not thread-safe: one thread drives it (the server's scheduler).

    `compile=True` runs the decode step under `torch.compile`: one graph per batch shape (a batch
    of one, or any larger batch) that reads a fixed-size window of the cache under a mask, so it
    never recompiles as sequences grow; the first step pays the compilation (`warm_up` pays it
    early). `speculative` (a `PromptLookup` or `DraftModel`) drafts tokens that one forward call
    verifies; the output is the same as without it (see `lmforge.infer.speculative`).
    """

    WINDOW = 128  # decode attends over the cache slots rounded up to a multiple of this

    def __init__(self, model: Transformer, tokenizer: Tokenizer, max_batch_size: int = 8,
                 max_seq_len: int | None = None, *, compile: bool | str = False,
                 speculative: PromptLookup | DraftModel | None = None) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if compile not in (False, True, "max"):
            raise ValueError(f"compile must be False, True or 'max', got {compile!r}")
        if isinstance(speculative, DraftModel):
            speculative.check_compatible(model)
        self.compile = bool(compile)
        self.frozen = compile == "max"
        self._compiled: Callable | None = None
        self.speculative = speculative
        self.speculation = SpeculationStats()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_seq_len = min(max_seq_len or model.config.max_seq_len, model.config.max_seq_len)
        self.active: list[Sequence] = []  # active[i] lives in cache row i
        self.cache: KVCache | None = None
        self.vocab_size = model.config.vocab_size

    # -- capacity ------------------------------------------------------------------------------
    def check_length(self, prompt_tokens: int, max_new_tokens: int) -> None:
        if prompt_tokens + max_new_tokens > self.max_seq_len:
            raise ValueError(
                f"prompt of {prompt_tokens} tokens plus max_new_tokens={max_new_tokens} exceeds the "
                f"context of {self.max_seq_len} tokens; shorten the prompt or lower max_new_tokens"
            )

    def _ensure_cache(self, needed_len: int) -> None:
        """Allocate lazily, grow by doubling (copying active rows) so short chats stay small."""
        if self.cache is not None and self.cache.max_len >= needed_len:
            return
        # One slot past a power of two: the attention window (a multiple of WINDOW) then never
        # spans the whole cache, a case the compiled step would need a graph of its own for.
        new_len = min(self.max_seq_len, max(256, 1 << math.ceil(math.log2(needed_len))) + 1)
        new_cache = self.model.new_cache(self.max_batch_size, new_len)
        if self.compile:  # the capacity is symbolic in the compiled step: growing needs no recompile
            for tensor in (*new_cache.keys, *new_cache.values):
                torch._dynamo.mark_dynamic(tensor, 2)
        if self.cache is not None:
            old_len = self.cache.max_len
            for new, old in zip((*new_cache.keys, *new_cache.values), (*self.cache.keys, *self.cache.values)):
                new[:, :, :old_len].copy_(old)
        self.cache = new_cache

    @property
    def free_rows(self) -> int:
        return self.max_batch_size - len(self.active)

    # -- the primitive operations: admit (prefill), step (decode), release ----------------------
    PREFILL_TOKENS = 8192  # rows x padded prompt length per batched prefill call

    def prepare(self, prompt: str | Seq[int], params: SamplingParams, constraint: Constraint | None = None) -> Sequence:
        """Check a request and build its Sequence; nothing changes in the engine (a bad request
        raises ValueError here, before any other request is touched)."""
        prompt_ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        if not prompt_ids:
            if self.tokenizer.bos_id is None:
                raise ValueError("the prompt is empty and the tokenizer has no beginning-of-sequence token")
            prompt_ids = [self.tokenizer.bos_id]
        bad = [t for t in prompt_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"prompt token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})")
        self.check_length(len(prompt_ids), params.max_new_tokens)
        stop_ids = params.stop_token_ids if params.stop_token_ids is not None else self.tokenizer.eos_ids
        seq = Sequence(prompt_ids, params, frozenset() if params.ignore_eos else frozenset(stop_ids),
                       StreamDecoder(self.tokenizer), constraint)
        device = self.model.lm_head.weight.device
        if params.seed is not None:
            seq.generator = torch.Generator(device=device).manual_seed(params.seed)
        if params.repetition_penalty != 1.0:
            seq.seen = torch.zeros(self.vocab_size, dtype=torch.bool, device=device)
            seq.seen[torch.tensor(prompt_ids, device=device)] = True
        if params.presence_penalty or params.frequency_penalty:
            seq.counts = torch.zeros(self.vocab_size, dtype=torch.int32, device=device)
        if params.logprobs is not None:
            seq.logprobs = []
        return seq

    @torch.inference_mode()
    def admit(self, seqs: Seq[Sequence]) -> list[Sequence]:
        """Prefill prepared sequences into free cache rows and choose their first tokens.

        Prompts are prefilled together, right-padded, in as few forward calls as PREFILL_TOKENS
        allows: one large matrix product per layer instead of one per prompt. Padding is harmless:
        causal attention keeps it from real tokens, and the cache slots it fills lie past the row's
        length, where each decode step writes before anything reads.
        """
        seqs = list(seqs)
        if len(seqs) > self.free_rows:
            raise RuntimeError(f"engine is full: {len(seqs)} sequences for {self.free_rows} free rows")
        if not seqs:
            return []
        self._ensure_cache(max(len(s.prompt_ids) + s.params.max_new_tokens for s in seqs))
        device = self.model.lm_head.weight.device
        group: list[Sequence] = []
        for seq in seqs + [None]:  # type: ignore[list-item]
            width = max((len(s.prompt_ids) for s in group), default=0)
            if seq is not None and (not group or (len(group) + 1) * max(width, len(seq.prompt_ids)) <= self.PREFILL_TOKENS):
                group.append(seq)
                continue
            first_row = len(self.active)
            ids = torch.zeros((len(group), width), dtype=torch.long, device=device)
            for index, member in enumerate(group):
                member.row = first_row + index
                ids[index, :len(member.prompt_ids)] = torch.tensor(member.prompt_ids, device=device)
                self.active.append(member)
            last = torch.tensor([len(m.prompt_ids) - 1 for m in group], device=device)
            try:
                logits = self.model(ids, cache=self.cache, starts=[0] * len(group), first_row=first_row,
                                    logits_at=last)  # [G, 1, V]
                for member, row_logits in zip(group, logits[:, 0]):
                    self._accept(member, row_logits)
            except BaseException:  # leave the engine as it was before this group (its rows are the last ones)
                del self.active[first_row:]
                for member in group:
                    member.row = -1
                raise
            group = [seq] if seq is not None else []
        return seqs

    def add(self, prompt: str | Seq[int], params: SamplingParams, constraint: Constraint | None = None) -> Sequence:
        """Prefill one new sequence into a free cache row and choose its first token."""
        if not self.free_rows:
            raise RuntimeError("engine is full; wait for a sequence to finish")
        return self.admit([self.prepare(prompt, params, constraint)])[0]

    @torch.inference_mode()
    def step(self) -> list[Sequence]:
        """Advance every unfinished active sequence by one token (one batched forward call)."""
        running = [s for s in self.active if not s.finished]
        if not running:
            return []
        if len(running) != len(self.active):
            raise RuntimeError("release finished sequences before stepping")
        drafts = [self._draft(seq) for seq in running] if self.speculative is not None else [[]] * len(running)
        width = 1 + max(len(d) for d in drafts)
        device = self.model.lm_head.weight.device
        # Each row feeds its newest (not yet cached) token and its drafts, right-padded to `width`;
        # padding lands in cache slots past the row's length, which are written before being read.
        ids = torch.tensor([[s.token_ids[-1], *d] + [0] * (width - 1 - len(d)) for s, d in zip(running, drafts)],
                           device=device)  # [B, width]
        positions = torch.tensor([[s.length + j for j in range(width)] for s in running], device=device)
        end = max(s.length for s in running) + width
        logits = self._decode(ids, positions, end)  # [B, width, V]
        # Rows that only need an argmax get it from one batched call (one call per row cost about
        # 0.1 ms each, 0.8 ms of a 45 ms step at batch 8 with this 49k vocabulary).
        plain = [s.params.greedy and s.seen is None and s.counts is None and s.constraint is None
                 and s.logprobs is None for s in running]
        argmax = logits.argmax(dim=-1).tolist() if any(plain) else None  # [B][width]
        for i, (seq, row_logits, draft) in enumerate(zip(running, logits, drafts)):
            accepted = 0
            for j in range(len(draft) + 1):  # keep drafts while each is the token chosen anyway
                token = self._accept(seq, row_logits[j], argmax[i][j] if plain[i] else None)
                matched = j < len(draft) and token == draft[j]
                accepted += matched
                if seq.finished or not matched:
                    break
            if draft:
                stats = self.speculation
                stats.verify_calls, stats.proposed = stats.verify_calls + 1, stats.proposed + len(draft)
                stats.accepted, stats.emitted = stats.accepted + accepted, stats.emitted + j + 1
        return running

    def _draft(self, seq: Sequence) -> list[int]:
        """Draft tokens for `seq`, never past its token budget (the cache is sized for it)."""
        limit = seq.params.max_new_tokens - len(seq.token_ids) - 1
        if limit <= 0:
            return []
        return self.speculative.propose(id(seq), seq.prompt_ids + seq.token_ids, limit)

    def _decode(self, ids: torch.Tensor, positions: torch.Tensor, end: int) -> torch.Tensor:
        """model.decode_step over the first `end` cache slots (rounded up to WINDOW)."""
        window = min(self.cache.max_len, -(-end // self.WINDOW) * self.WINDOW)
        slots = torch.arange(window, device=ids.device)
        if self.compile:
            if self._compiled is None:
                self._compiled = compile_decode_step(self.model, frozen=self.frozen)
            torch._dynamo.mark_dynamic(slots, 0)
            for dim, size in enumerate(ids.shape):
                if size > 1:  # sizes 0 and 1 are always specialised: a batch of one has its own graph
                    torch._dynamo.mark_dynamic(ids, dim)
                    torch._dynamo.mark_dynamic(positions, dim)
            try:
                # Without duck shaping, a window that happens to equal the cache size at compile
                # time stays a size of its own (else every later, smaller window would recompile).
                with torch.fx.experimental._config.patch(use_duck_shape=False):
                    return self._compiled(ids, positions, self.cache, slots)
            except Exception as error:  # no C++ compiler, an unsupported op...: eager gives the same result
                log.warning("compiled decode step failed (%s: %s); continuing without torch.compile",
                            type(error).__name__, str(error).splitlines()[0] if str(error) else "")
                self.compile = False
        return self.model.decode_step(ids, positions, self.cache, slots)

    def warm_up(self) -> None:
        """Compile the decode step now (batch of one, and a larger batch when the engine has room)
        instead of during the first request. Needs an idle engine; a no-op without `compile`.
        The larger batch is compiled at the engine's full batch size: kernels are chosen by timing
        them at the size the graph is first compiled for (a frozen quantized model's AMX kernels
        beat PyTorch's at 8 rows and lose at 2)."""
        if not self.compile or self.active:
            return
        self._ensure_cache(1)
        device = self.model.lm_head.weight.device
        with torch.inference_mode():
            for rows in sorted({1, self.max_batch_size}):
                for width in ((1, 2) if self.speculative is not None else (1,)):
                    ids = torch.zeros((rows, width), dtype=torch.long, device=device)
                    positions = torch.arange(width, device=device).expand(rows, width).contiguous()
                    self._decode(ids, positions, width)

    @torch.inference_mode()
    def release(self, seq: Sequence) -> None:
        """Free a sequence's cache row (finished or abandoned); the last row moves into its place."""
        if seq not in self.active:
            return
        row = self.active.index(seq)
        last = len(self.active) - 1
        if row != last:
            moved = self.active[last]
            self.cache.move_row(last, row)
            moved.row = row
            self.active[row] = moved
        self.active.pop()
        seq.row = -1
        if self.speculative is not None:
            self.speculative.forget(id(seq))
        if not seq.finished:
            seq.finish_reason = "abort"

    # -- token acceptance -----------------------------------------------------------------------
    def _accept(self, seq: Sequence, logits: torch.Tensor, chosen: int | None = None) -> int:
        """Pick the next token of `seq` from its logits [V] (or take `chosen`, the argmax already
        found for a plain greedy row), update text and stop state; return it."""
        params = seq.params
        if chosen is not None:
            return self._append(seq, chosen)
        logits = logits.float()
        logits = apply_penalties(logits, params, seq.seen, seq.counts)
        if seq.constraint is not None:
            allowed = seq.constraint.allowed()
            if allowed is not None:
                allowed = allowed.clone()
                if seq.constraint.is_complete():
                    for stop_id in seq.stop_ids:
                        allowed[stop_id] = True
                logits = logits.masked_fill(~allowed, -math.inf)
        token = choose_token(logits, params, seq.generator)
        if seq.logprobs is not None:
            log_probs = torch.log_softmax(logits, dim=-1)
            top = torch.topk(log_probs, params.logprobs) if params.logprobs else None
            alternatives = list(zip(top.indices.tolist(), top.values.tolist())) if top is not None else []
            seq.logprobs.append(TokenLogprob(token, float(log_probs[token]), alternatives))
        return self._append(seq, token)

    def _append(self, seq: Sequence, token: int) -> int:
        """Add the chosen `token` to `seq`: penalty state, stop tokens and strings, text, length."""
        params = seq.params
        seq.token_ids.append(token)
        if seq.seen is not None:
            seq.seen[token] = True
        if seq.counts is not None:
            seq.counts[token] += 1
        if token in seq.stop_ids:
            seq.token_ids.pop()  # the end token is not part of the answer
            if seq.logprobs:
                seq.logprobs.pop()
            seq.text += seq.decoder.flush()
            seq.finish_reason = "stop"
            return token
        if seq.constraint is not None:
            seq.constraint.advance(token)
        seq.text += seq.decoder.push(token)
        if params.stop:
            window = max(len(s) for s in params.stop) + 16
            search_from = max(0, seq.emitted - window)
            hits = [i for i in (seq.text.find(s, search_from) for s in params.stop) if i >= 0]
            if hits:
                seq.text = seq.text[: min(hits)]
                seq.finish_reason = "stop"
                return token
        if len(seq.token_ids) >= params.max_new_tokens:
            seq.text += seq.decoder.flush()
            seq.finish_reason = "length"
        return token

    # -- conveniences built on add/step/release ----------------------------------------------------
    def generate(self, prompts: Seq[str | Seq[int]], params: SamplingParams,
                 constraints: Seq[Constraint | None] | None = None,
                 on_finish: Callable[[int], None] | None = None) -> list[Completion]:
        """Complete every prompt; batches of up to max_batch_size run together.

        `on_finish(n)` is called as sequences finish (a progress bar's advance).
        """
        if self.active:
            raise RuntimeError("generate() needs an idle engine")
        for prompt in prompts:  # fail before any work when a prompt is too long
            n = len(self.tokenizer.encode(prompt)) if isinstance(prompt, str) else len(prompt)
            self.check_length(max(n, 1), params.max_new_tokens)
        results: list[Completion | None] = [None] * len(prompts)
        queue = list(enumerate(prompts))
        owner: dict[int, int] = {}
        try:
            while queue or self.active:
                joining = []
                while queue and len(joining) < self.free_rows:
                    index, prompt = queue.pop(0)
                    joining.append(self.prepare(prompt, params, constraints[index] if constraints else None))
                    owner[id(joining[-1])] = index
                self.admit(joining)
                for seq in [s for s in self.active if s.finished]:
                    results[owner[id(seq)]] = seq.completion()
                    self.release(seq)
                    if on_finish is not None:
                        on_finish(1)
                if self.active:
                    self.step()
        finally:
            for seq in list(self.active):
                self.release(seq)
        return [r for r in results if r is not None]

    def stream(self, prompt: str | Seq[int], params: SamplingParams,
               constraint: Constraint | None = None) -> Iterator[str]:
        """Yield text deltas as tokens arrive; never splits a UTF-8 character or leaks a stop string."""
        if self.active:
            raise RuntimeError("stream() needs an idle engine")
        seq = self.add(prompt, params, constraint)
        try:
            while True:
                delta = seq.take_delta()
                if delta:
                    yield delta
                if seq.finished:
                    break
                self.step()
        finally:
            self.release(seq)
        self.last_completion = seq.completion()

    # -- chat -------------------------------------------------------------------------------------
    def chat_prompt(self, messages: list[dict]) -> list[int]:
        from lmforge.tokenizer.chat import render_conversation

        ids, _ = render_conversation(self.tokenizer, messages, add_generation_prompt=True)
        return ids

    def chat(self, messages: list[dict], params: SamplingParams) -> Completion:
        return self.generate([self.chat_prompt(messages)], params)[0]

    def stream_chat(self, messages: list[dict], params: SamplingParams) -> Iterator[str]:
        return self.stream(self.chat_prompt(messages), params)


def compile_decode_step(model: Transformer, frozen: bool = False) -> Callable:
    """`model.decode_step` under torch.compile, with the per-call overhead cut (measured on the
    embedded model, batch 1, 2 threads: about 3 ms of a 15 ms step went to checks, not work).

    Dynamo re-checks everything a graph read before each call: for a 30-layer model about 7,000
    guards on its modules and parameters (1.5-1.8 ms a step). They are skipped here, which is safe
    only because nothing else can reach these graphs: Dynamo keeps graphs per code object, so the
    step runs through a code object of its own, bound to this one model (whose modules must not be
    swapped afterwards). Inductor's checks of each input's size and stride are left out too (one per
    parameter per call). Its C++ wrapper (`cpp_wrapper`) was measured and left off: 3-7% faster
    steps for 40% more compile time (366 s against 258 s cold).

    `frozen` (Engine(compile="max")) freezes a quantized model's weights into the graphs
    (inductor's `freezing`), which lets inductor generate its own int4 matrix kernels (AVX-512 for
    one row, AMX tiles for a batch) and keep them where they time faster than PyTorch's
    (`max_autotune`). Measured on the embedded model, 2 threads, interleaved in one process:
    batch-8 step 43.3 -> 31.5 ms, batch-1 step 14.7 -> 13.2 ms; the price: resident memory after
    compiling 1,078 MB instead of 722, a start from the disk cache 122 s instead of 46 (cold: about
    135 s more). The AMX kernel rounds dequantized weights to bfloat16, so batched rows may pick
    another token where two are nearly tied. The graphs keep the weights they were compiled with:
    after changing the weights, build a new Engine. Float models compile as with `frozen=False`.
    """
    import torch._inductor.config as inductor_config

    from lmforge.model.quant import is_quantized

    step = type(model).decode_step
    private = types.FunctionType(step.__code__.replace(), step.__globals__, step.__name__, step.__defaults__,
                                 step.__closure__)
    compiled = torch.compile(types.MethodType(private, model), fullgraph=True, options={
        "guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe,
        "size_asserts": False,
    })
    if not (frozen and is_quantized(model)):
        return compiled

    def frozen_step(*args):
        # Freezing is read before torch.compile's `options` apply, so the settings go around each call
        # (a compilation happens inside the first call of each graph).
        with inductor_config.patch(FROZEN_COMPILE):
            return compiled(*args)

    return frozen_step


FROZEN_COMPILE = {"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}


def generate(model: Transformer, tokenizer: Tokenizer, prompts: list[str], *, max_new_tokens: int,
             temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
             seed: int | None = None) -> list[str]:
    """One-call text completion (used for sample generations during training)."""
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    engine = Engine(model, tokenizer, max_batch_size=max(1, min(len(prompts), 16)))
    return [c.text for c in engine.generate(prompts, params)]


def suggested_threads(model: torch.nn.Module) -> int:
    """CPU threads for decoding `model`: about one per 32 MB of weights read per token, at most
    PyTorch's default (the physical cores). Splitting a small model's matrices over many threads
    costs more in synchronisation than it gains; large models use every core."""
    from lmforge.model.quant import weight_bytes

    return max(1, min(torch.get_num_threads(), weight_bytes(model) // (32 * 2**20)))
