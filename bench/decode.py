"""Prefill and decode throughput on the embedded GGUF: lmforge in every mode, llama.cpp and transformers, one run.

Every peer reads the same file (SmolLM2-135M-Instruct Q4_1) and the same prompts, each exactly the
requested number of tokens, cut from Python's language reference (`pydoc_data.topics`, present on
every machine); a length the text cannot supply is refused, never silently shortened. Each
configuration runs in its own child process, one after another, so that resident memory is its
own and no peer's threads linger while another is timed. Figures are medians of --repeats runs.

    python bench/decode.py                    # the whole table (tens of minutes on 2 cores)
    python bench/decode.py --threads 2 --modes int4 --compile max --contexts 128 --batches 1,8

Measured per configuration: prefill tokens/s of a --prefill-tokens prompt (batch 1 and 8), decode
tokens/s at each context of --contexts (the prompt length before decoding) and batch of --batches
(aggregate over the batch; the prefill is not timed), resident memory after loading and after the run, the bytes one
decode step reads (weights plus the KV cache at that context) and the ceiling they imply at the
machine's measured memory bandwidth. lmforge modes: fp32 and bf16 (dequantized weights), int8
(every matrix requantized per channel), int4 (the file's Q4_1 blocks as they are, the Q8_0
embedding as two exact 4-bit planes), each eager, under torch.compile and with `--compile max`. A peer that is not
installed is printed as missing. Then prompt-lookup speculative decoding against plain decoding.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # llama_peer

LMFORGE_MODES = {  # mode -> (dtype, quant)
    "fp32": ("float32", "none"),
    "bf16": ("bfloat16", "none"),
    "int8": ("float32", "int8"),
    "int4": ("float32", "auto"),
}
PEERS = ("lmforge", "llama.cpp", "transformers")
SPECULATION_PROMPTS = [  # chat requests whose answers repeat their input, and one that does not
    "Add type hints to this Python function and return the whole function:\n\n"
    "def moving_average(values, window):\n    if window <= 0:\n        raise ValueError('window must be positive')\n"
    "    sums = []\n    total = 0\n    for index, value in enumerate(values):\n        total += value\n"
    "        if index >= window:\n            total -= values[index - window]\n"
    "        if index >= window - 1:\n            sums.append(total / window)\n    return sums",
    "Copy this text exactly, then say how many sentences it has: The lighthouse stood on the cliff for a "
    "hundred years. Every night its lamp turned slowly over the dark water. Sailors knew its light and trusted it.",
    "Write a short poem about the sea.",
]


# --------------------------------------------------------------------------------------------
# Prompts of exact lengths
# --------------------------------------------------------------------------------------------
def source_text() -> str:
    """Python's language reference as shown by help(): about 200k tokens of English prose."""
    from pydoc_data import topics

    return "\n\n".join(topics.topics[key] for key in sorted(topics.topics))


_SOURCE_IDS: dict[int, list[int]] = {}  # the source text encoded, per tokenizer


def exact_prompts(encode, length: int, batch: int) -> list[list[int]]:
    """`batch` different prompts of exactly `length` tokens, or a ValueError saying why not."""
    owner = id(getattr(encode, "__self__", encode))
    if owner not in _SOURCE_IDS:
        _SOURCE_IDS[owner] = encode(source_text())
    ids = _SOURCE_IDS[owner]
    stride = max(1, min(length, (len(ids) - length) // max(batch, 1)))
    if len(ids) < length + stride * (batch - 1):
        raise ValueError(f"the prompt text has {len(ids)} tokens; {batch} prompts of {length} tokens need "
                         f"{length + stride * (batch - 1)}: choose shorter prompts or a smaller batch")
    prompts = [ids[i * stride:i * stride + length] for i in range(batch)]
    assert all(len(p) == length for p in prompts)
    return prompts


# --------------------------------------------------------------------------------------------
# Measurements (each runs in a child process)
# --------------------------------------------------------------------------------------------
_CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter  # set per job: wall time, or CPU time of the whole process (all threads)


def resident_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times)


def kv_bytes_per_slot(config, element: int) -> int:
    return 2 * config.n_layers * config.kv_heads * config.head_size * element


def work_lmforge(job: dict) -> dict:
    import torch

    from lmforge.core.device import parse_dtype
    from lmforge.infer import Engine, SamplingParams
    from lmforge.io.registry import load_model
    from lmforge.model.quant import QuantEmbedding, weight_bytes

    dtype, quant = LMFORGE_MODES[job["mode"]]
    model, tokenizer = load_model(job["path"], dtype=parse_dtype(dtype), quant=quant)
    result = {"rss_mb": resident_mb(), "weights_mb": weight_bytes(model) / 2**20}
    lookup = model.embedding
    table = weight_bytes(lookup) if isinstance(lookup, QuantEmbedding) and lookup.weight is not model.lm_head.weight else 0
    result["step_weight_bytes"] = weight_bytes(model) - table  # the lookup table reads one row per token
    result["kv_bytes_per_slot"] = kv_bytes_per_slot(model.config, torch.finfo(model.activation_dtype).bits // 8)
    engine = Engine(model, tokenizer, max_batch_size=max(job["batches"] + job["prefill_batches"]), compile=job["compile"])
    one = SamplingParams(max_new_tokens=1, ignore_eos=True)

    def prefill(prompts):
        engine.admit([engine.prepare(p, one) for p in prompts])
        for seq in list(engine.active):
            engine.release(seq)

    result["prefill"] = {}
    for batch in job["prefill_batches"]:
        prompts = exact_prompts(tokenizer.encode, job["prefill_tokens"], batch)
        prefill(prompts)  # warm-up
        result["prefill"][str(batch)] = batch * job["prefill_tokens"] / median_time(lambda: prefill(prompts), job["repeats"])

    def decode(prompts, steps: int) -> float:
        params = SamplingParams(max_new_tokens=steps + 1, ignore_eos=True)
        engine.admit([engine.prepare(p, params) for p in prompts])
        start = clock()
        for _ in range(steps):
            engine.step()
        elapsed = clock() - start
        for seq in list(engine.active):
            engine.release(seq)
        return elapsed

    result["decode"] = {}
    for context in job["contexts"]:
        for batch in job["batches"]:
            prompts = exact_prompts(tokenizer.encode, context, batch)
            decode(prompts, 2 if not job["compile"] else 4)  # warm-up (and compilation)
            seconds = statistics.median(decode(prompts, job["new_tokens"]) for _ in range(job["repeats"]))
            result["decode"][f"{context}x{batch}"] = batch * job["new_tokens"] / seconds
    result["rss_after_mb"] = resident_mb()
    return result


def work_transformers(job: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from lmforge.io.gguf import describe_gguf

    path = Path(job["path"])
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[job["mode"]]
    config, tokenizer = describe_gguf(path)  # the same token ids as every other peer
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype).eval()
    params = {p.data_ptr(): p.numel() * p.element_size() for p in model.parameters()}
    result = {"rss_mb": resident_mb(), "weights_mb": sum(params.values()) / 2**20,
              "step_weight_bytes": sum(params.values()),
              "kv_bytes_per_slot": kv_bytes_per_slot(config, torch.finfo(dtype).bits // 8)}

    @torch.inference_mode()
    def prefill(ids):
        return model(ids, use_cache=True)

    result["prefill"] = {}
    for batch in job["prefill_batches"]:
        ids = torch.tensor(exact_prompts(tokenizer.encode, job["prefill_tokens"], batch))
        prefill(ids)
        result["prefill"][str(batch)] = batch * job["prefill_tokens"] / median_time(lambda: prefill(ids), job["repeats"])

    @torch.inference_mode()
    def decode(ids, steps: int) -> float:  # greedy, one token per forward call over the model's own cache
        out = model(ids, use_cache=True)
        past, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        start = clock()
        for _ in range(steps):
            out = model(token, past_key_values=past, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        return clock() - start

    result["decode"] = {}
    for context in job["contexts"]:
        for batch in job["batches"]:
            ids = torch.tensor(exact_prompts(tokenizer.encode, context, batch))
            decode(ids, 2)
            seconds = statistics.median(decode(ids, job["new_tokens"]) for _ in range(job["repeats"]))
            result["decode"][f"{context}x{batch}"] = batch * job["new_tokens"] / seconds
    result["rss_after_mb"] = resident_mb()
    return result


def work_llama_cpp(job: dict) -> dict:
    import llama_cpp  # ImportError -> the peer is reported missing

    from lmforge.io.gguf import describe_gguf

    path = Path(job["path"])
    if not job["extra_buffers"]:
        import llama_peer

        llama_peer.disable_extra_buffers()
    config, tokenizer = describe_gguf(path)
    threads = job["threads"] or os.cpu_count()
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=max([*job["contexts"], job["prefill_tokens"]]) + job["new_tokens"] + 8,
                          n_threads=threads, n_threads_batch=threads, n_batch=512, verbose=False)
    result = {"rss_mb": resident_mb(), "weights_mb": path.stat().st_size / 2**20,
              "step_weight_bytes": path.stat().st_size, "kv_bytes_per_slot": kv_bytes_per_slot(config, 2),
              "batch_note": "llama-cpp-python decodes one sequence per call"}

    def run(tokens: list[int], steps: int) -> tuple[float, float]:
        """(seconds to the first token, seconds for the `steps` tokens after it)."""
        llm.reset()  # no reuse of the previous prompt's cache
        start = clock()
        first = None
        for count, _ in enumerate(llm.generate(tokens, temp=0.0, reset=True), start=1):
            if first is None:
                first = clock()
            if count == steps + 1:
                break
        return first - start, clock() - first

    result["prefill"] = {}
    if 1 in job["prefill_batches"]:
        tokens = exact_prompts(tokenizer.encode, job["prefill_tokens"], 1)[0]
        run(tokens, 1)
        result["prefill"]["1"] = job["prefill_tokens"] / statistics.median(run(tokens, 0)[0] for _ in range(job["repeats"]))
    result["decode"] = {}
    for context in job["contexts"]:
        if 1 not in job["batches"]:
            continue
        tokens = exact_prompts(tokenizer.encode, context, 1)[0]
        run(tokens, 2)
        seconds = statistics.median(run(tokens, job["new_tokens"])[1] for _ in range(job["repeats"]))
        result["decode"][f"{context}x1"] = job["new_tokens"] / seconds
    result["rss_after_mb"] = resident_mb()
    return result


def work_speculative(job: dict) -> dict:
    """Plain greedy against prompt-lookup drafting on chat prompts: tok/s, acceptance, same output."""
    from lmforge.core.device import parse_dtype
    from lmforge.infer import Engine, SamplingParams
    from lmforge.infer.speculative import PromptLookup
    from lmforge.io.registry import load_model

    dtype, quant = LMFORGE_MODES[job["mode"]]
    model, tokenizer = load_model(job["path"], dtype=parse_dtype(dtype), quant=quant)
    plain = Engine(model, tokenizer, max_batch_size=1, compile=job["compile"])
    drafted = Engine(model, tokenizer, max_batch_size=1, compile=job["compile"],
                     speculative=PromptLookup(num_draft=job["num_draft"]))
    params = SamplingParams(max_new_tokens=job["spec_tokens"])
    rows = []
    for text in SPECULATION_PROMPTS:
        prompt = plain.chat_prompt([{"role": "user", "content": text}])
        for engine in (plain, drafted):
            engine.generate([prompt], SamplingParams(max_new_tokens=4))  # warm-up
        before = drafted.speculation.__dict__.copy()
        times = {}
        outputs = {}
        for name, engine in (("plain", plain), ("prompt-lookup", drafted)):
            start = clock()
            outputs[name] = engine.generate([prompt], params)[0]
            times[name] = clock() - start
        stats = {k: drafted.speculation.__dict__[k] - before[k] for k in before}
        tokens = len(outputs["plain"].token_ids)
        rows.append({"prompt": text.split("\n")[0][:48], "tokens": tokens,
                     "plain": tokens / times["plain"], "drafted": tokens / times["prompt-lookup"],
                     "acceptance": stats["accepted"] / stats["proposed"] if stats["proposed"] else 0.0,
                     "per_call": stats["emitted"] / stats["verify_calls"] if stats["verify_calls"] else 0.0,
                     "identical": outputs["plain"].token_ids == outputs["prompt-lookup"].token_ids})
    return {"rows": rows}


WORKERS = {"lmforge": work_lmforge, "transformers": work_transformers, "llama.cpp": work_llama_cpp,
           "speculative": work_speculative}


def run_job(job: dict) -> dict:
    """Run one configuration in this process (the child side)."""
    import torch

    global clock
    clock = _CLOCK[job.get("clock", "wall")]
    if job["threads"]:
        torch.set_num_threads(job["threads"])
    try:
        return WORKERS[job["peer"]](job)
    except ImportError as error:
        return {"missing": f"{error.name or error} is not installed (pip install -e '.[bench]')"}


def spawn(job: dict, timeout: float) -> dict:
    """Run one configuration in a fresh Python process; its last stdout line is the JSON result."""
    command = [sys.executable, str(Path(__file__).resolve()), "--job", json.dumps(job)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {done.returncode}: {tail[:200]}"}
    return json.loads(lines[-1])


def memory_bandwidth_gbs(threads: int | None) -> float:
    """Read bandwidth: summing a 1 GiB tensor, larger than any cache (reads every byte once)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    data = torch.ones(256 * 2**20, dtype=torch.float32)
    data.sum()
    seconds = median_time(lambda: data.sum(), 5)
    return data.numel() * 4 / seconds / 1e9


# --------------------------------------------------------------------------------------------
# The run and its tables
# --------------------------------------------------------------------------------------------
def configurations(args) -> list[dict]:
    base = {"threads": args.threads, "clock": args.clock, "repeats": args.repeats, "new_tokens": args.new_tokens,
            "prefill_tokens": args.prefill_tokens, "prefill_batches": args.prefill_batches,
            "contexts": args.contexts, "batches": args.batches, "path": str(args.path)}
    jobs = []
    for peer in args.peers:
        if peer == "lmforge":
            for mode in args.modes:
                for compiled in args.compile:
                    jobs.append({**base, "peer": peer, "mode": mode, "compile": compiled})
        elif peer == "transformers":
            jobs += [{**base, "peer": peer, "mode": mode, "compile": False}
                     for mode in [m for m in ("fp32", "bf16") if m in args.modes] or ["fp32"]]
        else:
            jobs.append({**base, "peer": peer, "mode": "Q4_1", "compile": False, "extra_buffers": True})
    return jobs


def label(job: dict) -> str:
    compiled = {True: " compiled", "max": " compiled max"}.get(job["compile"], " eager" if job["peer"] == "lmforge" else "")
    plain = " (no AMX/repack: they fault on this CPU)" if job.get("extra_buffers") is False else ""
    return f"{job['peer']} {job['mode']}{compiled}{plain}"


def cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def report(args, results: list[tuple[dict, dict]], bandwidth: float) -> list[str]:
    keys = [f"{c}x{b}" for c in args.contexts for b in args.batches]
    head = (["configuration", "resident MB loaded / after"] + [f"prefill {args.prefill_tokens} b{b}" for b in args.prefill_batches]
            + [f"decode ctx{k.split('x')[0]} b{k.split('x')[1]}" for k in keys]
            + [f"MB read/token ctx{c}" for c in args.contexts] + [f"ceiling ctx{c} b1" for c in args.contexts])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for job, result in results:
        if "missing" in result or "error" in result:
            reason = result.get("missing") or result.get("error")
            lines.append(f"| {label(job)} | {'missing' if 'missing' in result else 'failed'}: {reason} |"
                         + " |" * (len(head) - 2))
            continue
        step = [result["step_weight_bytes"] + result["kv_bytes_per_slot"] * c for c in args.contexts]
        after = result.get("rss_after_mb")  # compiled graphs and the KV cache come on top of the weights
        row = ([label(job), f"{result['rss_mb']:.0f} / {after:.0f}" if after else f"{result['rss_mb']:.0f}"]
               + [cell(result["prefill"].get(str(b))) for b in args.prefill_batches]
               + [cell(result["decode"].get(k)) for k in keys]
               + [f"{s / 2**20:.0f}" for s in step] + [f"{bandwidth * 1e9 / s:.0f}" for s in step])
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append(f"decode figures: tokens/s summed over the batch; ceiling: measured read bandwidth ({bandwidth:.1f} GB/s) "
                 "/ bytes read per decode step (weights + KV cache at that context), for batch 1; a model that fits "
                 "in the CPU's last-level cache can beat it. llama-cpp-python decodes one sequence per call, so its "
                 "batch-8 cells stay empty.")
    lines += [""] + verdicts(args, results)
    return lines


def verdicts(args, results) -> list[str]:
    """The acceptance ratios: lmforge against llama.cpp (decode) and transformers (prefill)."""
    ok = [(j, r) for j, r in results if "decode" in r]

    def best(peer: str, key: str, modes=None):
        found = [(r["decode"][key], label(j)) for j, r in ok
                 if j["peer"] == peer and key in r["decode"] and (modes is None or j["mode"] in modes)]
        return max(found) if found else None

    lines = []
    llama = {c: best("llama.cpp", f"{c}x1") for c in args.contexts}
    for context in args.contexts:
        ours, theirs = best("lmforge", f"{context}x1"), llama[context]
        if ours and theirs:
            lines.append(f"batch-1 decode at context {context}: {ours[1]} {ours[0]:.1f} tok/s vs llama.cpp {theirs[0]:.1f} "
                         f"= {ours[0] / theirs[0]:.2f}x (target >= 1)")
        wide = best("lmforge", f"{context}x{max(args.batches)}")
        if wide and theirs and max(args.batches) > 1:
            lines.append(f"batch-{max(args.batches)} aggregate at context {context}: {wide[1]} {wide[0]:.1f} tok/s = "
                         f"{wide[0] / theirs[0]:.2f}x llama.cpp batch 1 (target >= 3)")
    if not any(llama.values()):
        lines.append("llama.cpp: missing or failed, no decode ratio (pip install -e '.[bench]')")
    for mode in ("fp32", "bf16"):
        for batch in args.prefill_batches:
            ours = [r["prefill"][str(batch)] for j, r in ok if j["peer"] == "lmforge" and j["mode"] == mode
                    and str(batch) in r["prefill"]]
            theirs = [r["prefill"][str(batch)] for j, r in ok if j["peer"] == "transformers" and j["mode"] == mode
                      and str(batch) in r["prefill"]]
            if ours and theirs:
                lines.append(f"prefill {args.prefill_tokens} tokens batch {batch}, {mode}: lmforge {max(ours):.0f} tok/s vs "
                             f"transformers {theirs[0]:.0f} = {max(ours) / theirs[0]:.2f}x (target >= 1)")
    return lines


def speculation_report(result: dict, job: dict) -> list[str]:
    if "rows" not in result:
        return [f"speculative decoding: {result.get('missing') or result.get('error')}"]
    lines = [f"Prompt-lookup speculative decoding ({label(job)}, batch 1, greedy, {job['num_draft']} draft tokens):", "",
             "| prompt | tokens | plain tok/s | prompt-lookup tok/s | speedup | acceptance | tokens per verify | same output |",
             "|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        lines.append(f"| {row['prompt']} | {row['tokens']} | {row['plain']:.1f} | {row['drafted']:.1f} | "
                     f"{row['drafted'] / row['plain']:.2f}x | {row['acceptance']:.0%} | {row['per_call']:.2f} | "
                     f"{'yes' if row['identical'] else 'NO'} |")
    return lines


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for every peer (default: PyTorch's and llama.cpp's own choice, all cores)")
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset of " + ", ".join(PEERS))
    parser.add_argument("--modes", default=",".join(LMFORGE_MODES), help="lmforge modes (and transformers dtypes)")
    parser.add_argument("--compile", default="off,on,max",
                        help="lmforge decode steps to measure, comma-separated: off (eager), on (torch.compile), max "
                             "(weights frozen into the graphs, inductor's int4 kernels; `--compile max`) (default all)")
    parser.add_argument("--contexts", default="128,2048", help="prompt lengths before decoding (default 128,2048)")
    parser.add_argument("--batches", default="1,8", help="decode batch sizes (default 1,8)")
    parser.add_argument("--prefill-tokens", type=int, default=512, help="prefill prompt length (default 512)")
    parser.add_argument("--prefill-batches", default="1", help="prefill batch sizes (default 1)")
    parser.add_argument("--new-tokens", type=int, default=32, help="decode steps timed per run (default 32)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure; the median is shown (default 3)")
    parser.add_argument("--speculative", default="int4", help="lmforge mode for the speculative table, or 'off'")
    parser.add_argument("--spec-tokens", type=int, default=128, help="tokens per speculative answer (default 128)")
    parser.add_argument("--num-draft", type=int, default=4, help="draft tokens per step (default 4)")
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                        help="wall time, or the process's CPU time (steadier on a shared machine, but it hides "
                             "idle threads and counts every thread's work: use it with --threads 1)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds allowed per configuration")
    parser.add_argument("--job", default=None, help=argparse.SUPPRESS)  # internal: run one configuration
    args = parser.parse_args(argv)
    if args.job is not None:
        return args
    split = lambda text: [t.strip() for t in text.split(",") if t.strip()]  # noqa: E731
    args.peers = split(args.peers)
    args.modes = split(args.modes)
    choices = {"off": False, "on": True, "max": "max"}
    if bad := [c for c in split(args.compile) if c not in choices]:
        parser.error(f"--compile takes off, on and max, got {', '.join(bad)}")
    args.compile = [choices[c] for c in split(args.compile)]
    args.contexts = [int(c) for c in split(args.contexts)]
    args.batches = [int(b) for b in split(args.batches)]
    args.prefill_batches = [int(b) for b in split(args.prefill_batches)]
    unknown = [p for p in args.peers if p not in PEERS] + [m for m in args.modes if m not in LMFORGE_MODES]
    if unknown:
        parser.error(f"unknown peers or modes: {', '.join(unknown)}")
    from lmforge.io.registry import named_model_path

    args.path = named_model_path("smollm2-135m-instruct")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.job is not None:  # child process: one configuration, one JSON line
        print(json.dumps(run_job(json.loads(args.job))))
        return 0
    from lmforge.io.gguf import describe_gguf

    tokenizer = describe_gguf(args.path)[1]
    for length, batch in [(args.prefill_tokens, max(args.prefill_batches))] + [(c, max(args.batches)) for c in args.contexts]:
        exact_prompts(tokenizer.encode, length, batch)  # refuse impossible lengths before any work
    bandwidth = memory_bandwidth_gbs(args.threads)
    import torch

    print(f"model: {args.path.name}; torch {torch.__version__}; threads {args.threads or 'default'} of "
          f"{os.cpu_count()} CPUs; read bandwidth {bandwidth:.1f} GB/s", flush=True)
    results = []
    for job in configurations(args):
        if job["peer"] == "llama.cpp" and importlib.util.find_spec("llama_cpp") is not None:
            import llama_peer

            job["extra_buffers"] = llama_peer.extra_buffers_work(job["path"])
        started = time.perf_counter()
        result = spawn(job, args.timeout)
        results.append((job, result))
        status = result.get("missing") or result.get("error") or ", ".join(
            f"{k} {v:.1f}" for k, v in result["decode"].items())
        print(f"  {label(job)}: {status} ({time.perf_counter() - started:.0f} s)", flush=True)
    lines = ["", *report(args, results, bandwidth)]
    if args.speculative != "off":
        job = {"peer": "speculative", "mode": args.speculative, "compile": False, "threads": args.threads,
               "clock": args.clock,
               "path": str(args.path), "spec_tokens": args.spec_tokens, "num_draft": args.num_draft}
        lines += ["", *speculation_report(spawn(job, args.timeout), job)]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
