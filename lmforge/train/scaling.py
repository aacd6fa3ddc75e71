"""Scaling-law sweeps: a grid of model sizes and budgets, each run a normal pretraining run.

    prepared data + SweepConfig  ->  OUT/d{depth}/{budget}/ (one pretraining run each) + OUT/runs.json

Sizes come from one family rule: depth d -> width = aspect * d, heads = width / head_dim, MLP width
= ffn_ratio * width rounded to ffn_multiple (with aspect = head_dim = 64 this is nanochat's rule:
width 64 d, d heads). Budgets are training FLOPs (an IsoFLOP grid: every size gets the same
compute, so each budget is one IsoFLOP profile) or training tokens. Learning rates, batch size and
warmup follow power laws of the width relative to a reference width, plus explicit per-depth
overrides, as the config says.

Every run uses a warmup-stable-decay schedule. With `cooldown.branches` (the default) the budgets
of one size share a trunk: OUT/d{depth}/trunk trains at constant learning rate and stops at the
step where each budget's cooldown starts; the budget's run folder starts from a copy of that
checkpoint and trains on with its own schedule (WSD with the decay over its last `fraction`). The
learning rate, data order and optimizer state at every step are those of the same run trained
from scratch, so a branch *is* that run (`pretrain --resume` of its folder continues it like any
other run), and one trunk gives a data point per budget.

Each finished run leaves `result.json` in its folder and a line in OUT/runs.json; a finished run
is never trained again, an interrupted one resumes from its last checkpoint. Everything that can be
checked (family rule, budgets, step counts, number of runs) is checked before any training starts.

FLOPs are counted two ways: 6 N D with N the non-embedding parameters (Kaplan et al.), and exactly:
the multiply-adds (2 FLOPs each) of every matrix product in the forward pass, the attention
scores and value mixing over the full seq_len x seq_len square as the fused kernel computes them,
and the output head; the backward pass costs twice the forward. Norms, activations, rotary
embeddings, softmax and the optimizer are not counted (well under 1% at these sizes).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lmforge.core.config import ModelConfig
from lmforge.core.files import write_folder_atomically, write_text_atomically
from lmforge.data.shards import TokenData
from lmforge.io.checkpoint import checkpoint_name, latest_checkpoint, list_checkpoints
from lmforge.train.config import PretrainConfig, RecipeConfig, ScheduleConfig

__all__ = ["Budgets", "Cooldown", "FamilyRule", "Holdout", "RunPlan", "SizeRules", "SweepConfig", "SweepReport",
           "family_table", "flops_per_token", "load_runs", "parameter_counts", "plan_holdout", "plan_sweep",
           "run_planned", "run_sweep"]

FIT_PARAMETERS = 5  # E, A, B, alpha, beta
RUNS_FILE = "runs.json"
RESULT_FILE = "result.json"
RESERVED_BASE_KEYS = ("data", "out_dir", "model", "max_steps", "max_tokens", "time_budget_s")


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FamilyRule:
    """One model family: depth d -> width aspect*d, width/head_dim heads, MLP ffn_ratio*width."""

    family: Literal["llama", "gpt2"] = "llama"
    aspect: int = 64  # width per layer
    head_dim: int = 64
    ffn_ratio: float = 8 / 3  # SwiGLU's 8/3 keeps the MLP at 8 width^2 parameters (gpt2: use 4)
    ffn_multiple: int = 64  # MLP width rounded to the nearest multiple of this
    tie_embeddings: bool = False
    qk_norm: bool = True

    def model(self, depth: int, vocab_size: int, seq_len: int) -> ModelConfig:
        """The model of this depth, or a ValueError saying why the rule cannot build it."""
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be a positive integer, got {depth!r}")
        width = self.aspect * depth
        if width % self.head_dim:
            raise ValueError(f"depth {depth}: width {self.aspect}*{depth} = {width} is not a multiple of "
                             f"head_dim {self.head_dim}, so the family rule cannot build it")
        ffn = max(self.ffn_multiple, round(self.ffn_ratio * width / self.ffn_multiple) * self.ffn_multiple)
        try:
            return ModelConfig(family=self.family, vocab_size=vocab_size, dim=width, n_layers=depth,
                               n_heads=width // self.head_dim, ffn_dim=ffn, max_seq_len=seq_len,
                               tie_embeddings=self.tie_embeddings, qk_norm=self.qk_norm and self.family == "llama")
        except ValueError as error:
            raise ValueError(f"depth {depth}: the family rule builds an invalid model ({error})") from None

    def __post_init__(self) -> None:
        for name in ("aspect", "head_dim", "ffn_multiple"):
            if getattr(self, name) <= 0:
                raise ValueError(f"family.{name} must be positive, got {getattr(self, name)}")
        if self.ffn_ratio <= 0:
            raise ValueError(f"family.ffn_ratio must be positive, got {self.ffn_ratio}")


@dataclass(frozen=True)
class SizeRules:
    """How the recipe follows the width w (w0 = reference_width): every learning rate is multiplied
    by (w/w0)^lr_exponent, batch_size by (w/w0)^batch_exponent and warmup_steps by
    (w/w0)^warmup_exponent (both rounded, at least 1 and 0). `per_depth` then overrides any recipe
    key for one depth, as a nested mapping: {4: {optim: {muon_lr: 0.02}}}."""

    reference_width: int = 128
    lr_exponent: float = 0.0
    batch_exponent: float = 0.0
    warmup_exponent: float = 0.0
    per_depth: dict[int, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.reference_width <= 0:
            raise ValueError(f"rules.reference_width must be positive, got {self.reference_width}")
        if not isinstance(self.per_depth, dict):
            raise ValueError("rules.per_depth: expected a mapping of depth -> recipe keys")
        for depth, keys in self.per_depth.items():
            if isinstance(depth, bool) or not isinstance(depth, int) or not isinstance(keys, dict):
                raise ValueError(f"rules.per_depth: expected depth (an integer) -> mapping, got {depth!r}: {keys!r}")


@dataclass(frozen=True)
class Budgets:
    """Exactly one list: training FLOPs per run (exact count; an IsoFLOP grid) or tokens per run."""

    flops: tuple[float, ...] = ()
    tokens: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if bool(self.flops) == bool(self.tokens):
            raise ValueError("budgets: give exactly one of flops or tokens (a non-empty list)")
        values = self.flops or self.tokens
        if any(v <= 0 for v in values):
            raise ValueError(f"budgets: every budget must be positive, got {list(values)}")
        if len(set(values)) != len(values):
            raise ValueError(f"budgets: repeated values in {list(values)}")

    @property
    def kind(self) -> str:
        return "flops" if self.flops else "tokens"

    @property
    def values(self) -> tuple[float, ...]:
        return tuple(sorted(self.flops or self.tokens))


@dataclass(frozen=True)
class Cooldown:
    """Warmup-stable-decay: the last `fraction` of each run decays linearly to min_lr_frac.
    branches: budgets of one size share a constant-rate trunk and cool down from its saved states."""

    branches: bool = True
    fraction: float = 0.2
    min_lr_frac: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ValueError(f"cooldown.fraction must be in (0, 1], got {self.fraction}")
        if not 0 <= self.min_lr_frac <= 1:
            raise ValueError(f"cooldown.min_lr_frac must be in [0, 1], got {self.min_lr_frac}")


@dataclass(frozen=True)
class Holdout:
    """A run kept out of the fit, for `lmforge scale predict`: a depth and one budget."""

    depth: int | None = None
    flops: float | None = None
    tokens: int | None = None


@dataclass(frozen=True)
class SweepConfig(RecipeConfig):
    data: str  # a folder written by `lmforge prepare`
    depths: tuple[int, ...]
    budgets: Budgets
    out_dir: str = "runs/scale"
    base: dict[str, Any] = field(default_factory=dict)  # pretraining recipe keys shared by every run
    family: FamilyRule = field(default_factory=FamilyRule)
    rules: SizeRules = field(default_factory=SizeRules)
    cooldown: Cooldown = field(default_factory=Cooldown)
    holdout: Holdout = field(default_factory=Holdout)

    def __post_init__(self) -> None:
        if not isinstance(self.base, dict):
            raise ValueError("base: expected a mapping of pretraining recipe keys")
        reserved = [key for key in RESERVED_BASE_KEYS if key in self.base]
        if reserved:
            raise ValueError(f"base: {', '.join(reserved)} are set by the sweep (data, out_dir, family, depths, budgets), "
                             f"not by the base recipe")
        if not self.depths:
            raise ValueError("depths: give at least one depth")
        if len(set(self.depths)) != len(self.depths):
            raise ValueError(f"depths: repeated values in {list(self.depths)}")


# --------------------------------------------------------------------------------------------
# counting
# --------------------------------------------------------------------------------------------
def parameter_counts(model: ModelConfig) -> tuple[int, int]:
    """(all parameters, parameters outside the token/position embeddings and the output head)."""
    return model.num_parameters(include_embeddings=True), model.num_parameters(include_embeddings=False)


def flops_per_token(model: ModelConfig, seq_len: int) -> int:
    """Training FLOPs per token (forward + backward = 3 x forward), counted exactly (module docstring)."""
    d, q, kv, h, L = model.dim, model.n_heads * model.head_size, model.kv_heads * model.head_size, model.hidden_dim, model.n_layers
    projections = d * (q + 2 * kv) + q * d  # q, k, v in; o out
    mlp = (3 if model.family == "llama" else 2) * d * h  # SwiGLU: gate, up, down; GPT-2: fc, proj
    attention = 2 * seq_len * q  # scores q.k over seq_len keys, then the weighted sum of values
    forward = 2 * (L * (projections + mlp + attention) + d * model.vocab_size)
    return 3 * forward


def family_table(rule: FamilyRule, vocab_size: int, seq_len: int, max_depth: int = 128) -> list[dict[str, int]]:
    """Every depth the rule can build up to max_depth: its width, parameters and FLOPs per token
    (what `lmforge scale fit` needs to turn a FLOP budget into a buildable compute-optimal model)."""
    rows = []
    for depth in range(1, max_depth + 1):
        try:
            model = rule.model(depth, vocab_size, seq_len)
        except ValueError:
            continue
        total, non_embedding = parameter_counts(model)
        rows.append({"depth": depth, "width": model.dim, "params": total, "params_non_embedding": non_embedding,
                     "flops_per_token": flops_per_token(model, seq_len)})
    return rows


# --------------------------------------------------------------------------------------------
# planning: every run's config, checked before anything trains
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunPlan:
    name: str  # folder under the sweep's out_dir, e.g. "d3/c1e+13"
    depth: int
    budget: float  # the budget asked for (FLOPs or tokens)
    budget_kind: str
    config: PretrainConfig  # the run, from scratch, with its WSD schedule
    model: ModelConfig
    steps: int
    step_tokens: int
    cooldown_start: int  # first step of the decay; the trunk is saved here
    flops_per_token: int

    @property
    def tokens(self) -> int:
        return self.steps * self.step_tokens

    def record(self) -> dict[str, Any]:
        """What the sweep knows about this run before training it."""
        total, non_embedding = parameter_counts(self.model)
        return {"name": self.name, "depth": self.depth, "width": self.model.dim, "n_heads": self.model.n_heads,
                "ffn_dim": self.model.hidden_dim, "params": total, "params_non_embedding": non_embedding,
                "budget_kind": self.budget_kind, "budget": self.budget, "steps": self.steps,
                "step_tokens": self.step_tokens, "tokens": self.tokens, "seq_len": self.config.seq_len,
                "flops_per_token": self.flops_per_token, "flops": self.flops_per_token * self.tokens,
                "flops_6nd": 6 * non_embedding * self.tokens, "flops_6nd_total": 6 * total * self.tokens,
                "lr": self.config.optim.lr, "muon_lr": self.config.optim.muon_lr, "batch_size": self.config.batch_size,
                "warmup_steps": self.config.schedule.warmup_steps, "cooldown_start": self.cooldown_start}


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _budget_label(kind: str, value: float) -> str:
    return f"{'c' if kind == 'flops' else 't'}{value:.3g}".replace("+", "")


def _base_recipe(config: SweepConfig) -> PretrainConfig:
    try:
        return PretrainConfig.from_dict({**copy.deepcopy(config.base), "data": config.data, "max_steps": 1})
    except ValueError as error:
        raise ValueError(f"base: {error}") from None


def _size(config: SweepConfig, depth: int, vocab_size: int) -> tuple[ModelConfig, PretrainConfig]:
    """The model of this depth and its recipe (no run length yet)."""
    model = config.family.model(depth, vocab_size, _base_recipe(config).seq_len)
    recipe = _depth_recipe(config, model)
    return model.replace(max_seq_len=recipe.seq_len), recipe


def _depth_recipe(config: SweepConfig, model: ModelConfig) -> PretrainConfig:
    """The base recipe with this size's learning rates, batch and warmup (no run length yet)."""
    where = f"depth {model.n_layers}"
    recipe = _base_recipe(config)
    scale = model.dim / config.rules.reference_width
    lr = scale ** config.rules.lr_exponent
    optim = dataclasses.replace(recipe.optim, lr=recipe.optim.lr * lr, muon_lr=recipe.optim.muon_lr * lr,
                                 embed_lr=None if recipe.optim.embed_lr is None else recipe.optim.embed_lr * lr,
                                 head_lr=None if recipe.optim.head_lr is None else recipe.optim.head_lr * lr)
    batch = max(1, round(recipe.batch_size * scale ** config.rules.batch_exponent))
    warmup = max(0, round(recipe.schedule.warmup_steps * scale ** config.rules.warmup_exponent))
    recipe = recipe.replace(optim=optim, batch_size=batch, schedule=dataclasses.replace(recipe.schedule, warmup_steps=warmup))
    override = config.rules.per_depth.get(model.n_layers)
    if override:
        reserved = [key for key in RESERVED_BASE_KEYS if key in override and key != "model"]
        if reserved or "model" in override:
            raise ValueError(f"rules.per_depth.{model.n_layers}: {', '.join(reserved + ['model'] * ('model' in override))} "
                             f"cannot be overridden per depth")
        try:
            recipe = PretrainConfig.from_dict(_merge(recipe.to_dict(), override))
        except ValueError as error:
            raise ValueError(f"rules.per_depth.{model.n_layers}: {error}") from None
    if recipe.time_budget_s is not None or recipe.max_tokens is not None:
        raise ValueError(f"{where}: a sweep run's length is its budget; remove max_tokens/time_budget_s")
    return recipe


def _plan_run(config: SweepConfig, recipe: PretrainConfig, model: ModelConfig, kind: str, budget: float,
              name: str) -> RunPlan:
    step_tokens = recipe.batch_size * recipe.seq_len * recipe.grad_accum
    per_token = flops_per_token(model, recipe.seq_len)
    tokens = budget / per_token if kind == "flops" else budget
    what = f"{name}: the budget of {budget:.3g} {kind}"
    if tokens < step_tokens:
        raise ValueError(f"{what} is {tokens:,.0f} tokens, below one optimizer step of {step_tokens:,} tokens "
                         f"(batch_size x seq_len x grad_accum)")
    steps = max(1, round(tokens / step_tokens))
    decay = max(1, round(config.cooldown.fraction * steps))
    start = steps - decay
    warmup = recipe.schedule.warmup_steps
    if start < warmup:
        raise ValueError(f"{what} gives {steps} steps: too few for {warmup} warmup steps and a cooldown of "
                         f"{decay} (lower warmup_steps or batch_size, or raise the budget)")
    schedule = ScheduleConfig(name="wsd", warmup_steps=warmup, decay_frac=decay / steps,
                              min_lr_frac=config.cooldown.min_lr_frac)
    run = recipe.replace(model=model, out_dir=str(Path(config.out_dir) / name), max_steps=steps, schedule=schedule)
    return RunPlan(name, model.n_layers, budget, kind, run, model, steps, step_tokens, start, per_token)


def _vocab_size(config: SweepConfig) -> int:
    try:
        return TokenData.open(config.data).vocab_size
    except FileNotFoundError as error:
        raise ValueError(f"data: {error}") from None


def plan_sweep(config: SweepConfig, vocab_size: int | None = None) -> list[RunPlan]:
    """Every run of the sweep, smallest budget first within each depth; a ValueError naming the
    problem for a size the rule cannot build, a budget below one step (or too short for warmup and
    cooldown), a grid with fewer runs than the law has parameters, or a bad recipe."""
    vocab = vocab_size if vocab_size is not None else _vocab_size(config)
    plans: list[RunPlan] = []
    for depth in sorted(config.depths):
        model, recipe = _size(config, depth, vocab)
        for budget in config.budgets.values:
            name = f"d{depth}/{_budget_label(config.budgets.kind, budget)}"
            plans.append(_plan_run(config, recipe, model, config.budgets.kind, budget, name))
    if len(plans) < FIT_PARAMETERS:
        raise ValueError(f"the grid has {len(plans)} runs ({len(config.depths)} depths x {len(config.budgets.values)} "
                         f"budgets): fewer than the {FIT_PARAMETERS} parameters of L(N, D) = E + A/N^alpha + B/D^beta")
    if len(config.depths) < 2 or len(config.budgets.values) < 2:
        raise ValueError("the fit needs at least 2 depths and 2 budgets to tell the N and D terms apart")
    names = [plan.name for plan in plans]
    if len(set(names)) != len(names):
        raise ValueError("two budgets print the same way (3 significant digits); space them further apart")
    return plans


def plan_holdout(config: SweepConfig, depth: int | None = None, flops: float | None = None,
                 tokens: int | None = None, vocab_size: int | None = None) -> RunPlan:
    """A run outside the grid (default: the config's holdout section), trained from scratch."""
    depth = depth if depth is not None else config.holdout.depth
    if flops is None and tokens is None:
        flops, tokens = config.holdout.flops, config.holdout.tokens
    if depth is None or (flops is None) == (tokens is None):
        raise ValueError("holdout: give a depth and exactly one of flops or tokens")
    model, recipe = _size(config, depth, vocab_size if vocab_size is not None else _vocab_size(config))
    kind, budget = ("flops", flops) if flops is not None else ("tokens", tokens)
    return _plan_run(config, recipe, model, kind, budget, f"holdout/d{depth}-{_budget_label(kind, budget)}")


# --------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------
@dataclass
class SweepReport:
    out_dir: Path
    trained: list[str] = field(default_factory=list)  # runs trained (or finished) by this call
    skipped: list[str] = field(default_factory=list)  # runs already finished before this call
    stopped_by: str | None = None  # a signal ended the sweep early; run it again to continue
    seconds: float = 0.0


Pretrain = Callable[..., Any]  # lmforge.train.pretrain.pretrain's signature


def _result_path(plan: RunPlan) -> Path:
    return Path(plan.config.out_dir) / RESULT_FILE


def _finished(plan: RunPlan) -> dict[str, Any] | None:
    path = _result_path(plan)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if record.get("val_loss") is None:
        return None
    mine = plan.record()
    changed = [key for key in ("depth", "width", "ffn_dim", "steps", "step_tokens", "seq_len") if record.get(key) != mine[key]]
    if changed:
        raise ValueError(f"{path} holds a finished run that differs from this sweep's plan ({', '.join(changed)}): "
                         f"remove {path.parent} or choose another out_dir")
    return record


def _trunk_config(plan: RunPlan, stop: int) -> PretrainConfig:
    """The constant-rate trunk of plan's size, trained up to `stop` steps (the warmup is the same
    as every branch's, so its learning rate equals theirs before their cooldowns)."""
    trunk = Path(plan.config.out_dir).parent / "trunk"
    schedule = dataclasses.replace(plan.config.schedule, name="constant")
    return plan.config.replace(out_dir=str(trunk), max_steps=stop, schedule=schedule, sample_prompts=(),
                               keep_checkpoints=max(plan.config.keep_checkpoints, 2))


def _checkpoint_at(root: Path, step: int) -> Path | None:
    return next((path for path in list_checkpoints(root) if path.name == checkpoint_name(step)), None)


def _start_branch(plan: RunPlan, pretrain: Pretrain, show_progress: bool) -> bool:
    """Make plan's folder start from the trunk's state at its cooldown step; False if the trunk is
    already past that step without a checkpoint there (the run then trains from scratch)."""
    trunk = Path(_trunk_config(plan, plan.cooldown_start).out_dir)
    state = _checkpoint_at(trunk, plan.cooldown_start)
    if state is None:
        latest = latest_checkpoint(trunk)
        done = int(latest.name.removeprefix("step_")) if latest is not None else 0
        if done > plan.cooldown_start:
            return False
        result = pretrain(_trunk_config(plan, plan.cooldown_start), resume=latest is not None, show_progress=show_progress)
        if result.stopped_by:
            raise _Stopped(result.stopped_by)
        state = _checkpoint_at(trunk, plan.cooldown_start)
        if state is None:
            return False
    out = Path(plan.config.out_dir)
    write_folder_atomically(out / state.name, lambda tmp: shutil.copytree(state, tmp, dirs_exist_ok=True))
    if (trunk / "metrics.jsonl").is_file():  # the curve so far; the run keeps records up to its start
        write_text_atomically(out / "metrics.jsonl", (trunk / "metrics.jsonl").read_text())
    return True


class _Stopped(Exception):
    def __init__(self, signal: str) -> None:
        super().__init__(signal)
        self.signal = signal


def run_planned(plan: RunPlan, pretrain: Pretrain, *, branch: bool = False, show_progress: bool = True,
                on_eval: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any] | None:
    """Train one planned run to its end (resuming its folder, or branching from the trunk) and
    write its result.json; None if a signal stopped it (its checkpoint is saved)."""
    out = Path(plan.config.out_dir)
    started = time.perf_counter()
    resume = latest_checkpoint(out) is not None
    try:
        if not resume and branch and plan.cooldown_start > 0:
            resume = _start_branch(plan, pretrain, show_progress)
    except _Stopped:
        return None
    result = pretrain(plan.config, resume=resume, on_eval=on_eval, show_progress=show_progress)
    if result.stopped_by or not result.evals:
        return None
    final = result.evals[-1]
    record = {**plan.record(), "val_loss": final["val_loss"], "val_bpb": final["val_bpb"],
              "train_seconds": round(result.train_seconds, 3), "wall_seconds": round(time.perf_counter() - started, 3),
              "branched": branch and plan.cooldown_start > 0, "out_dir": str(out),
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_text_atomically(_result_path(plan), json.dumps(record, indent=2) + "\n")
    return record


def _write_runs(config: SweepConfig, plans: list[RunPlan], vocab: int) -> Path:
    runs = [record for record in (_finished(plan) for plan in plans) if record is not None]
    seq_len = plans[0].config.seq_len
    document = {"lmforge_scaling": 1, "data": config.data, "budget_kind": config.budgets.kind,
                "family_rule": dataclasses.asdict(config.family), "vocab_size": vocab, "seq_len": seq_len,
                "family": family_table(config.family, vocab, seq_len), "planned": len(plans), "runs": runs,
                "sweep_config": config.to_dict()}
    return write_text_atomically(Path(config.out_dir) / RUNS_FILE, json.dumps(document, indent=1) + "\n")


def _run_size(plans: list[RunPlan], pretrain: Pretrain, branch: bool, show_progress: bool,
              log: Callable[[str], None] = print, on_eval: Callable[[dict[str, Any]], None] | None = None,
              after_run: Callable[[], Any] | None = None) -> tuple[list[str], list[str], bool]:
    """Train the unfinished runs of one size in budget order: (trained, skipped, stopped early);
    `after_run` is called after each finished run (it rewrites runs.json)."""
    trained, skipped = [], []
    for plan in plans:
        if _finished(plan) is not None:
            skipped.append(plan.name)
            continue
        log(f"{plan.name}: depth {plan.depth}, {parameter_counts(plan.model)[1]:,} non-embedding parameters, "
            f"{plan.tokens:,} tokens, {plan.flops_per_token * plan.tokens:.3g} FLOPs")
        record = run_planned(plan, pretrain, branch=branch, show_progress=show_progress, on_eval=on_eval)
        if record is None:
            log(f"{plan.name}: stopped; run the same command again to continue")
            return trained, skipped, True
        trained.append(plan.name)
        if after_run is not None:
            after_run()
        log(f"{plan.name}: val loss {record['val_loss']:.4f}, {record['val_bpb']:.4f} bits/byte "
            f"({record['train_seconds']:.1f}s of training)")
    return trained, skipped, False


def _flush_print(line: str) -> None:
    print(line, flush=True)


def run_sweep(config: SweepConfig, pretrain: Pretrain, *, jobs: int = 1, show_progress: bool = True,
              log: Callable[[str], None] = print,
              on_eval: Callable[[dict[str, Any]], None] | None = None) -> SweepReport:
    """Train every run of the sweep not finished yet (plan_sweep checks the grid first) and keep
    runs.json up to date. Each size trains its budgets smallest first, so every branch finds its trunk
    state; with jobs > 1, sizes train side by side in that many processes (each with the recipe's
    threads; the longest start first). `pretrain` is lmforge.train.pretrain.pretrain."""
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    if jobs > 1 and on_eval is not None:
        raise ValueError("on_eval works with jobs=1 only")
    started = time.perf_counter()
    vocab = _vocab_size(config)
    plans = plan_sweep(config, vocab)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomically(out / "sweep_config.json", json.dumps(config.to_dict(), indent=2) + "\n")
    sizes: dict[int, list[RunPlan]] = {}
    for plan in plans:
        sizes.setdefault(plan.depth, []).append(plan)
    # the longest first: training FLOPs over width (a CPU's FLOP/s grows roughly with the width at these sizes)
    order = sorted(sizes.values(), key=lambda group: -sum(p.flops_per_token * p.tokens for p in group) / group[0].model.dim)
    report = SweepReport(out)

    def collect(trained: list[str], skipped: list[str], stopped: bool) -> None:
        report.trained += trained
        report.skipped += skipped
        if stopped:
            report.stopped_by = "signal"

    write = functools.partial(_write_runs, config, plans, vocab)  # each process rewrites runs.json atomically
    if jobs == 1:
        for group in order:
            collect(*_run_size(group, pretrain, config.cooldown.branches, show_progress, log, on_eval, write))
            if report.stopped_by:
                break
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=min(jobs, len(order)), mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_run_size, group, pretrain, config.cooldown.branches, False, _flush_print, None, write)
                       for group in order]
            for future in as_completed(futures):
                collect(*future.result())
    _write_runs(config, plans, vocab)
    report.seconds = time.perf_counter() - started
    return report


def load_runs(path: str | Path) -> dict[str, Any]:
    """runs.json of a sweep folder (or the file itself), as written by run_sweep."""
    path = Path(path)
    file = path / RUNS_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: run `lmforge scale sweep` first, or pass a runs.json")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{file}: invalid JSON ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise ValueError(f"{file}: expected an object with a 'runs' list")
    return data
