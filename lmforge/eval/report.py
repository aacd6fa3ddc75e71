"""Report card: one markdown page gathering what a run folder holds.

`build_report(run_dir)` walks the folder and reads what lmforge's verbs leave behind:
  tokenizer_report.json        tokenizer training (vocab, bytes per token on held-out text)
  meta.json with "splits"      a prepared token-data folder (documents, tokens, bytes per split)
  metrics.jsonl                pretraining / fine-tuning curves (train_loss, val_loss, val_bpb, time_s)
  run_config.json              the training configuration
  step_*/model.safetensors     checkpoints (parameter count from the safetensors header)
  eval/*.json, *.json          `lmforge eval` results (files carrying "lmforge_eval"); code, text-similarity
                               and judged results also show a few of their kept samples
  scaling.md                   `lmforge scale fit` summaries, included as sections
  cost.json, eval "cost"       FLOPs, wall time, energy and money of training and eval runs (lmforge.core.cost)
  *.png                        plots (loss curves, accuracy against shots), linked
and sums the wall time it finds into an estimated cost at a given hourly price.
Unknown files are ignored; a section with nothing to show is left out.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from lmforge.core.files import write_text_atomically
from lmforge.eval.scaling import SUMMARY_FILE as SCALING_SUMMARY, report_section

__all__ = ["build_report", "write_report"]

MAX_SCAN_FILES = 20_000  # a report never walks an unbounded tree


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a run killed mid-write leaves a partial last line
                if isinstance(record, dict):
                    records.append(record)
    except (OSError, UnicodeDecodeError):
        return []
    return records


def safetensors_parameters(path: Path) -> int | None:
    """Number of parameters in a .safetensors file, read from its JSON header only."""
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > 100_000_000:
                return None
            header = json.loads(handle.read(length))
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError):
        return None
    total = 0
    for name, entry in header.items():
        if name == "__metadata__" or not isinstance(entry, dict):
            continue
        total += math.prod(entry.get("shape", []))
    return total


def _duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.4f}" if abs(value) < 1000 else f"{value:,.1f}"
    return str(value)


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _scan(root: Path) -> list[Path]:
    files = []
    for path in sorted(root.rglob("*")):
        if len(files) >= MAX_SCAN_FILES:
            break
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts):
            files.append(path)
    return files


def _json_files(files: list[Path], name: str) -> list[tuple[Path, Any]]:
    """(path, parsed content or None) of every scanned file called `name`."""
    return [(path, _read_json(path)) for path in files if path.name == name]


def _table(title: str, header: list[str], rows: list[list[str]]) -> str:
    """A markdown section: '## title' and a table."""
    lines = [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# -- code, text-similarity and judged evaluations ----------------------------------------------------
_CAPABILITY_ALSO = ("pass@10", "pass@100", "sample_pass_rate", "rouge1", "rouge2", "bleu", "chrf", "agreement",
                    "position_a_rate", "ties", "win_prob")
EXAMPLES_PER_EVAL = 2


def _spread(metrics: dict[str, Any], metric: str) -> str:
    """The ± column: a standard error, else a 95% interval [low, high]."""
    stderr, interval = metrics.get(metric + "_stderr"), metrics.get(metric + "_ci")
    if stderr is None and isinstance(interval, list) and len(interval) == 2:
        return f"[{_number(interval[0])}, {_number(interval[1])}]"
    return _number(stderr)


def _fence(text: Any, limit: int = 1200) -> str:
    text = str(text if text is not None else "")
    text = text if len(text) <= limit else text[:limit] + "\n[...]"
    return "~~~\n" + text.replace("~~~", "~ ~ ~") + "\n~~~"


def _capability_examples(path: Path, data: dict[str, Any], root: Path) -> str:
    """A few kept samples of a code, similarity or judged evaluation: the program that ran and how a
    failing one failed, reference against candidate, both answers and the judge's verdicts. All
    samples stay in the results file."""
    runs = data.get("runs") or [{}]
    samples = runs[-1].get("samples") if isinstance(runs[-1], dict) else None
    kind = data.get("kind")
    if not isinstance(samples, list) or not samples or not isinstance(samples[0], dict):
        return ""
    parts = [f"### {data.get('task')} ({_rel(path, root)})"]
    if kind == "code":
        entries = [e for problem in samples if isinstance(problem, dict) for e in problem.get("samples", [])
                   if isinstance(e, dict)]
        failed = [e for e in entries if not e.get("passed")][:EXAMPLES_PER_EVAL]
        for entry in [e for e in entries if e.get("passed")][:1] + failed:
            parts.append(f"{'passed' if entry.get('passed') else 'failed'} ({entry.get('status')}):\n\n"
                         + _fence(entry.get("program")))
            if not entry.get("passed") and (entry.get("stderr") or entry.get("stdout")):
                parts.append("its stderr:\n\n" + _fence(entry.get("stderr") or entry.get("stdout"), 600))
    elif kind == "judged" or (kind == "generation" and "reference" in samples[0] and "candidate" in samples[0]):
        for entry in samples[:EXAMPLES_PER_EVAL]:
            lines = [f"- **{entry.get('id', '')}**"]
            if entry.get("question"):
                lines.append(f"  question: {str(entry['question'])[:300]}")
            lines.append(f"  candidate: {str(entry.get('candidate', ''))[:500]}")
            opponent = next((k for k in ("reference", "baseline") if k in entry), None)
            if opponent:
                lines.append(f"  {opponent}: {str(entry[opponent])[:500]}")
            if "winner" in entry:
                lines.append(f"  verdicts: {entry.get('verdict_a_first')} (candidate shown first), "
                             f"{entry.get('verdict_b_first')} (shown second) -> {entry['winner']}")
            elif "score" in entry:
                lines.append(f"  rubric: {entry['score']}")
            parts.append("\n".join(lines))
    else:
        return ""
    return "\n\n".join(parts)


def _cost_records(files: list[Path], evals: list[tuple[Path, Any]], root: Path) -> list[str]:
    """Rows of the cost records runs left (cost.json of training, "cost" of eval results): FLOPs
    counted from the model and its tokens, wall time, energy and money at the rates they name."""
    records = [(f"training {_rel(p.parent, root) or '.'}", data) for p, data in _json_files(files, "cost.json")]
    records += [(f"eval {data.get('task')} ({_rel(p, root)})", data["cost"]) for p, data in evals
                if isinstance(data.get("cost"), dict)]
    records = [(name, r) for name, r in records if isinstance(r, dict) and isinstance(r.get("flops"), (int, float))]
    if not records:
        return []
    lines = ["", "| work | FLOPs | tokens | wall time | energy | estimate | rates |", "|---|---|---|---|---|---|---|"]
    for name, r in records:
        rates = r.get("rates") if isinstance(r.get("rates"), dict) else {}
        lines.append(f"| {name} | {r['flops']:.3g} | {_number(r.get('tokens'))} | {_duration(r.get('seconds') or 0)} | "
                     f"{_number(r.get('energy_kwh'))} kWh | ${_number(r.get('usd'))} | {rates.get('watts', '-')} W, "
                     f"${rates.get('usd_per_kwh', '-')}/kWh, ${rates.get('usd_per_hour', '-')}/h |")
    return lines


def build_report(run_dir: str | Path, usd_per_hour: float = 0.10, title: str | None = None) -> str:
    """Markdown report card of `run_dir` (see module docstring)."""
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"run folder {root} does not exist")
    files = _scan(root)
    sections: list[str] = []
    wall: dict[str, float] = {}  # what took how long

    # -- tokenizer -------------------------------------------------------------------------------
    rows = [(path, data) for path, data in _json_files(files, "tokenizer_report.json") if isinstance(data, dict)]
    if rows:
        sections.append(_table("Tokenizer", ["file", "kind", "vocab", "training bytes", "held-out bytes/token"], [
            [_rel(path, root), data.get("kind", "-"), _number(data.get("vocab_size")), _number(data.get("bytes")),
             _number(data.get("bytes_per_token"))] for path, data in rows]))

    # -- token data --------------------------------------------------------------------------------
    rows = [(path, data) for path, data in _json_files(files, "meta.json")
            if isinstance(data, dict) and isinstance(data.get("splits"), dict)]
    table = []
    for path, data in rows:
        folder = _rel(path.parent, root) or "."
        if isinstance(data.get("seconds"), (int, float)):
            wall[f"prepare {folder}"] = float(data["seconds"])
        for split, info in data["splits"].items():
            if isinstance(info, dict):
                tokens, n_bytes = info.get("tokens"), info.get("bytes")
                ratio = n_bytes / tokens if isinstance(tokens, int) and tokens and isinstance(n_bytes, (int, float)) else None
                table.append([folder, split, _number(info.get("documents")), _number(tokens), _number(n_bytes),
                              _number(ratio)])
    if rows:
        sections.append(_table("Data", ["folder", "split", "documents", "tokens", "bytes", "bytes/token"], table))

    # -- training curves ---------------------------------------------------------------------------
    runs = []
    for path in (p for p in files if p.name == "metrics.jsonl"):
        records = _read_jsonl(path)
        if records:
            runs.append((path, records))
    train_tokens = 0
    if runs:
        lines = ["## Training", "", "| run | steps | tokens | time | final train loss | best val loss | val bits/byte | tokens/s |",
                 "|---|---|---|---|---|---|---|---|"]
        for path, records in runs:
            steps = max((r.get("step", 0) for r in records if isinstance(r.get("step"), int)), default=0)
            tokens = max((r.get("tokens", 0) for r in records if isinstance(r.get("tokens"), int)), default=0)
            seconds = max((r.get("time_s", 0.0) for r in records if isinstance(r.get("time_s"), (int, float))), default=0.0)
            train = [r["train_loss"] for r in records if isinstance(r.get("train_loss"), (int, float))]
            final_train = sum(train[-5:]) / len(train[-5:]) if train else None
            vals = [r for r in records if isinstance(r.get("val_loss"), (int, float))]
            best = min(vals, key=lambda r: r["val_loss"]) if vals else None
            rates = [r["tokens_per_s"] for r in records if isinstance(r.get("tokens_per_s"), (int, float))]
            name = _rel(path.parent, root) or "."
            lines.append(f"| {name} | {_number(steps)} | {_number(tokens)} | {_duration(seconds)} | {_number(final_train)} | "
                         f"{_number(best['val_loss']) if best else '-'} | {_number(best.get('val_bpb')) if best else '-'} | "
                         f"{_number(sum(rates) / len(rates)) if rates else '-'} |")
            if seconds:
                wall[f"training {name}"] = float(seconds)
            train_tokens += tokens
        sections.append("\n".join(lines))

    # -- checkpoints -------------------------------------------------------------------------------
    checkpoints = [p for p in files if p.name == "model.safetensors"]
    parameters = None
    if checkpoints:
        lines = ["## Checkpoints", "", "| checkpoint | parameters | step | val loss |", "|---|---|---|---|"]
        for path in checkpoints[-8:]:
            count = safetensors_parameters(path)
            parameters = count or parameters
            meta = _read_json(path.parent / "meta.json")
            meta = meta if isinstance(meta, dict) else {}
            lines.append(f"| {_rel(path.parent, root) or '.'} | {_number(count)} | {_number(meta.get('step'))} | "
                         f"{_number(meta.get('val_loss'))} |")
        if len(checkpoints) > 8:
            lines.append(f"\n({len(checkpoints) - 8} older checkpoints not listed)")
        sections.append("\n".join(lines))

    # -- evaluations -------------------------------------------------------------------------------
    evals, seen = [], set()
    for path in (p for p in files if p.suffix == ".json"):
        data = _read_json(path)
        if isinstance(data, dict) and "lmforge_eval" in data and isinstance(data.get("runs"), list):
            # `lmforge eval --json X --run-dir D` writes one result twice: count it once.
            key = json.dumps([data.get(k) for k in ("task", "model", "finished", "wall_s", "config")], sort_keys=True)
            if key not in seen:
                seen.add(key)
                evals.append((path, data))
    if evals:
        lines = ["## Evaluation", "", "| task | model | mode | shots | n | metric | score | ± | also | time |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for path, data in evals:
            config = data.get("config", {})
            mode = ("chat" if config.get("chat") else "plain") + (" CoT" if config.get("cot") else "")
            metric = data.get("primary_metric", "acc")
            for run in data["runs"]:
                metrics = run.get("metrics", {})
                also = ", ".join(f"{k} {_number(v)}" for k, v in metrics.items()
                                 if k in ("acc_norm", "numeric_match", "exact_match", "strict_match", "perplexity", "answer_marker_rate")
                                 + _CAPABILITY_ALSO and k != metric)
                lines.append(f"| {data.get('task')} | {data.get('model', '-')} | {mode} | {run.get('shots')} | {run.get('n')} | "
                             f"{metric} | {_number(metrics.get(metric))} | {_spread(metrics, metric)} | "
                             f"{also or '-'} | {_duration(run.get('wall_s', 0))} |")
            if isinstance(data.get("wall_s"), (int, float)):
                wall[f"eval {_rel(path, root)}"] = float(data["wall_s"])
        sections.append("\n".join(lines))
        examples = [_capability_examples(path, data, root) for path, data in evals]
        if any(examples):
            sections.append("## Samples\n\n" + "\n\n".join(e for e in examples if e))

    # -- scaling laws (`lmforge scale fit` writes scaling.md) ----------------------------------------
    sections += [report_section(path, root) for path in files if path.name == SCALING_SUMMARY]

    # -- plots -------------------------------------------------------------------------------------
    plots = [p for p in files if p.suffix == ".png"]
    if plots:
        sections.append("## Plots\n\n" + "\n\n".join(f"![{_rel(p, root)}]({_rel(p, root)})" for p in plots[:24]))

    # -- time and cost -------------------------------------------------------------------------------
    total = sum(wall.values())
    lines = ["## Time and cost", ""]
    if wall:
        lines += ["| work | wall time |", "|---|---|"]
        lines += [f"| {name} | {_duration(seconds)} |" for name, seconds in wall.items()]
        lines += [f"| **total** | **{_duration(total)}** |", ""]
    lines.append(f"Estimated cost: **${total / 3600 * usd_per_hour:,.4f}** at ${usd_per_hour:g} per machine-hour "
                 f"(`--usd-per-hour` to change).")
    if parameters and train_tokens:
        flops = 6 * parameters * train_tokens
        lines.append(f"Training compute ≈ 6 × {parameters:,} parameters × {train_tokens:,} tokens = {flops:.3g} FLOPs.")
    lines += _cost_records(files, evals, root)
    sections.append("\n".join(lines))

    heading = title or f"Report card: {root.resolve().name}"
    intro = f"Run folder `{root}`; {len(files)} files scanned."
    return "\n\n".join([f"# {heading}", intro, *sections]) + "\n"


def write_report(run_dir: str | Path, out: str | Path | None = None, usd_per_hour: float = 0.10) -> Path:
    """Write the report card (default RUN_DIR/report.md); returns its path."""
    text = build_report(run_dir, usd_per_hour=usd_per_hour)
    return write_text_atomically(Path(out) if out is not None else Path(run_dir) / "report.md", text)
