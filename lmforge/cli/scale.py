"""`lmforge scale sweep|fit|predict`: scaling laws on your own data.

    lmforge scale sweep --config configs/scale-stdlib.yaml          # grid of sizes x budgets (resumable)
    lmforge scale fit runs/scale-stdlib                               # L(N, D) with bootstrap intervals, plots
    lmforge scale predict --config configs/scale-stdlib.yaml --run    # held-out larger run: predict, train, compare
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from pathlib import Path
from typing import Any

from lmforge.cli.common import report_error
from lmforge.cli.recipes import apply_overrides, read_recipe


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("scale", help="scaling laws: sweep model sizes and budgets, fit L(N, D), predict larger runs",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="scale_command", metavar="VERB")

    sweep = verbs.add_parser("sweep", help="train a grid of model sizes x budgets (finished runs are skipped)")
    sweep.add_argument("--config", required=True, help="sweep YAML (see configs/scale-*.yaml)")
    sweep.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override sweep keys, e.g. depths=[2,3,4] base.seq_len=64")
    sweep.add_argument("--jobs", type=int, default=1,
                       help="sizes trained side by side, one process each (default 1); with threads: 1 in the recipe, "
                            "--jobs 2 keeps 2 cores busy without thread contention")
    sweep.add_argument("--dry-run", action="store_true", help="check the grid and print the plan without training")
    sweep.add_argument("--quiet", action="store_true", help="no progress bars (one line per run still printed)")
    sweep.set_defaults(func=run_sweep_command)

    fit = verbs.add_parser("fit", help="fit L(N, D) = E + A/N^alpha + B/D^beta to a sweep's runs")
    fit.add_argument("runs", type=Path, metavar="RUNS", help="a sweep folder (its runs.json) or a runs.json file")
    fit.add_argument("--params", choices=("non_embedding", "total"), default="non_embedding",
                     help="N counts parameters without the embeddings and output head (Kaplan's choice), or all of them "
                          "(default non_embedding)")
    fit.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the runs (default 1000)")
    fit.add_argument("--level", type=float, default=0.95, help="confidence level of every interval (default 0.95)")
    fit.add_argument("--delta", type=float, default=1e-3, help="Huber delta on log-loss residuals (default 1e-3, as Hoffmann et al.)")
    fit.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    fit.add_argument("--flops", type=float, nargs="+",
                     help="FLOP budgets for the compute-optimal table (default: the largest swept compute x 1, 10, 100, 1000)")
    fit.add_argument("--exclude", nargs="+", default=[], metavar="PATTERN",
                     help="leave runs whose name matches these glob patterns out of the fit (default: none)")
    fit.add_argument("--out", type=Path, help="folder for fit.json, plots and scaling.md (default: the sweep folder)")
    fit.set_defaults(func=run_fit_command)

    predict = verbs.add_parser("predict", help="predict the final loss of a run not in the fit; --run trains it and compares")
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="sweep YAML: predict its holdout section, or --depth with --flops/--tokens")
    source.add_argument("--recipe", help="a pretraining YAML (lmforge pretrain) with max_steps or max_tokens")
    predict.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override keys of the YAML")
    predict.add_argument("--depth", type=int, help="depth of the family rule (default: the config's holdout.depth)")
    budget = predict.add_mutually_exclusive_group()
    budget.add_argument("--flops", type=float, help="training FLOPs of the run (default: the config's holdout)")
    budget.add_argument("--tokens", type=int, help="training tokens of the run (default: the config's holdout)")
    predict.add_argument("--fit", type=Path, help="fit.json (default: OUT_DIR/fit.json of the sweep config)")
    predict.add_argument("--run", action="store_true", help="then train the run (resumable) and report the error")
    predict.add_argument("--quiet", action="store_true", help="no progress bars")
    predict.set_defaults(func=run_predict_command)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


# --------------------------------------------------------------------------------------------
def load_sweep_config(path: str | Path, overrides: list[str] = ()):
    from lmforge.train.scaling import SweepConfig

    try:
        return SweepConfig.from_dict(apply_overrides(read_recipe(path), list(overrides)))
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def _plan_table(plans: list) -> str:
    from lmforge.train.scaling import parameter_counts

    lines = [f"{'run':<16} {'N (non-emb)':>12} {'N (total)':>11} {'steps':>7} {'tokens':>11} {'FLOPs':>9} {'6ND':>9}"]
    for plan in plans:
        total, non_embedding = parameter_counts(plan.model)
        flops = plan.flops_per_token * plan.tokens
        lines.append(f"{plan.name:<16} {non_embedding:>12,} {total:>11,} {plan.steps:>7,} {plan.tokens:>11,} "
                     f"{flops:>9.3g} {6 * non_embedding * plan.tokens:>9.3g}")
    total_flops = sum(p.flops_per_token * p.tokens for p in plans)
    lines.append(f"{len(plans)} runs, {total_flops:.3g} FLOPs if each trained alone")
    return "\n".join(lines)


def run_sweep_command(args: argparse.Namespace) -> int:
    from lmforge.train.scaling import plan_sweep, run_sweep

    config = load_sweep_config(args.config, args.overrides)
    plans = plan_sweep(config)  # every check, before anything trains
    print(_plan_table(plans))
    if config.cooldown.branches:
        print(f"cooldown branches: each size trains one constant-rate trunk; every budget cools down over its last "
              f"{config.cooldown.fraction:.0%} from the trunk's state")
    if args.dry_run:
        return 0
    from lmforge.io.checkpoint import CheckpointError
    from lmforge.train.pretrain import pretrain
    from lmforge.train.step import NonFiniteLossError

    try:
        report = run_sweep(config, pretrain, jobs=args.jobs, show_progress=not args.quiet)
    except (NonFiniteLossError, CheckpointError) as error:
        report_error(error, args)
        return 1
    print(f"sweep: {len(report.trained)} run(s) trained, {len(report.skipped)} already done, {report.seconds:.1f}s; "
          f"runs: {report.out_dir / 'runs.json'}")
    if report.stopped_by:
        print("stopped early: run the same command again to continue", file=sys.stderr)
        return 1
    print(f"next: lmforge scale fit {report.out_dir}")
    return 0


# --------------------------------------------------------------------------------------------
def _fit_document(folder: Path) -> tuple[dict[str, Any], Path]:
    path = folder / "fit.json" if folder.is_dir() else folder
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `lmforge scale fit` first")
    try:
        return json.loads(path.read_text()), path
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: invalid JSON ({error})") from None


def _predictions(folder: Path) -> list[dict[str, Any]]:
    from lmforge.eval.scaling import PREDICTIONS_FILE

    path = folder / PREDICTIONS_FILE
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: invalid JSON ({error})") from None
    return data if isinstance(data, list) else []


def _render(folder: Path, document: dict[str, Any], predictions: list[dict[str, Any]]) -> list[Path]:
    from lmforge.eval.scaling import LawFit, write_outputs

    fit = LawFit.from_dict(document)
    return write_outputs(folder, fit, document["fit_runs"], optimal=document["optimal"], isoflop=document["isoflop"],
                         predictions=predictions, family=document.get("family"),
                         title=f"Scaling laws: {document.get('title', folder.name)}")


def run_fit_command(args: argparse.Namespace) -> int:
    from lmforge.core.files import write_text_atomically
    from lmforge.eval.scaling import FIT_FILE, compute_optimal, fit_runs, isoflop_profiles
    from lmforge.train.scaling import load_runs

    if args.bootstrap < 1:
        raise ValueError("--bootstrap must be at least 1")
    data = load_runs(args.runs)
    runs = [r for r in data["runs"] if not any(fnmatch.fnmatch(str(r.get("name", "")), p) for p in args.exclude)]
    folder = args.out or (args.runs if args.runs.is_dir() else args.runs.parent)
    fit = fit_runs(runs, params_kind=args.params, bootstrap=args.bootstrap, level=args.level, delta=args.delta, seed=args.seed)
    family = data.get("family")
    largest = max(float(r.get("flops") or 6 * r["params_non_embedding"] * r["tokens"]) for r in runs)
    budgets = args.flops or [largest * k for k in (1, 10, 100, 1000)]
    optimal = [compute_optimal(fit, c, family) for c in budgets]
    isoflop = isoflop_profiles(runs, args.params)
    document = {"lmforge_scaling_fit": 1, "title": Path(folder).resolve().name, **fit.to_dict(), "optimal": optimal,
                "isoflop": isoflop, "family": family, "fit_runs": runs, "source": str(args.runs)}
    write_text_atomically(Path(folder) / FIT_FILE, json.dumps(document, indent=1) + "\n")
    _render(Path(folder), document, _predictions(Path(folder)))
    _print_fit(fit, optimal, isoflop)
    print(f"written: {Path(folder) / FIT_FILE}, {Path(folder) / 'scaling.md'} and plots")
    return 0


def _print_fit(fit, optimal: list[dict[str, Any]], isoflop: dict[str, Any]) -> None:
    from lmforge.eval.scaling import CHINCHILLA, EPOCH_AI, PARAMETERS

    level = f"{100 * fit.level:.0f}%"
    print(f"L(N, D) = E + A/N^alpha + B/D^beta over {len(fit.runs)} runs, N = {fit.params_kind} parameters, "
          f"{len(fit.samples)} bootstrap resamples ({level} intervals)")
    print(f"{'':<6} {'estimate':>10} {level + ' interval':>24} {'Chinchilla':>11} {'Epoch AI':>9}")
    for name, (low, high) in zip(PARAMETERS, fit.intervals().values()):
        print(f"{name:<6} {getattr(fit.law, name):>10.4g} {f'[{low:.4g}, {high:.4g}]':>24} {CHINCHILLA[name]:>11.4g} "
              f"{EPOCH_AI[name]:>9.4g}")
    for row in optimal:
        line = (f"C={row['flops']:.3g}: N_opt={row['N']:.3g} [{row['N_interval'][0]:.3g}, {row['N_interval'][1]:.3g}], "
                f"D_opt={row['D']:.3g} [{row['D_interval'][0]:.3g}, {row['D_interval'][1]:.3g}], "
                f"{row['tokens_per_param']:.3g} tokens/param [{row['tokens_per_param_interval'][0]:.3g}, "
                f"{row['tokens_per_param_interval'][1]:.3g}]" if "N_interval" in row else
                f"C={row['flops']:.3g}: N_opt={row['N']:.3g}, D_opt={row['D']:.3g}, {row['tokens_per_param']:.3g} tokens/param")
        fam = row.get("family")
        if fam:
            line += f"; best buildable: depth {fam['depth']} ({fam['N']:.3g} params, {fam['D']:.3g} tokens)"
        print(line)
    if "a" in isoflop:
        print(f"IsoFLOP (approach 2): N_opt ~ C^{isoflop['a']:.3f}, D_opt ~ C^{isoflop['b']:.3f}; approach 3: "
              f"C^{fit.law.beta / (fit.law.alpha + fit.law.beta):.3f}, C^{fit.law.alpha / (fit.law.alpha + fit.law.beta):.3f}")


# --------------------------------------------------------------------------------------------
def _recipe_plan(path: str, overrides: list[str]):
    """A plain pretraining recipe as a planned run (from scratch, its own schedule)."""
    import math

    from lmforge.data.shards import TokenData
    from lmforge.train.config import PretrainConfig
    from lmforge.train.scaling import RunPlan, flops_per_token

    config = PretrainConfig.from_dict(apply_overrides(read_recipe(path), list(overrides)))
    if config.time_budget_s is not None and config.max_steps is None and config.max_tokens is None:
        raise ValueError(f"{path}: a run with only a time budget has no known token count to predict from")
    model = config.model.replace(vocab_size=TokenData.open(config.data).vocab_size, max_seq_len=config.seq_len)
    step_tokens = config.batch_size * config.seq_len * config.grad_accum
    steps = min(s for s in (config.max_steps, math.ceil(config.max_tokens / step_tokens) if config.max_tokens else None) if s)
    return RunPlan(Path(config.out_dir).name, model.n_layers, steps * step_tokens, "tokens", config, model, steps,
                   step_tokens, 0, flops_per_token(model, config.seq_len))


def run_predict_command(args: argparse.Namespace) -> int:
    from lmforge.core.files import write_text_atomically
    from lmforge.eval.scaling import PARAM_KEYS, PREDICTIONS_FILE, LawFit, predict
    from lmforge.train.scaling import parameter_counts, plan_holdout, run_planned

    if args.config:
        config = load_sweep_config(args.config, args.overrides)
        plan = plan_holdout(config, args.depth, args.flops, args.tokens)
        default_fit = Path(config.out_dir)
    else:
        if args.depth or args.flops or args.tokens:
            raise ValueError("--depth/--flops/--tokens go with --config; a --recipe sets its own model and length")
        if args.fit is None:
            raise ValueError("--recipe needs --fit FIT.json")
        plan = _recipe_plan(args.recipe, args.overrides)
        default_fit = args.fit
    document, fit_path = _fit_document(args.fit or default_fit)
    fit = LawFit.from_dict(document)
    total, non_embedding = parameter_counts(plan.model)
    N = {"params": total, "params_non_embedding": non_embedding}[PARAM_KEYS[fit.params_kind]]
    D, flops = plan.tokens, plan.flops_per_token * plan.tokens
    same = [r.get("name") for r in document["fit_runs"] if r.get(PARAM_KEYS[fit.params_kind]) == N and r.get("tokens") == D]
    if same:
        raise ValueError(f"{plan.name} has the size and tokens of {same[0]}, a run in the fit; choose a run outside it")
    largest = max(float(r.get("flops") or 0) for r in document["fit_runs"]) or None
    item = {"name": plan.name, "N": N, "D": D, "flops": flops, "compute_ratio": flops / largest if largest else None,
            "params": total, "params_non_embedding": non_embedding, **predict(fit, N, D), "observed": None}
    level = f"{100 * fit.level:.0f}%"
    ratio = f" = {item['compute_ratio']:.2f}x the largest run in the fit" if largest else ""
    print(f"{plan.name}: depth {plan.depth}, N={N:,} ({fit.params_kind}), D={D:,} tokens, {flops:.3g} FLOPs{ratio}")
    print(f"predicted final loss: {item['predicted']:.4f}, {level} prediction interval [{item['low']:.4f}, {item['high']:.4f}] "
          f"(law alone: [{item['law_low']:.4f}, {item['law_high']:.4f}])")
    folder = fit_path.parent
    if args.run:
        from lmforge.train.pretrain import pretrain

        record = run_planned(plan, pretrain, show_progress=not args.quiet)
        if record is None:
            print("stopped early: run the same command again to continue", file=sys.stderr)
            return 1
        observed = record["val_loss"]
        error = observed / item["predicted"] - 1
        item.update(observed=observed, val_bpb=record["val_bpb"], error=error, inside=item["low"] <= observed <= item["high"],
                    train_seconds=record["train_seconds"], out_dir=record["out_dir"])
        print(f"observed final loss: {observed:.4f} ({record['val_bpb']:.4f} bits/byte): error {100 * error:+.2f}% of the "
              f"prediction, {'inside' if item['inside'] else 'OUTSIDE'} the {level} interval")
    predictions = [p for p in _predictions(folder) if p.get("name") != plan.name] + [item]
    write_text_atomically(folder / PREDICTIONS_FILE, json.dumps(predictions, indent=1) + "\n")
    _render(folder, document, predictions)
    print(f"written: {folder / PREDICTIONS_FILE}, {folder / 'scaling.md'}")
    return 0
