"""Chat completions with images (OpenAI image_url content parts) for a served vision-language model.

Requests holding an image come here instead of the batching scheduler: the prompt's images are
spliced into the language model's input (`VisionLanguageModel`), which the scheduler's engine does
not do. Only base64 `data:image/...` URLs are accepted (a client must not name the server's
files; nothing is downloaded). The server's moderation policy applies here as on every other
path: the request's text is checked before the model runs, the reply before it is returned. Hostile or unreadable images, a text-only model, and options this
path does not offer (streaming, n > 1, tools, structured output) are 400 errors, never a crash.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from starlette.concurrency import run_in_threadpool

import lmforge
from lmforge.infer.vision import answer_prompt
from lmforge.model.vision import VisionLanguageModel
from lmforge.serve import moderation as guard
from lmforge.serve import protocol
from lmforge.serve.errors import invalid
from lmforge.serve.protocol import ChatRequest
from lmforge.tokenizer.tokenizer import Tokenizer

__all__ = ["ImageChat", "has_image_parts"]


def has_image_parts(req: ChatRequest) -> bool:
    return any(isinstance(m.get("content"), list) for m in req.messages)


class ImageChat:
    """One vision-language model answering image requests one at a time."""

    def __init__(self, vlm: VisionLanguageModel | None, tokenizer: Tokenizer, model_id: str, default_max_tokens: int) -> None:
        self.vlm, self.tokenizer, self.model_id, self.default_max_tokens = vlm, tokenizer, model_id, default_max_tokens
        self.lock = asyncio.Lock()

    async def complete(self, req: ChatRequest, moderator: Any = None) -> dict[str, Any]:
        if self.vlm is None:
            raise invalid(f"the model {self.model_id!r} is text-only and does not accept image content parts; serve a "
                          "vision-language model folder (written by `lmforge vlm train`) to send images",
                          "messages", code="image_input_not_supported")
        s = req.sampling
        for refused, param in ((s.stream, "stream"), (s.n != 1, "n"), (req.tools is not None, "tools"),
                               (req.response_format is not None, "response_format"), (s.logprobs is not None, "logprobs")):
            if refused:
                raise invalid(f"{param} is not supported in requests with images", param)
        max_tokens = s.max_tokens or self.default_max_tokens
        started = time.perf_counter()
        if await run_in_threadpool(guard.check_input, moderator, list(req.messages)):
            return self._response(moderator.refusal, guard.FINISH, 0, 0, time.perf_counter() - started)
        async with self.lock:
            try:
                text, prompt_tokens, completion_tokens = await run_in_threadpool(
                    answer_prompt, self.vlm, self.tokenizer, list(req.messages), allow_paths=False,
                    max_new_tokens=max_tokens, temperature=s.temperature, top_p=s.top_p or 1.0, seed=s.seed)
            except ValueError as error:  # bad images, a prompt over the context
                raise invalid(str(error), "messages", code="invalid_image") from None
        reason = "length" if completion_tokens >= max_tokens else "stop"
        [text], [reason] = await run_in_threadpool(guard.filter_outputs, moderator, [text], [reason])
        return self._response(text, reason, prompt_tokens, completion_tokens, time.perf_counter() - started)

    def _response(self, text: str, reason: str, prompt_tokens: int, completion_tokens: int, seconds: float) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": self.model_id, "system_fingerprint": f"lmforge-{lmforge.__version__}",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                         "logprobs": None, "finish_reason": reason}],
            "usage": {**protocol.usage(prompt_tokens, completion_tokens), "time_s": round(seconds, 3)},
        }
