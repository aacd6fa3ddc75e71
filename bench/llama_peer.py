"""llama.cpp (llama-cpp-python) as a benchmark peer: a guard for CPUs whose AMX path faults.

llama-cpp-python builds llama.cpp for the build machine's CPU. On a virtual machine that reports
AMX but whose kernel does not enable its registers, llama.cpp's AMX "extra buffer type" dies with
an illegal instruction on the first matrix product. `extra_buffers_work` finds out in a throwaway
process; `disable_extra_buffers` then makes every model load without extra buffer types (AMX and
weight repacking), llama.cpp's own plain CPU path.
"""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys, llama_cpp
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=64, n_threads=1, verbose=False)
for count, _ in enumerate(llm.generate(llm.tokenize(b"Hello there"), temp=0.0), start=1):
    if count == 2:
        break
"""


def extra_buffers_work(model_path: str, timeout: float = 600) -> bool:
    """True unless llama.cpp's default load crashes this CPU (killed by a signal)."""
    done = subprocess.run([sys.executable, "-c", PROBE, model_path], capture_output=True, timeout=timeout)
    return done.returncode >= 0


def disable_extra_buffers() -> None:
    """Load models in this process without llama.cpp's extra buffer types (AMX, repacking)."""
    import llama_cpp.llama_cpp as low

    default = low.llama_model_default_params

    def params():
        chosen = default()
        chosen.use_extra_bufts = False
        return chosen

    low.llama_model_default_params = params


def server_command(arguments: list[str], extra_buffers: bool) -> list[str]:
    """`python -m llama_cpp.server ARGUMENTS`, without extra buffer types when they crash."""
    if extra_buffers:
        return [sys.executable, "-m", "llama_cpp.server", *arguments]
    script = ("import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); import llama_peer; "
              "llama_peer.disable_extra_buffers(); sys.argv[0] = 'llama_cpp.server'; "
              "runpy.run_module('llama_cpp.server', run_name='__main__', alter_sys=False)")
    from pathlib import Path

    return [sys.executable, "-c", script, str(Path(__file__).resolve().parent), *arguments]
