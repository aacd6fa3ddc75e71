"""Every verb's --help is complete: each flag has a help text, and each option with a default shows it."""

from __future__ import annotations

import argparse
import re

import pytest
import yaml

from lmforge.cli.main import build_parser, main

SKIPPED = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)


def _verb_parsers(parser: argparse.ArgumentParser, name: str = "lmforge"):
    """(name, parser) for the parser and every sub-command under it, depth first."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for verb, sub in action.choices.items():
                yield from _verb_parsers(sub, f"{name} {verb}")


def _help_text(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help line as --help prints it (defaults expanded by the parser's formatter)."""
    return parser._get_formatter()._expand_help(action) if action.help else ""


def _problems(parser: argparse.ArgumentParser) -> list[str]:
    problems = []
    # One of a required group of alternatives must be given: it has no default to show.
    required = {id(a) for group in parser._mutually_exclusive_groups if group.required for a in group._group_actions}
    for action in parser._actions:
        if isinstance(action, SKIPPED):
            continue
        name = "/".join(action.option_strings) or action.dest
        text = _help_text(parser, action)
        if not text.strip() or action.help == argparse.SUPPRESS:
            problems.append(f"{name}: no help text")
        elif (action.option_strings and not action.required and id(action) not in required and action.nargs != 0
              and "default" not in text):
            problems.append(f"{name}: the help does not say its default ({text!r})")
    return problems


def test_every_flag_of_every_verb_has_help_with_its_default():
    parsers = dict(_verb_parsers(build_parser()))
    for verb in ("generate", "chat", "finetune", "pretrain", "eval", "serve", "export", "prepare", "report",
                 "models", "tokenizer train"):
        assert f"lmforge {verb}" in parsers
    missing = {name: problems for name, parser in parsers.items() if (problems := _problems(parser))}
    assert not missing, missing


def test_the_check_catches_a_flag_without_help():
    parser = build_parser()
    verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    demo = verbs.add_parser("demo", help="a verb made up for this test")
    demo.add_argument("--quiet-flag", action="store_true")
    demo.add_argument("--size", type=int, default=3, help="a size")
    demo.add_argument("--limit", type=int, default=None, help="a limit")
    assert _problems(demo) == ["--quiet-flag: no help text", "--limit: the help does not say its default ('a limit')"]
    assert "a size (default 3)" in _help_text(demo, demo._actions[-2])


def _default_token(text: str) -> str:
    match = re.search(r"\(default:? ([^\s,;)]+)", text)
    assert match, text
    return match.group(1)


def _same(token: str, value) -> bool:
    if isinstance(value, tuple):
        return token == " ".join(value) or token == value[0] and len(value) == 1
    if isinstance(value, bool) or value is None:
        return False
    if isinstance(value, (int, float)):
        try:
            return float(token) == float(value)
        except ValueError:
            return False
    return token == str(value)


def test_finetune_help_defaults_are_the_recipe_defaults():
    """The defaults finetune's --help names are FinetuneConfig's own (flags default to None there)."""
    from lmforge.cli.finetune import _FLAGS
    from lmforge.train.finetune import FinetuneConfig

    defaults = FinetuneConfig().to_dict()
    parser = dict(_verb_parsers(build_parser()))["lmforge finetune"]
    actions = {action.dest: action for action in parser._actions}
    checked = 0
    for dest, key in _FLAGS.items():
        value = defaults
        for part in key.split("."):
            value = value[part]
        value = tuple(value) if isinstance(value, list) else value
        text = _help_text(parser, actions[dest])
        if actions[dest].nargs == 0:  # an on/off flag: off unless given
            continue
        if value is None:
            assert "default" in text, (dest, text)
            continue
        assert _same(_default_token(text), value), (dest, text, value)
        checked += 1
    assert checked >= 15


def test_pretrain_print_config_is_the_full_default_recipe(capsys):
    from lmforge.train.config import PretrainConfig

    assert main(["pretrain", "--print-config"]) == 0
    recipe = yaml.safe_load(capsys.readouterr().out)
    config = PretrainConfig.from_dict(dict(recipe, data="data/x", max_steps=10))
    assert config == PretrainConfig(data="data/x", max_steps=10)
    assert set(recipe) == set(PretrainConfig.__dataclass_fields__)
    assert recipe["optim"]["lr"] == 1e-3 and recipe["model"]["family"] == "llama"


def test_pretrain_print_config_shows_a_recipe_with_its_overrides(tmp_path, capsys):
    from lmforge.train.config import PretrainConfig

    path = tmp_path / "r.yaml"
    path.write_text("data: data/x\nmax_steps: 5\noptim:\n  name: muon\n")
    assert main(["pretrain", "--print-config", "--config", str(path), "optim.lr=3e-3", "seq_len=64"]) == 0
    recipe = yaml.safe_load(capsys.readouterr().out)
    assert PretrainConfig.from_dict(recipe) == PretrainConfig.from_dict(
        {"data": "data/x", "max_steps": 5, "optim": {"name": "muon", "lr": 3e-3}, "seq_len": 64})
    assert main(["pretrain"]) == 2
    assert "--config" in capsys.readouterr().err


def test_pretrain_help_lists_the_recipe_keys():
    from lmforge.train.config import PretrainConfig

    parser = dict(_verb_parsers(build_parser()))["lmforge pretrain"]
    text = parser.format_help()
    assert "--print-config" in text
    for key in PretrainConfig.__dataclass_fields__:
        assert key in text, key
    assert "optim.muon_lr" in text and "model.n_layers" in text and "schedule.warmup_steps" in text


@pytest.mark.parametrize("verb", ["generate", "chat", "finetune", "pretrain", "eval", "serve"])
def test_help_exits_cleanly(verb, capsys):
    with pytest.raises(SystemExit) as done:
        main([verb, "--help"])
    assert done.value.code == 0 and "default" in capsys.readouterr().out
