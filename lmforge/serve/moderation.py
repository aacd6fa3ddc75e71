"""The moderation hook of the server: input checks before a request is queued, output checks of
finished replies, refusals in the API's shape (finish_reason "content_filter").

With output checks on, a streamed chat reply is generated whole, checked, and then sent as
stream chunks, since streamed text cannot be taken back once a client has it."""

from __future__ import annotations

from typing import Any

from lmforge.infer.moderation import Moderator, user_text

__all__ = ["check_input", "filter_outputs"]

FINISH = "content_filter"


def check_input(moderator: Moderator | None, messages: list[dict[str, Any]] | None = None,
                prompts: list[Any] | None = None) -> bool:
    """Whether the request's user messages (chat) or string prompts (completions) are refused."""
    if moderator is None or not moderator.applies_to("input"):
        return False
    text = user_text(messages) if messages is not None else "\n".join(p for p in prompts or [] if isinstance(p, str))
    return moderator.check(text, "input").flagged


def filter_outputs(moderator: Moderator | None, texts: list[str], reasons: list[str]) -> tuple[list[str], list[str]]:
    """Replies the output check refuses are replaced by the refusal, finish_reason content_filter."""
    if moderator is None or not moderator.applies_to("output"):
        return texts, reasons
    texts, reasons = list(texts), list(reasons)
    for i, text in enumerate(texts):
        if moderator.check(text, "output").flagged:
            texts[i], reasons[i] = moderator.refusal, FINISH
    return texts, reasons


def _choice(kind: str, index: int, text: str, finish: str) -> dict[str, Any]:
    if kind == "chat":
        return {"index": index, "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None, "finish_reason": finish}
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}


def whole_response(kind: str, model_id: str, texts: list[str], reasons: list[str], usage: dict[str, Any],
                   stream: bool = False, include_usage: bool = False) -> Any:
    """A chat ("chat") or completions ("completion") response holding finished `texts`, as JSON or
    as an SSE stream (one content chunk and one finish chunk per choice): the shape of a refusal,
    and of a streamed reply that had to be checked whole."""
    import time
    import uuid

    from fastapi.responses import JSONResponse, StreamingResponse

    import lmforge
    from lmforge.serve import sse

    head = {"id": f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion" if kind == "chat" else "text_completion", "created": int(time.time()),
            "model": model_id, "system_fingerprint": f"lmforge-{lmforge.__version__}"}
    if not stream:
        return JSONResponse({**head, "choices": [_choice(kind, i, t, r) for i, (t, r) in enumerate(zip(texts, reasons))],
                             "usage": usage})
    head["object"] += ".chunk" if kind == "chat" else ""

    def chunk(choices: list[dict[str, Any]], with_usage: Any = None) -> bytes:
        return sse.event({**head, "choices": choices, **({"usage": with_usage} if include_usage else {})})

    def body():
        for i, (text, reason) in enumerate(zip(texts, reasons)):
            if kind == "chat":
                yield chunk([{"index": i, "delta": {"role": "assistant", "content": text}, "logprobs": None,
                              "finish_reason": None}])
                yield chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": reason}])
            else:
                yield chunk([{"index": i, "text": text, "logprobs": None, "finish_reason": None}])
                yield chunk([{"index": i, "text": "", "logprobs": None, "finish_reason": reason}])
        if include_usage:
            yield chunk([], usage)
        yield sse.DONE

    return StreamingResponse(body(), media_type=sse.MEDIA_TYPE, headers=sse.HEADERS)
