"""CPU speedrun: character-level Tiny Shakespeare, lmforge's recipe against nanoGPT's CPU recipe, same run.

Data: ../shared/data/tinyshakespeare.txt (read in place, never copied into the project), one token per
character, first 90% train and last 10% val (nanoGPT's split). First the peer trains: nanoGPT's
documented CPU recipe (2000 steps of a 4x128 GPT, re-implemented in bench/nanogpt_recipe.py, since
nanoGPT is not an installable package), with its training time measured and its validation loss
taken over the whole val split. Then lmforge's recipe trains for as many training seconds as the peer
took (`--budget` overrides), evaluating the whole val split every `--eval-every-s` training seconds.
Evaluation passes are excluded from both clocks. It prints both loss curves, tokens/s and one line

    speedrun: nanogpt_s=... nanogpt_val=... time_to_nanogpt_val_s=... val_at_nanogpt_s=... tokens_per_s=...

nanogpt_s and nanogpt_val: the peer's training seconds and final validation loss, measured in this run.
time_to_nanogpt_val_s: lmforge's training time at its first evaluation at or below nanogpt_val
(evaluation granularity, rounded up: conservative; nan if never reached).
val_at_nanogpt_s: lmforge's validation loss at nanogpt_s seconds of training, interpolated between the
two evaluations around that time (nan if the run did not train that long).
Goals: time_to_nanogpt_val_s at most 60% of nanogpt_s, and a clearly lower val_at_nanogpt_s.

    python bench/speedrun.py [--config configs/speedrun-shakespeare-char.yaml] [--budget SECONDS]
                             [--eval-every-s 4] [--threads 2] [--peer-iters 2000] [KEY=VALUE overrides]
    python bench/speedrun.py --peer-json peer.json ...  # reuse a peer measured by an earlier --json run
    python bench/speedrun.py --max-tokens 2000000 ...   # lmforge on a token budget (for tuning on a busy
                                                        # machine: loss per token is timing-free)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import nanogpt_recipe  # noqa: E402

from lmforge.cli.pretrain import load_config  # noqa: E402
from lmforge.data.prepare import PrepareOptions, prepare_corpus  # noqa: E402
from lmforge.tokenizer.train import save_tokenizer, token_byte_lengths, train_tokenizer  # noqa: E402
from lmforge.train.pretrain import pretrain  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def time_to_loss(curve: list[dict], target: float) -> float:
    """Training time of the first evaluation at or below `target` (nan if none)."""
    hit = next((r for r in curve if r["val_loss"] <= target), None)
    return hit["time_s"] if hit else float("nan")


def loss_at_time(curve: list[dict], seconds: float) -> float:
    """Validation loss at `seconds` of training: linear between the evaluations around it.

    nan when the curve does not reach that time (never the last value of a shorter run) or starts
    after it."""
    for before, after in zip(curve, curve[1:]):
        if before["time_s"] <= seconds <= after["time_s"]:
            span = after["time_s"] - before["time_s"]
            weight = (seconds - before["time_s"]) / span if span else 1.0
            return before["val_loss"] + weight * (after["val_loss"] - before["val_loss"])
    if curve and curve[-1]["time_s"] == seconds:  # a single evaluation exactly at that time
        return curve[-1]["val_loss"]
    return float("nan")


def summary_line(peer_seconds: float, peer_val: float, curve: list[dict], tokens_per_s: float) -> str:
    return (f"speedrun: nanogpt_s={peer_seconds:.1f} nanogpt_val={peer_val:.4f} "
            f"time_to_nanogpt_val_s={time_to_loss(curve, peer_val):.1f} "
            f"val_at_nanogpt_s={loss_at_time(curve, peer_seconds):.4f} tokens_per_s={tokens_per_s:.0f}")


def prepare(work: Path) -> Path:
    tokenizer, _ = train_tokenizer([str(DATA)], kind="char")
    save_tokenizer(tokenizer, work / "tokenizer")
    data = prepare_corpus([str(DATA)], work / "data", encode_batch=tokenizer.encode_batch, vocab_size=tokenizer.vocab_size,
                          boundary_id=tokenizer.bos_id, token_bytes=token_byte_lengths(tokenizer),
                          tokenizer_folder=work / "tokenizer", options=PrepareOptions(val_fraction=0.1, split="tail"))
    return data.folder


def run_peer(iterations: int) -> dict:
    recipe = nanogpt_recipe.Recipe()
    if iterations != recipe.max_iters:  # shorter smoke runs keep the schedule's shape
        recipe = nanogpt_recipe.Recipe(max_iters=iterations, lr_decay_iters=iterations,
                                       warmup_iters=min(recipe.warmup_iters, iterations // 20),
                                       eval_interval=max(1, iterations // 4))
    print(f"peer: nanoGPT's CPU recipe (bench/nanogpt_recipe.py): GPT {recipe.n_layer}x{recipe.n_embd}, "
          f"ctx={recipe.block_size} batch={recipe.batch_size}, AdamW {recipe.learning_rate}, {recipe.max_iters} steps, fp32")
    print(f"{'train_s':>8} {'tokens':>10} {'val_loss':>9}")

    def show(record: dict) -> None:
        print(f"{record['time_s']:8.1f} {record['tokens']:10,d} {record['val_loss']:9.4f}", flush=True)

    peer = nanogpt_recipe.train(DATA.read_text(encoding="utf-8"), recipe, on_eval=show)
    print(f"peer: {peer['train_seconds']:.1f} s of training, {peer['tokens'] / peer['train_seconds']:,.0f} tokens/s, "
          f"final val loss {peer['val_loss']:.4f}")
    return peer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "speedrun-shakespeare-char.yaml"))
    parser.add_argument("--budget", type=float, default=None,
                        help="lmforge's training seconds (default: as many as the peer took in this run)")
    parser.add_argument("--max-tokens", type=int, default=None, help="train lmforge on a token budget instead")
    parser.add_argument("--eval-every-s", type=float, default=4.0, help="evaluate every this many training seconds")
    parser.add_argument("--eval-every-tokens", type=int, default=200_000, help="with --max-tokens: evaluate this often")
    parser.add_argument("--threads", type=int, default=None, help="torch threads, both runs (default: the config's, else all cores)")
    parser.add_argument("--peer-iters", type=int, default=2000, help="steps of the nanoGPT peer (default 2000, its recipe)")
    parser.add_argument("--peer-json", default=None,
                        help="take the peer's figures from an earlier run's --json file instead of training it again")
    parser.add_argument("--out", default=None, help="run folder (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="also write both curves and the summary to this JSON file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    if not DATA.is_file():
        raise SystemExit(f"speedrun: {DATA} not found (the shared data folder must sit beside the project)")

    base = load_config(args.config, args.overrides + ([f"threads={args.threads}"] if args.threads else []))
    torch.set_num_threads(base.threads or os.cpu_count() or 1)
    print(f"speedrun: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} before the run")
    if os.getloadavg()[0] > (os.cpu_count() or 1) - 0.5:
        print("speedrun: WARNING the CPU is busy with other work: with 2+ threads PyTorch's workers wait on each "
              "other and throughput can fall 5-10x; the timings are not representative (--threads 1 degrades less)")

    if args.peer_json:
        stored = json.loads(Path(args.peer_json).read_text())["peer"]
        peer = {**stored, "source": f"{args.peer_json} (an earlier run, not this one)"}
        print(f"peer: from {peer['source']}: {peer['train_seconds']:.1f} s, final val loss {peer['val_loss']:.4f}")
    else:
        peer = {**run_peer(args.peer_iters), "source": "this run"}

    with tempfile.TemporaryDirectory(prefix="speedrun-") as tmp:
        work = Path(tmp)
        data = prepare(work)
        out = Path(args.out) if args.out else work / "run"
        overrides = [f"data={data}", f"out_dir={out}", "eval_tokens=null", "save_every=0", "sample_every=0"]
        if args.max_tokens:
            step_tokens = base.batch_size * base.seq_len * base.grad_accum
            overrides += [f"max_tokens={args.max_tokens}", "time_budget_s=null", "max_steps=null", "eval_every_s=null",
                          f"eval_every={max(1, args.eval_every_tokens // step_tokens)}"]
        else:
            budget = args.budget if args.budget is not None else peer["train_seconds"]
            overrides += [f"time_budget_s={budget}", "max_tokens=null", "max_steps=null",
                          f"eval_every_s={args.eval_every_s}", "eval_every=0"]
        if args.threads:
            overrides.append(f"threads={args.threads}")
        config = load_config(args.config, list(args.overrides) + overrides)
        print(f"lmforge: {args.config}; model {config.model.family} dim={config.model.dim} layers={config.model.n_layers} "
              f"heads={config.model.n_heads} ctx={config.seq_len} batch={config.batch_size}x{config.grad_accum} "
              f"optim={config.optim.name} dtype={config.dtype} compile={config.compile}")
        print(f"{'train_s':>8} {'tokens':>10} {'val_loss':>9} {'bpb':>7}")
        curve: list[dict] = []

        def on_eval(record: dict) -> None:
            curve.append(record)
            print(f"{record['time_s']:8.1f} {record['tokens']:10,d} {record['val_loss']:9.4f} {record['val_bpb']:7.4f}", flush=True)

        started = time.perf_counter()
        result = pretrain(config, on_eval=on_eval, show_progress=False)
        wall = time.perf_counter() - started

    tokens_per_s = result.tokens / result.train_seconds
    time_to = time_to_loss(curve, peer["val_loss"])
    print(f"load average {os.getloadavg()[0]:.1f} after the run")
    print(f"lmforge: wall time {wall:.1f}s (training {result.train_seconds:.1f}s, the rest evaluation and setup); "
          f"{result.tokens:,} tokens in {result.steps} steps; {tokens_per_s:,.0f} tokens/s")
    if not math.isnan(time_to):
        print(f"lmforge reached the peer's val loss {peer['val_loss']:.4f} after {time_to:.1f}s = "
              f"{100 * time_to / peer['train_seconds']:.0f}% of the peer's {peer['train_seconds']:.1f}s")
    line = summary_line(peer["train_seconds"], peer["val_loss"], curve, tokens_per_s)
    if args.json:
        summary = {"peer": {k: peer[k] for k in ("train_seconds", "tokens", "val_loss", "curve")},
                   "peer_source": peer["source"], "summary": line, "train_seconds": result.train_seconds,
                   "tokens": result.tokens, "tokens_per_s": tokens_per_s, "curve": curve, "config": config.to_dict()}
        Path(args.json).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
