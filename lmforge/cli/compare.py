"""`lmforge compare`: decoder vs LSTM vs T5 at matched parameters and training FLOPs, plus BERT on
its own objective, measured side by side into a markdown report with plots."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lmforge.cli.recipes import recipe_data
from lmforge.core.files import write_text_atomically
from lmforge.core.progress import ProgressDisplay
from lmforge.data.shards import TokenData
from lmforge.model.bert import BertConfig
from lmforge.eval.compare import decode_cost, per_position_loss, recall_probe, sample, write_report
from lmforge.tokenizer.tokenizer import Tokenizer
from lmforge.train.compare import CompareConfig, train_families, val_windows
from lmforge.train.config import build_dataclass
from lmforge.train.mlm import BertRecipe, run_bert
from lmforge.train.objective import ObjectiveConfig

FLAGS = {"data": "data", "out": "out_dir", "seq_len": "seq_len", "batch_size": "batch_size", "dim": "dim",
         "layers": "n_layers", "heads": "n_heads", "decoder_time": "decoder_time_s", "time_cap": "time_cap_factor",
         "lr": "lr", "eval_every_s": "eval_every_s", "eval_tokens": "eval_tokens", "seed": "seed", "threads": "threads"}
PROMPTS = ("def ", "import os\n", "class ")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare", help="train a decoder, an LSTM and a T5 at matched size and FLOPs (and BERT) and report why transformers",
        description="Trains the decoder for --decoder-time seconds; its training FLOPs become the budget of an LSTM "
                    "(truncated BPTT) and a T5 (prefix LM) of about the same parameter count, each capped at "
                    "--time-cap times that time. Then measures validation loss against FLOPs and time, tokens/s, loss "
                    "per position along the context, a long-range recall probe, decode cost per token against "
                    "context length and samples, and writes OUT/report.md with PNG plots. BERT trains on its own "
                    "objective (masked LM, then a topic classifier) for --bert-time seconds. Recipe: the flags, "
                    "then KEY=VALUE overrides of CompareConfig (lmforge/train/compare.py).")
    parser.add_argument("--data", required=True, help="a prepared data folder (`lmforge prepare`), e.g. builtin:stdlib "
                                                      "with a char tokenizer")
    parser.add_argument("--out", help="output folder (default runs/compare)")
    parser.add_argument("--seq-len", type=int, help="context of every model in tokens (default 256)")
    parser.add_argument("--batch-size", type=int, help="windows per step, every model (default 16)")
    parser.add_argument("--dim", type=int, help="decoder width, also T5's d_model (default 128)")
    parser.add_argument("--layers", type=int, help="decoder layers (default 4; T5 gets 2 + 2, the LSTM 2)")
    parser.add_argument("--heads", type=int, help="attention heads (default 4)")
    parser.add_argument("--decoder-time", type=float, help="decoder training seconds; sets the FLOP budget (default 420)")
    parser.add_argument("--time-cap", type=float, help="LSTM/T5 stop at this many times --decoder-time even short of "
                                                       "the FLOP budget (default 1.5)")
    parser.add_argument("--bert-time", type=float, default=180.0,
                        help="BERT masked-LM seconds, then as many again for its classifier; 0 skips BERT (default 180)")
    parser.add_argument("--lr", type=float, help="peak learning rate of every model (default 3e-3)")
    parser.add_argument("--eval-every-s", type=float, help="validation every this many training seconds (default 60)")
    parser.add_argument("--eval-tokens", type=int, help="validation tokens, the same windows for all (default 32768)")
    parser.add_argument("--seed", type=int, help="seed of weights and data order (default 0)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: PyTorch's choice)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides, e.g. lstm_layers=3")
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> CompareConfig:
    return build_dataclass(CompareConfig, recipe_data(args, FLAGS), "")


def run(args: argparse.Namespace) -> int:
    if args.bert_time < 0:
        raise ValueError("--bert-time must be >= 0")
    config = config_from_args(args)
    out = Path(config.out_dir)
    with ProgressDisplay(enabled=not args.quiet) as display:
        runs = train_families(config, display)
        data = TokenData.open(config.data)
        tokenizer = Tokenizer.from_folder(data.tokenizer_folder)
        windows = val_windows(data, config)
        display.message("measuring: per-position loss, recall probe, decode cost, samples")
        key_pool = sorted(set(windows.flatten().tolist()) - {data.boundary_id})
        T = config.seq_len
        distances = sorted({d for d in (8, 32, T // 4, T // 2, T - 2 * 8 - 1) if 0 < d <= T - 2 * 8 - 1})
        contexts = sorted({c for c in (16, 64, T // 2, T - 16) if 0 < c <= T - 16})
        summary, curves, recall, decode, samples = {}, {}, {}, {}, {}
        for family, family_run in runs.items():
            final = [r for r in family_run.records if "val_loss_second_half" in r][-1]
            summary[family] = {"parameters": family_run.parameters, "steps": family_run.steps, "flops": family_run.flops,
                               "train_seconds": family_run.train_seconds,
                               "flops_share": family_run.flops / runs["decoder"].flops,
                               "tokens_per_s": family_run.steps * config.batch_size * T / max(family_run.train_seconds, 1e-9),
                               "val_loss": final["val_loss"], "val_loss_second_half": final["val_loss_second_half"]}
            curves[family] = per_position_loss(family_run.model, windows)
            recall[family] = recall_probe(family_run.model, windows, distances, key_pool, seed=config.seed)
            decode[family] = decode_cost(family_run.model, contexts, vocab=data.vocab_size)
            samples[family] = [(p, sample(family_run.model, tokenizer, p, 120)) for p in PROMPTS]
        extra = ""
        if args.bert_time > 0:
            budget = dict(time_budget_s=args.bert_time, batch_size=config.batch_size, threads=config.threads,
                          seed=config.seed)
            shape = BertConfig(hidden_size=config.dim, num_hidden_layers=config.n_layers, num_attention_heads=config.n_heads,
                               intermediate_size=4 * config.dim, max_position_embeddings=T)
            bert = run_bert(BertRecipe(data=config.data, out_dir=str(out / "bert"), model=shape, seq_len=T,
                                       pretrain=ObjectiveConfig(**budget), classifier=ObjectiveConfig(**budget)), display)
            extra = ("## BERT on its own objective\n\nThe encoder cannot generate left to right, so it is not in the "
                     f"tables above. Masked-LM pretraining for {args.bert_time:.0f} s ({bert['parameters']:,} parameters): "
                     f"masked-token loss {bert['pretrain']['val_masked_loss']:.4f} on validation windows; then a topic "
                     f"classifier on its encoder: held-out accuracy {bert['heldout_accuracy']:.1%} over "
                     f"{bert['heldout_items']} sentences (4 classes, chance 25%).")
        report = write_report(out, summary, {f: r.records for f, r in runs.items()}, curves, recall, decode, samples, extra)
        write_text_atomically(out / "summary.json", json.dumps(
            {"config": config.to_dict(), "summary": summary, "recall": recall, "decode_ms_per_token": decode,
             "per_position_loss": {f: [None if c != c else round(float(c), 4) for c in curve] for f, curve in curves.items()}},
            indent=2) + "\n")
        display.message(f"report: {report}")
    print(report)
    return 0
