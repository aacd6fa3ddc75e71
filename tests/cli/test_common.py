"""Shared CLI flags: `--model` takes a Hugging Face repository id served from the hub cache."""

from __future__ import annotations

import os
import subprocess
import sys

from lmforge.cli.main import main

REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_generate_with_a_repo_id_from_the_hub_cache(hub_cache, tiny_hf_folder):
    hub_cache.add(REPO, {path.name: path for path in tiny_hf_folder.iterdir() if path.is_file()})
    # A separate process, as a user runs it: the cache is found through HF_HUB_CACHE, offline.
    result = subprocess.run([sys.executable, "-m", "lmforge.cli", "generate", "--model", REPO, "--prompt", "Hello",
                             "--max-new-tokens", "4", "--threads", "1"],
                            capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Hello") and len(result.stdout.strip()) > len("Hello")


def test_a_repo_id_that_is_not_cached_is_one_line(hub_cache, capsys):
    assert main(["generate", "--model", "someone/absent", "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "'someone/absent' is not in the Hugging Face cache" in err and "hf download someone/absent" in err


def test_serve_names_a_hub_model_by_its_repo_id():
    from lmforge.cli.main import build_parser
    from lmforge.cli.serve import model_id

    parser = build_parser()
    assert model_id(parser.parse_args(["serve", "--model", REPO])) == REPO
    assert model_id(parser.parse_args(["serve", "--model", "SmolLM2-135M-Instruct"])) == "smollm2-135m-instruct"
    assert model_id(parser.parse_args(["serve", "--model", "/tmp/some/model.gguf"])) == "model.gguf"
    assert model_id(parser.parse_args(["serve", "--model", REPO, "--model-name", "mine"])) == "mine"


def test_compile_flag_maps_to_the_engine_setting():
    from lmforge.cli.common import compile_choice

    assert compile_choice("max", False) == "max" and compile_choice("on", False) is True
    assert compile_choice("off", True) is False
    assert compile_choice("auto", True) is True and compile_choice("auto", False) is False
