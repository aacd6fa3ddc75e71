"""EleutherAI lm-evaluation-harness adapter: let the harness evaluate lmforge models.

    from lmforge.eval.harness import LmforgeLM, run_harness
    lm = LmforgeLM(pretrained="smollm2-135m-instruct")          # or LmforgeLM(model=..., tokenizer=...)
    results = run_harness(lm, ["my_task"], include_path="path/with/task_yamls")

`lm_eval` is an optional (dev) dependency: it is imported only when this adapter is used, so the
lmforge runtime never needs it. Importing `LmforgeLM` from this module builds the class and
registers it with the harness as model type "lmforge" (so `simple_evaluate(model="lmforge",
model_args="pretrained=...")` works once this module has been imported).

The three request types map onto lmforge's batched scoring and engine:
  loglikelihood          -> infer.scoring.score_continuations (context/continuation split as HFLM does)
  loglikelihood_rolling  -> infer.scoring.score_rolling (disjoint windows, BOS/EOS prefix)
  generate_until         -> infer.engine.Engine.generate, grouped by generation settings
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["LmforgeLM", "lm_class", "run_harness"]

_CLASS: type | None = None


def lm_class() -> type:
    """The harness `LM` subclass for lmforge models (built and registered on first use)."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    try:
        from lm_eval.api.model import LM
        from lm_eval.api.registry import register_model
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("the lm-evaluation-harness adapter needs lm_eval: pip install lm_eval") from error

    from lmforge.core.device import parse_device, parse_dtype
    from lmforge.eval.prompts import encode_pair, prefix_token_id
    from lmforge.infer.engine import Engine
    from lmforge.infer.sampling import SamplingParams
    from lmforge.infer.scoring import score_continuations, score_rolling
    from lmforge.io.registry import DEFAULT_MODEL, load_model
    from lmforge.tokenizer.chat import ChatTemplate

    class LmforgeLM(LM):
        """An lmforge model (named, GGUF, HF folder or own checkpoint) as a harness LM."""

        def __init__(self, pretrained: str = DEFAULT_MODEL, *, model: Any = None, tokenizer: Any = None,
                     dtype: str = "float32", device: str = "auto", batch_size: int | str = 16,
                     max_batch_size: int | None = None, max_batch_tokens: int = 8192, max_length: int | None = None,
                     max_gen_toks: int = 256, **unused: Any) -> None:
            super().__init__()
            if (model is None) != (tokenizer is None):
                raise ValueError("pass both model and tokenizer, or neither (then `pretrained` is loaded)")
            if model is None:
                model, tokenizer = load_model(pretrained, dtype=parse_dtype(dtype), device=parse_device(device))
            self.model, self.tok, self.name = model.eval(), tokenizer, str(pretrained)
            try:
                self.batch_size = int(batch_size)
            except (TypeError, ValueError):  # "auto" and the like: a fixed, safe default
                self.batch_size = int(max_batch_size or 16)
            self.max_batch_tokens = int(max_batch_tokens)
            self._max_length = min(int(max_length or model.config.max_seq_len), model.config.max_seq_len)
            self.max_gen_toks = int(max_gen_toks)
            self._device = model.lm_head.weight.device

        # -- properties the harness reads --------------------------------------------------------
        @property
        def max_length(self) -> int:
            return self._max_length

        @property
        def tokenizer_name(self) -> str:
            return f"lmforge-{Path(self.name).name}"

        def chat_template(self, chat_template: bool | str = False) -> str | None:
            return self.tok.chat_template or ChatTemplate.default().source

        def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
            template = ChatTemplate.for_tokenizer(self.tok)
            extra = {}
            for key, token_id in (("bos_token", self.tok.bos_id), ("eos_token", self.tok.eos_id)):
                if token_id is not None:
                    extra[key] = self.tok.id_to_token(token_id)
            return template.render(chat_history, add_generation_prompt=add_generation_prompt, **extra)

        # -- the three request types -------------------------------------------------------------
        def loglikelihood(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
            pairs = [encode_pair(self.tok, context, continuation) for context, continuation in (r.args for r in requests)]
            scores = score_continuations(self.model, pairs, batch_size=self.batch_size,
                                         max_batch_tokens=self.max_batch_tokens, max_len=self.max_length)
            results = [(s.logprob, s.is_greedy) for s in scores]
            for request, result in zip(requests, results):
                self.cache_hook.add_partial("loglikelihood", request.args, result)
            return results

        def loglikelihood_rolling(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[float]:
            documents = [self.tok.encode(r.args[0]) for r in requests]
            scores = score_rolling(self.model, documents, prefix_id=prefix_token_id(self.tok), max_len=self.max_length,
                                   batch_size=self.batch_size, max_batch_tokens=self.max_batch_tokens)
            results = [s.logprob for s in scores]
            for request, result in zip(requests, results):
                self.cache_hook.add_partial("loglikelihood_rolling", request.args, result)
            return results

        def generate_until(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[str]:
            results: list[str | None] = [None] * len(requests)
            groups: dict[tuple, list[int]] = {}
            settings: dict[tuple, SamplingParams] = {}
            for index, request in enumerate(requests):
                params = self._sampling_params(request.args[1] if len(request.args) > 1 else {})
                key = (params.max_new_tokens, params.temperature, params.top_p, params.top_k, params.stop, params.seed)
                groups.setdefault(key, []).append(index)
                settings[key] = params
            engine = Engine(self.model, self.tok, max_batch_size=self.batch_size)
            for key, indices in groups.items():
                params = settings[key]
                budget = self.max_length - params.max_new_tokens
                if budget < 1:
                    raise ValueError(f"max_gen_toks={params.max_new_tokens} leaves no room for a prompt "
                                     f"in {self.max_length} tokens")
                prompts = []
                for index in indices:
                    ids = self.tok.encode(requests[index].args[0], add_bos=self.tok.add_bos_token)
                    prefix = prefix_token_id(self.tok)
                    # An empty prompt starts from BOS / end-of-text; without either the engine says so.
                    prompts.append(ids[-budget:] if ids else [prefix] if prefix is not None else [])
                for index, completion in zip(indices, engine.generate(prompts, params)):
                    results[index] = completion.text
                    self.cache_hook.add_partial("generate_until", requests[index].args, completion.text)
            return [r or "" for r in results]

        def _sampling_params(self, kwargs: dict[str, Any]) -> SamplingParams:
            kwargs = dict(kwargs or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = self.max_gen_toks
            for name in ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens"):
                if kwargs.get(name) is not None:
                    max_new = int(kwargs[name])
                    break
            temperature = float(kwargs.get("temperature", 0.0) or 0.0)
            if not kwargs.get("do_sample", temperature > 0):
                temperature = 0.0
            top_p = kwargs.get("top_p")
            top_k = kwargs.get("top_k")
            seed = kwargs.get("seed")
            return SamplingParams(
                max_new_tokens=max_new, temperature=temperature,
                top_p=float(top_p) if top_p is not None and temperature > 0 else None,
                top_k=int(top_k) if top_k is not None and temperature > 0 else None,
                stop=tuple(s for s in until if s)[:16], seed=int(seed) if seed is not None else None,
            )

    register_model("lmforge")(LmforgeLM)
    _CLASS = LmforgeLM
    return _CLASS


def run_harness(lm: Any, tasks: Sequence[str | dict], *, include_path: str | Path | None = None,
                include_defaults: bool | None = None, **kwargs: Any) -> dict[str, Any]:
    """`lm_eval.simple_evaluate` on an `LmforgeLM` (or the name "lmforge" with model_args).

    `include_path`: a folder of task YAML files; when given, the harness's thousands of built-in
    task definitions are not indexed unless `include_defaults=True` (they need the Hugging Face
    hub to download data anyway). Other keyword arguments go to `simple_evaluate` (limit,
    num_fewshot, apply_chat_template, log_samples ...).
    """
    lm_class()
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    defaults = include_defaults if include_defaults is not None else include_path is None
    manager = TaskManager(include_path=str(include_path) if include_path else None, include_defaults=defaults)
    kwargs.setdefault("log_samples", False)
    return simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "LmforgeLM":  # built lazily so that importing this module does not import lm_eval
        return lm_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
