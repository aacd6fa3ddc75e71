"""Chat templates (parity with transformers, sandbox) and render_conversation's loss mask."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest

from lmforge.tokenizer import DEFAULT_CHAT_TEMPLATE, ChatTemplate, Tokenizer, render_conversation

SYSTEM = {"role": "system", "content": "You are terse."}
TURNS = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And 3 × 3? Answer in 日本語 😀"},
    {"role": "assistant", "content": "九 (9) 🎉"},
    {"role": "user", "content": "a"},
    {"role": "assistant", "content": "a"},
]

# Exercises what real templates use: namespace, loop controls, tojson, raise_exception, indented
# blocks (trim_blocks/lstrip_blocks), tools passed as an extra variable.
RICH_TEMPLATE = """\
{%- set ns = namespace(system=none) -%}
{%- if messages and messages[0].role == 'system' %}
    {%- set ns.system = messages[0].content %}
{%- endif %}
<|im_start|>system
{{ ns.system or 'Default system prompt.' }}
{%- if tools %}

Tools: {{ tools | tojson }}
{%- endif %}<|im_end|>
{% for message in messages %}
    {%- if message.role == 'system' %}{% continue %}{% endif %}
    {%- if message.role not in ['user', 'assistant', 'tool'] %}{{ raise_exception('bad role') }}{% endif %}
    {%- if loop.index > 50 %}{% break %}{% endif %}
<|im_start|>{{ message.role }}
{{ message.content | trim }}<|im_end|>
{% endfor %}
{%- if add_generation_prompt %}
<|im_start|>assistant
{% endif %}"""

# ChatML with Hugging Face's generation markers, so transformers can compute its own assistant mask.
GENERATION_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _hf_render(hf_tok: Any, messages: list[dict[str, str]], add_generation_prompt: bool, **kwargs: Any) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hf_tok.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
        )


@pytest.mark.parametrize("with_system", [False, True])
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_render_matches_transformers(
    smollm_tok: Tokenizer, hf_tok: Any, with_system: bool, add_generation_prompt: bool
) -> None:
    messages = ([SYSTEM] if with_system else []) + TURNS
    for upto in (1, 2, len(messages)):  # conversation ending on user or on assistant
        conv = messages[:upto]
        ours = ChatTemplate(smollm_tok.chat_template or "").render(conv, add_generation_prompt=add_generation_prompt)
        assert ours == _hf_render(hf_tok, conv, add_generation_prompt)


@pytest.mark.parametrize("with_system", [False, True])
def test_rich_template_matches_transformers(hf_tok: Any, with_system: bool) -> None:
    tools = [{"name": "get_weather", "description": "Météo <city> & \"more\"", "parameters": {"city": "str"}}]
    messages = ([SYSTEM] if with_system else []) + TURNS[:4]
    for kwargs in ({}, {"tools": tools}):
        ours = ChatTemplate(RICH_TEMPLATE).render(messages, add_generation_prompt=True, **kwargs)
        assert ours == _hf_render(hf_tok, messages, True, chat_template=RICH_TEMPLATE, **kwargs)
    assert "Météo <city> & \\\"more\\\"" in ChatTemplate(RICH_TEMPLATE).render(messages, tools=tools)


def test_template_errors() -> None:
    with pytest.raises(ValueError, match="syntax error"):
        ChatTemplate("{% for m in messages %}{{ m }}")
    with pytest.raises(ValueError, match="syntax error"):
        ChatTemplate("{{ }}")
    with pytest.raises(ValueError, match="bad role"):
        ChatTemplate("{{ raise_exception('bad role') }}").render([])
    with pytest.raises(ValueError, match="non-empty"):
        ChatTemplate("")
    with pytest.raises(ValueError, match="undefined"):
        ChatTemplate("{{ missing.attr }}").render([])


@pytest.mark.parametrize(
    ("messages", "where"),
    [
        ("hello", "list"),
        ([{"role": "user", "content": "ok"}, "oops"], r"messages\[1\]"),
        ([{"role": "user", "content": "ok"}, {"role": "wizard", "content": "x"}], r"messages\[1\].*role"),
        ([{"role": "user"}], r"messages\[0\].*content"),
        ([{"role": "assistant", "content": ["a", "b"]}], r"messages\[0\].*content"),
    ],
)
def test_message_validation(messages: Any, where: str) -> None:
    with pytest.raises(ValueError, match=where):
        ChatTemplate(DEFAULT_CHAT_TEMPLATE).render(messages)


# ---------------------------------------------------------------------- sandbox
def _gadgets(target: Path) -> list[str]:
    path = str(target)
    return [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ ''.__class__ }}",
        f"{{{{ cycler.__init__.__globals__.os.system('touch {path}') }}}}",
        f"{{{{ joiner.__init__.__globals__.os.popen('touch {path}').read() }}}}",
        f"{{{{ lipsum.__globals__['os'].system('touch {path}') }}}}",
        f"{{{{ self.__init__.__globals__.__builtins__.open('{path}', 'w').write('pwned') }}}}",
        f"{{{{ namespace.__init__.__globals__['__builtins__']['open']('{path}', 'w') }}}}",
        "{% for m in messages %}{{ m.__class__.__base__.__subclasses__() }}{% endfor %}",
        "{{ '{0.__class__.__mro__}'.format(messages) }}",
        "{{ messages.append({'role': 'user', 'content': 'x'}) }}",
        "{{ 'x' * 1000000000 }}",
    ]


def test_sandbox_refuses_escapes_and_runs_nothing(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    messages = [{"role": "user", "content": "hi"}]
    for source in _gadgets(target):
        with pytest.raises(ValueError, match="unsafe chat template"):
            ChatTemplate(source).render(messages)
        assert not target.exists(), source


def test_sandbox_through_render_conversation(smollm_tok: Tokenizer, tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    source = f"{{{{ cycler.__init__.__globals__.os.system('touch {target}') }}}}"
    with pytest.raises(ValueError, match="unsafe chat template"):
        render_conversation(smollm_tok, TURNS[:2], template=ChatTemplate(source))
    assert not target.exists()


# ---------------------------------------------------------------------- render_conversation
def _masked_runs(tok: Tokenizer, ids: list[int], mask: list[int]) -> list[str]:
    runs: list[list[int]] = []
    previous = 0
    for token_id, bit in zip(ids, mask):
        if bit and not previous:
            runs.append([])
        if bit:
            runs[-1].append(token_id)
        previous = bit
    return [tok.decode(run) for run in runs]


@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_mask_covers_assistant_content_and_im_end(smollm_tok: Tokenizer, add_generation_prompt: bool) -> None:
    ids, mask = render_conversation(smollm_tok, TURNS, add_generation_prompt=add_generation_prompt)
    assert len(ids) == len(mask) and set(mask) <= {0, 1}
    text = ChatTemplate(smollm_tok.chat_template or "").render(TURNS, add_generation_prompt=add_generation_prompt)
    assert ids == smollm_tok.encode(text)
    expected = [m["content"] + "<|im_end|>" for m in TURNS if m["role"] == "assistant"]
    assert _masked_runs(smollm_tok, ids, mask) == expected
    # Every masked <|im_end|> closes an assistant turn; the user turns' ones are not masked.
    im_end = smollm_tok.token_to_id("<|im_end|>")
    assert sum(bit for token_id, bit in zip(ids, mask) if token_id == im_end) == 3
    assert ids.count(im_end) == 7  # default system + 6 turns


def test_mask_matches_transformers_generation_mask(smollm_tok: Tokenizer, hf_tok: Any) -> None:
    messages = [SYSTEM] + TURNS
    ids, mask = render_conversation(smollm_tok, messages, template=ChatTemplate(GENERATION_TEMPLATE))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = hf_tok.apply_chat_template(
            messages, chat_template=GENERATION_TEMPLATE, tokenize=True, return_dict=True,
            return_assistant_tokens_mask=True,
        )
    assert ids == list(hf["input_ids"])
    assert mask == list(hf["assistant_masks"])


def test_mask_with_trimming_template(smollm_tok: Tokenizer) -> None:
    # The template trims contents, so the rendered content differs from the message: the mask
    # follows what the template wrote.
    messages = [{"role": "user", "content": "  hi  "}, {"role": "assistant", "content": "\n  Hello there.  \n"}]
    ids, mask = render_conversation(smollm_tok, messages, template=ChatTemplate(RICH_TEMPLATE))
    assert _masked_runs(smollm_tok, ids, mask) == ["Hello there.<|im_end|>"]


def test_mask_with_empty_assistant_content_and_default_template(smollm_tok: Tokenizer) -> None:
    tok = Tokenizer.from_tokenizers(smollm_tok.backend, eos_ids=[2])  # no template: ChatML default
    messages = [{"role": "user", "content": "say nothing"}, {"role": "assistant", "content": ""}]
    ids, mask = render_conversation(tok, messages)
    assert tok.decode(ids) == "<|im_start|>user\nsay nothing<|im_end|>\n<|im_start|>assistant\n<|im_end|>\n"
    assert _masked_runs(tok, ids, mask) == ["<|im_end|>"]


def test_mask_when_template_drops_assistant_content(smollm_tok: Tokenizer) -> None:
    template = ChatTemplate("{% for m in messages %}{{ m.role }}{% endfor %}")
    with pytest.raises(ValueError, match=r"messages\[1\]"):
        render_conversation(smollm_tok, TURNS[:2], template=template)
