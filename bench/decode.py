"""Prefill and decode throughput: lmforge vs Hugging Face transformers (and llama.cpp when installed).

All peers load the same embedded GGUF file and run in the same process, one after another, on
the same prompts. Each figure is the median of several repeats. Decode tokens/s excludes the
prefill: decode_time = time(prefill + N tokens) - time(prefill + 1 token).

    python bench/decode.py [--new-tokens 64] [--prompt-tokens 128] [--repeats 3] [--dtypes float32,bfloat16]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmforge.core.device import parse_dtype  # noqa: E402
from lmforge.infer import Engine, SamplingParams  # noqa: E402
from lmforge.io.gguf import load_gguf_model  # noqa: E402
from lmforge.io.registry import named_model_path  # noqa: E402

TEXT = (
    "The history of computing is a story of ideas building upon one another. Early mechanical calculators "
    "gave way to electronic machines, and those machines grew smaller, faster and cheaper with every decade. "
    "Programming languages evolved from raw machine code to assembly, then to high-level languages that let "
    "people express algorithms in terms closer to mathematics and natural language. Networks connected the "
    "machines, and the web connected the people. Today, language models trained on vast collections of text "
    "can answer questions, write programs and translate between languages, and they run on hardware ranging "
    "from data-centre accelerators to ordinary laptops. Understanding how they work, from tokenization to "
    "attention to sampling, is now part of the education of every engineer who builds software systems. "
) * 4


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def memory_bandwidth_gbs(repeats: int = 5) -> float:
    """Read bandwidth of this machine: summing a 512 MiB tensor (reads every byte once)."""
    data = torch.ones(128 * 1024 * 1024, dtype=torch.float32)
    data.sum()
    t = median_time(lambda: data.sum(), repeats)
    return data.numel() * 4 / t / 1e9


def prompts_of(tokenizer_encode, n_tokens: int, batch: int) -> list[list[int]]:
    ids = tokenizer_encode(TEXT)
    return [ids[i * 7: i * 7 + n_tokens] for i in range(batch)]  # same length, different text


def bench_lmforge(model, tokenizer, prompts, new_tokens, repeats):
    engine = Engine(model, tokenizer, max_batch_size=len(prompts))
    one = SamplingParams(max_new_tokens=1, ignore_eos=True)
    many = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    engine.generate(prompts, many)  # warm-up (allocates the cache, warms kernels)
    t_prefill = median_time(lambda: engine.generate(prompts, one), repeats)
    t_full = median_time(lambda: engine.generate(prompts, many), repeats)
    return t_prefill, t_full


def bench_transformers(hf_model, prompts, new_tokens, repeats):
    ids = torch.tensor(prompts)
    mask = torch.ones_like(ids)

    def run(n):
        with torch.no_grad():
            hf_model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=2)

    run(new_tokens)
    return median_time(lambda: run(1), repeats), median_time(lambda: run(new_tokens), repeats)


def bench_llama_cpp(path, prompts, new_tokens, repeats):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=1024, n_threads=os.cpu_count(), verbose=False)

    def run(n):
        llm.reset()
        for _ in llm.generate(prompts[0], temp=0.0, reset=True):
            n -= 1
            if n == 0:
                break

    run(new_tokens)
    return median_time(lambda: run(1), repeats), median_time(lambda: run(new_tokens), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--threads", type=int, default=None,
                        help="PyTorch CPU threads for every peer (1 is steadier when other jobs share the cores)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    path = named_model_path("smollm2-135m-instruct")
    bandwidth = memory_bandwidth_gbs()
    print(f"model: {path.name}; torch {torch.__version__}; threads {torch.get_num_threads()}; "
          f"measured read bandwidth {bandwidth:.1f} GB/s")
    rows = []
    for dtype_name in args.dtypes.split(","):
        dtype = parse_dtype(dtype_name)
        model, tokenizer = load_gguf_model(path, dtype=dtype)
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype).eval()
        for batch in (int(b) for b in args.batches.split(",")):
            prompts = prompts_of(tokenizer.encode, args.prompt_tokens, batch)
            peers = {"lmforge": lambda: bench_lmforge(model, tokenizer, prompts, args.new_tokens, args.repeats),
                     "transformers": lambda: bench_transformers(hf, prompts, args.new_tokens, args.repeats)}
            try:
                import llama_cpp  # noqa: F401

                if batch == 1 and dtype_name in ("float32", "fp32"):
                    peers["llama.cpp (Q4_1)"] = lambda: bench_llama_cpp(path, [tokenizer.decode(p) for p in prompts],
                                                                         args.new_tokens, args.repeats)
            except ImportError:
                pass
            for name, fn in peers.items():
                t_prefill, t_full = fn()
                prefill_tps = batch * args.prompt_tokens / t_prefill
                decode_tps = batch * (args.new_tokens - 1) / max(t_full - t_prefill, 1e-9)
                rows.append((dtype_name, batch, name, prefill_tps, decode_tps, weight_bytes))
                print(f"  {dtype_name:9s} batch {batch}: {name:17s} prefill {prefill_tps:8.1f} tok/s   decode {decode_tps:7.1f} tok/s",
                      flush=True)
        del hf
    print()
    print("| dtype | batch | engine | prefill tok/s | decode tok/s | decode vs transformers | weight-read GB/s (% of measured) |")
    print("|---|---|---|---|---|---|---|")
    reference = {(d, b): dec for d, b, n, _, dec, _ in rows if n == "transformers"}
    for d, b, n, pre, dec, wbytes in rows:
        ratio = dec / reference[(d, b)]
        # One decode step reads every weight once, whatever the batch size.
        achieved = dec / b * wbytes / 1e9 if n != "llama.cpp (Q4_1)" else float("nan")
        print(f"| {d} | {b} | {n} | {pre:.1f} | {dec:.1f} | {ratio:.2f}x | {achieved:.1f} ({100 * achieved / bandwidth:.0f}%) |")


if __name__ == "__main__":
    main()
