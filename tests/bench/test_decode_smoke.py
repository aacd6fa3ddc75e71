"""bench/decode.py on tiny token counts: every peer path runs once, a missing peer is printed as
missing, and prompts have exactly the requested length or the bench refuses."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "decode.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_decode", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prompts_have_the_requested_length_or_are_refused(smollm):
    bench = load_bench()
    tokenizer = smollm[1]
    prompts = bench.exact_prompts(tokenizer.encode, 2048, 8)
    assert [len(p) for p in prompts] == [2048] * 8 and len({tuple(p[:16]) for p in prompts}) == 8
    with pytest.raises(ValueError, match="prompts of 5000000 tokens need"):
        bench.exact_prompts(tokenizer.encode, 5_000_000, 1)


def test_every_peer_path_runs_once():
    command = [sys.executable, str(BENCH), "--threads", "1", "--modes", "int4", "--compile", "off",
               "--contexts", "12", "--batches", "1,2", "--prefill-tokens", "16", "--new-tokens", "2",
               "--repeats", "1", "--spec-tokens", "8", "--num-draft", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in done.stdout.splitlines() if line.startswith("| ")}
    for name in ("lmforge int4 eager", "transformers fp32"):
        cells = rows[name].strip("| ").split(" | ")
        loaded, after = (float(c) for c in cells[1].split(" / "))  # resident MB after loading / after the run
        assert 0 < loaded <= after * 1.1, rows[name]
        assert all(float(c) > 0 for c in cells[2:6]), rows[name]  # prefill, decode b1 and b2, bytes
    llama = next(line for name, line in rows.items() if name.startswith("llama.cpp Q4_1"))
    if importlib.util.find_spec("llama_cpp") is None:
        assert "missing: llama_cpp is not installed" in llama
    else:  # batch 2 is not something llama-cpp-python does: that cell stays empty
        cells = llama.strip("| ").split(" | ")
        assert float(cells[2]) > 0 and float(cells[3]) > 0 and cells[4] == "-", llama
    assert "prefill 16 tokens batch 1, fp32" not in done.stdout  # no lmforge fp32 row was asked for
    speculative = [line for line in done.stdout.splitlines() if line.startswith("| Copy this text")]
    assert speculative and speculative[0].rstrip(" |").endswith("yes")


def test_an_unknown_compile_setting_is_refused_before_any_work():
    done = subprocess.run([sys.executable, str(BENCH), "--compile", "on,fast"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 2 and "--compile takes off, on and max, got fast" in done.stderr
