"""The FastAPI application: OpenAI-compatible routes over one Engine, plus the web chat page.

    app = create_app(model, tokenizer, ServeConfig(model_id="smollm2-135m-instruct"))

Routes: GET / (chat page), GET /health, GET /v1/models[/ID], POST /v1/completions,
POST /v1/chat/completions. Each inference request is authorised, read (size-capped), parsed and
validated, tokenized and checked against the context, and only then handed to the `Scheduler`,
whose thread batches it with every other running request.
"""

from __future__ import annotations

import asyncio
import hmac
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

import lmforge
from lmforge.infer import tools as tooling
from lmforge.infer.engine import Engine, TokenLogprob
from lmforge.infer.grammar import Grammar, GrammarCompiler, GrammarError, GrammarSpec
from lmforge.infer.sampling import SamplingParams
from lmforge.infer.speculative import PromptLookup
from lmforge.model.transformer import Transformer
from lmforge.rag import answer as rag_answer
from lmforge.rag.embed import Embedder
from lmforge.rag.index import RagIndex
from lmforge.serve import moderation as guard
from lmforge.serve import protocol, sse
from lmforge.serve.metrics import CONTENT_TYPE as METRICS_TYPE, ServeMetrics, timing
from lmforge.serve.errors import APIError, busy, from_status, invalid, server_error, unauthorized
from lmforge.serve.protocol import ChatRequest, CompletionRequest, Sampling
from lmforge.serve.scheduler import Delta, Done, Failed, Finished, Job, Scheduler
from lmforge.serve.vision import ImageChat, has_image_parts
from lmforge.tokenizer.chat import render_conversation
from lmforge.tokenizer.token_bytes import token_bytes
from lmforge.tokenizer.tokenizer import Tokenizer

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # what OpenAI's legacy completions endpoint defaults to


@dataclass(frozen=True)
class ServeConfig:
    model_id: str  # the name clients pass as `model`
    api_key: str | None = None  # when set, every /v1 route needs `Authorization: Bearer KEY`
    max_concurrency: int = 8  # sequences generated at once (KV-cache rows); more -> 429
    cors_origins: tuple[str, ...] = ()
    default_max_tokens: int = 1024  # chat replies, when the request sets no limit (capped by the context)
    max_seq_len: int | None = None  # None: the model's context
    moderation: Any = None  # an infer.moderation.Moderator: input checks before generating, output checks after
    compile: bool | str = False  # decode step under torch.compile (True, or "max": see Engine), compiled before answering
    speculate: int = 0  # prompt-lookup draft tokens per step (0: off)

    def __post_init__(self) -> None:
        if not self.model_id:
            raise ValueError("model_id must be a non-empty string")
        if not 1 <= self.max_concurrency <= 256:
            raise ValueError(f"max_concurrency must be in [1, 256], got {self.max_concurrency}")
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key must not be empty")
        if self.default_max_tokens < 1:
            raise ValueError("default_max_tokens must be at least 1")


@dataclass
class _Prepared:
    """A validated request turned into engine inputs."""

    prompts: list[list[int]]
    params: list[SamplingParams]
    constraints: list[Any]
    prompt_tokens: int
    echo_texts: list[str] | None = None
    tools: list[tooling.ToolSpec] | None = None  # set when replies may hold tool calls
    started: float = field(default_factory=time.perf_counter)  # the usage's time_s and /metrics


class Service:
    """What the routes do, kept apart from FastAPI plumbing."""

    def __init__(self, model: Transformer, tokenizer: Tokenizer, config: ServeConfig) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.engine = Engine(model, tokenizer, max_batch_size=config.max_concurrency, max_seq_len=config.max_seq_len,
                             compile=config.compile,
                             speculative=PromptLookup(num_draft=config.speculate) if config.speculate else None)
        self.engine.warm_up()
        self.scheduler = Scheduler(self.engine)
        self.compiler = GrammarCompiler.for_tokenizer(tokenizer, self.engine.vocab_size)
        self.token_bytes = token_bytes(tokenizer)
        self.created = int(time.time())
        self.metrics = ServeMetrics()

    def usage(self, endpoint: str, prompt_tokens: int, completion_tokens: int, started: float,
              reason: str) -> dict[str, Any]:
        """A response's usage (tokens, wall time, rate); records the request for /metrics."""
        seconds = time.perf_counter() - started
        self.metrics.observe(endpoint, reason, prompt_tokens, completion_tokens, seconds)
        return {**protocol.usage(prompt_tokens, completion_tokens), **timing(seconds, completion_tokens)}

    def refuse(self, kind: str, prepared: _Prepared, n: int, stream: bool, include_usage: bool) -> Response:
        """The moderation policy's refusal in the endpoint's shape, without running the model."""
        usage = self.usage(kind, prepared.prompt_tokens, 0, prepared.started, guard.FINISH)
        return guard.whole_response(kind, self.config.model_id, [self.config.moderation.refusal] * n,
                                    [guard.FINISH] * n, usage, stream, include_usage)

    def streams_live(self, stream: bool) -> bool:
        """Stream as tokens come, unless output checks need each reply whole first."""
        return stream and (self.config.moderation is None or not self.config.moderation.applies_to("output"))

    # -- request gates -------------------------------------------------------------------------
    def authorize(self, request: Request) -> None:
        key = self.config.api_key
        if key is None:
            return
        header = request.headers.get("authorization")
        if not header:
            raise unauthorized("missing API key: send the header 'Authorization: Bearer YOUR_KEY'")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise unauthorized("incorrect API key provided")

    def check_model(self, model: str) -> None:
        if model != self.config.model_id:
            raise invalid(f"the model {model!r} does not exist; this server serves {self.config.model_id!r}",
                          "model", code="model_not_found")

    def check_room(self, size: int) -> None:
        if size > self.scheduler.capacity:
            raise invalid(f"this request needs {size} sequences but the server runs at most "
                          f"{self.scheduler.capacity} at once", "n")
        if self.scheduler.in_use + size > self.scheduler.capacity:
            raise busy(self.scheduler.capacity)

    async def read_json(self, request: Request) -> dict[str, Any]:
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > protocol.MAX_BODY_BYTES:
            raise protocol.too_large()
        chunks, size = [], 0
        async for chunk in request.stream():  # a body without Content-Length is capped as it arrives
            size += len(chunk)
            if size > protocol.MAX_BODY_BYTES:
                raise protocol.too_large()
            chunks.append(chunk)
        return protocol.parse_json_body(b"".join(chunks), request.headers.get("content-type"))

    # -- preparation (runs in a worker thread: tokenizing and templating take a moment) ---------
    def _max_tokens(self, prompt_tokens: int, requested: int | None, default: int, param: str) -> int:
        limit = self.engine.max_seq_len
        if requested is None:
            if prompt_tokens >= limit:
                raise invalid(f"the prompt is {prompt_tokens} tokens, which fills this model's context of {limit} "
                              "tokens; shorten it", param, code="context_length_exceeded")
            return min(default, limit - prompt_tokens)
        if prompt_tokens + requested > limit:
            raise invalid(f"this model's maximum context length is {limit} tokens, but {prompt_tokens + requested} were "
                          f"requested ({prompt_tokens} in the prompt, {requested} for the completion); shorten the "
                          "prompt or lower max_tokens", param, code="context_length_exceeded")
        return requested

    @staticmethod
    def _params(s: Sampling, max_tokens: int, choice: int) -> SamplingParams:
        try:
            return SamplingParams(
                max_new_tokens=max_tokens, temperature=s.temperature, top_k=s.top_k,
                top_p=None if s.top_p in (None, 1.0) else s.top_p, min_p=s.min_p,
                repetition_penalty=s.repetition_penalty, presence_penalty=s.presence_penalty,
                frequency_penalty=s.frequency_penalty,
                seed=None if s.seed is None else (s.seed + choice) % 2**63,
                stop=s.stop, ignore_eos=s.ignore_eos, logprobs=s.logprobs,
            )
        except ValueError as exc:
            raise invalid(str(exc)) from None

    def _grammar(self, req: ChatRequest) -> Grammar | None:
        fmt = req.response_format
        if fmt is None:
            return None
        json_kind = fmt.type in ("json_schema", "json_object")
        param = "response_format.json_schema.schema" if fmt.param == "response_format" and json_kind else fmt.param
        try:
            spec = GrammarSpec.json_object() if fmt.type == "json_object" else GrammarSpec(fmt.type, fmt.schema)
            return self.compiler.grammar(spec)
        except GrammarError as exc:
            raise invalid(str(exc), param, code="invalid_json_schema" if json_kind else "invalid_grammar") from None

    def _tools(self, req: ChatRequest) -> tuple[list[tooling.ToolSpec], str] | None:
        if req.tools is None:
            return None
        try:
            specs = tooling.parse_tools(req.tools.tools)
            choice = tooling.check_tool_choice(req.tools.choice, specs)
            tooling.check_tool_schemas(self.compiler, specs)
        except tooling.ToolError as exc:
            raise invalid(str(exc), exc.param, code="invalid_tool_schema" if "schema" in str(exc) else None) from None
        return specs, choice

    def prepare_chat(self, req: ChatRequest) -> _Prepared:
        tools = self._tools(req)
        try:
            ids, _ = render_conversation(self.tokenizer, list(req.messages), add_generation_prompt=True,
                                         tools=[t.openai() for t in tools[0]] if tools else None)
        except ValueError as exc:
            raise invalid(f"cannot render the conversation: {exc}", "messages") from None
        grammar = self._grammar(req)
        max_tokens = self._max_tokens(len(ids), req.sampling.max_tokens, self.config.default_max_tokens, "messages")
        if grammar is not None:
            try:
                grammar.check_budget(max_tokens)
            except ValueError as exc:
                raise invalid(str(exc), "max_tokens") from None
        n = req.sampling.n
        if tools is not None:
            specs, choice = tools
            constraints = [tooling.tool_constraint(self.compiler, self.tokenizer, specs, choice,
                                                   req.tools.parallel, max_tokens) for _ in range(n)]
        else:
            constraints = [grammar.constraint(max_tokens) if grammar else None for _ in range(n)]
        return _Prepared(
            prompts=[ids] * n,
            params=[self._params(req.sampling, max_tokens, i) for i in range(n)],
            constraints=constraints,
            prompt_tokens=len(ids),
            tools=tools[0] if tools is not None and tools[1] != "none" else None,
        )

    def prepare_completion(self, req: CompletionRequest) -> _Prepared:
        prompts, params, echoes, prompt_tokens = [], [], [], 0
        for prompt in req.prompts:
            if isinstance(prompt, str):
                ids = self.tokenizer.encode(prompt, add_bos=self.tokenizer.add_bos_token)
            else:
                ids = list(prompt)
            text = (prompt if isinstance(prompt, str) else self.tokenizer.decode(prompt)) if req.echo else ""
            if not ids:
                if self.tokenizer.bos_id is None:
                    raise invalid("the prompt is empty and this model has no beginning-of-sequence token", "prompt")
                ids = [self.tokenizer.bos_id]
            max_tokens = self._max_tokens(len(ids), req.sampling.max_tokens, COMPLETIONS_DEFAULT_MAX_TOKENS, "prompt")
            prompt_tokens += len(ids)
            for _ in range(req.sampling.n):
                params.append(self._params(req.sampling, max_tokens, len(prompts)))
                prompts.append(ids)
                echoes.append(text)
        return _Prepared(prompts, params, [None] * len(prompts), prompt_tokens, echoes if req.echo else None)

    # -- running -------------------------------------------------------------------------------
    async def submit(self, prepared: _Prepared) -> Job:
        job = Job(prepared.prompts, prepared.params, prepared.constraints, asyncio.get_running_loop())
        self.scheduler.submit(job)
        return job

    async def events(self, job: Job, request: Request) -> AsyncIterator[Any]:
        """The job's events until Done/Failed; stops (and cancels the job) if the client leaves."""
        watcher = asyncio.ensure_future(_wait_for_disconnect(request))
        getter: asyncio.Future | None = None
        try:
            while True:
                getter = asyncio.ensure_future(job.queue.get())
                done, _ = await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    return
                event = getter.result()
                yield event
                if isinstance(event, (Done, Failed)):
                    return
        finally:
            for task in (watcher, getter):
                if task is not None and not task.done():
                    task.cancel()
            job.cancel()  # no-op once the job is done

    def token_entry(self, item: TokenLogprob) -> dict[str, Any]:
        """A token with its log-probability and alternatives, each as text and raw bytes."""
        token, raw = self._token_text(item.token_id)
        top = []
        for token_id, logprob in item.top:
            text, data = self._token_text(token_id)
            top.append((text, logprob, data))
        return {"token": token, "logprob": item.logprob, "bytes": raw, "top": top}

    def _token_text(self, token_id: int) -> tuple[str, list[int]]:
        data = self.token_bytes[token_id] if token_id < len(self.token_bytes) else None
        if data is None:  # a special token: its name
            name = self.tokenizer.id_to_token(token_id) if token_id < self.tokenizer.vocab_size else None
            data = (name or "").encode("utf-8")
        return data.decode("utf-8", errors="replace"), list(data)


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def create_app(model: Transformer, tokenizer: Tokenizer, config: ServeConfig, rag_index: RagIndex | None = None,
               vision: Any = None) -> FastAPI:
    """The ASGI app; its lifespan starts and stops the scheduler thread. With `rag_index`,
    POST /v1/rag/ask answers questions from it with citations. With `vision` (a
    VisionLanguageModel over `model`), chat messages may hold images (serve.vision)."""
    service = Service(model, tokenizer, config)
    images = ImageChat(vision, tokenizer, config.model_id, config.default_max_tokens)
    embedder = Embedder(model, tokenizer)
    page = resources.files("lmforge.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.scheduler.start()
        try:
            yield
        finally:
            service.scheduler.stop()

    app = FastAPI(title="lmforge", version=lmforge.__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = from_status(exc.status_code, str(exc.detail))
        return JSONResponse(error.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        error = server_error(f"internal error: {type(exc).__name__}")
        return JSONResponse(error.body(), status_code=500)

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": config.model_id, "running": service.scheduler.in_use,
                "capacity": service.scheduler.capacity, "auth": config.api_key is not None,
                "vision": images.vlm is not None}  # the chat page offers image upload when true

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        service.authorize(request)
        gauges = {"lmforge_running_sequences": service.scheduler.in_use,
                  "lmforge_capacity_sequences": service.scheduler.capacity}
        return Response(service.metrics.render(gauges, config.moderation), media_type=METRICS_TYPE)

    def model_card() -> dict[str, Any]:
        return {"id": config.model_id, "object": "model", "created": service.created, "owned_by": "lmforge",
                "max_model_len": service.engine.max_seq_len}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        service.authorize(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def one_model(model_id: str, request: Request) -> dict[str, Any]:
        service.authorize(request)
        if model_id != config.model_id:
            raise APIError(404, f"the model {model_id!r} does not exist", type="not_found_error", param="model",
                           code="model_not_found")
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        service.authorize(request)
        req = protocol.parse_chat(await service.read_json(request), service.engine.max_seq_len)
        service.check_model(req.model)
        if has_image_parts(req):
            return JSONResponse(await images.complete(req, config.moderation))
        service.check_room(req.sampling.n)
        prepared = await run_in_threadpool(service.prepare_chat, req)
        if await run_in_threadpool(guard.check_input, config.moderation, list(req.messages)):
            return service.refuse("chat", prepared, req.sampling.n, req.sampling.stream, req.sampling.include_usage)
        job = await service.submit(prepared)
        if service.streams_live(req.sampling.stream):
            return await _stream(request, job, _ChatChunks(service, req.sampling, prepared))
        return await _chat_response(service, request, job, req, prepared)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        service.authorize(request)
        body = await service.read_json(request)
        service.check_model(body.get("model") or "")
        texts = protocol.parse_embedding_input(body)
        vectors = await run_in_threadpool(embedder.embed, texts)
        tokens = await run_in_threadpool(embedder.count_tokens, texts)
        return JSONResponse(protocol.embedding_response(vectors.tolist(), config.model_id, tokens,
                                                        body.get("encoding_format") or "float"))

    @app.post("/v1/rag/ask")
    async def rag_ask(request: Request) -> Response:
        service.authorize(request)
        if rag_index is None:
            raise APIError(404, "this server serves no RAG index (start it with --rag INDEX)", type="not_found_error",
                           code="not_found")
        body = await service.read_json(request)
        question, k = protocol.parse_rag_question(body)
        hits = await run_in_threadpool(rag_index.search, question, k)
        if not rag_index.relevant(hits):
            return JSONResponse(rag_answer.abstain(hits).to_dict())
        ids, _ = await run_in_threadpool(render_conversation, tokenizer, rag_answer.build_messages(question, hits), True)
        max_tokens = service._max_tokens(len(ids), protocol._int(body, "max_tokens", 1, 1024), 64, "question")
        grammar = service.compiler.grammar(rag_answer.answer_grammar(len(hits)))
        service.check_room(1)
        greedy = {"temperature": 0.0, **body}  # greedy unless asked otherwise, as `lmforge rag ask` answers
        params = service._params(protocol._sampling(greedy, max_tokens, None), max_tokens, 0)
        job = await service.submit(_Prepared([ids], [params], [grammar.constraint(max_tokens)], len(ids)))
        result = await _collect(service, request, job)
        if result is None:
            return Response(status_code=499)
        return JSONResponse(rag_answer.finish(result[0][0], hits).to_dict())

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        service.authorize(request)
        req = protocol.parse_completion(await service.read_json(request), service.engine.max_seq_len,
                                        service.engine.vocab_size)
        service.check_model(req.model)
        service.check_room(len(req.prompts) * req.sampling.n)
        prepared = await run_in_threadpool(service.prepare_completion, req)
        if await run_in_threadpool(guard.check_input, config.moderation, None, list(req.prompts)):
            return service.refuse("completion", prepared, len(prepared.prompts), req.sampling.stream,
                                  req.sampling.include_usage)
        job = await service.submit(prepared)
        if service.streams_live(req.sampling.stream):
            return await _stream(request, job, _CompletionChunks(service, req.sampling, prepared))
        return await _completion_response(service, request, job, req, prepared)

    return app


# ---------------------------------------------------------------------- response assembly
async def _collect(service: Service, request: Request, job: Job) -> tuple[list[str], list[str], list[list], int] | None:
    """Texts, finish reasons, logprob entries per choice and completion tokens; None if the client left."""
    texts, reasons = [""] * job.size, ["stop"] * job.size
    entries: list[list] = [[] for _ in range(job.size)]
    completion_tokens = 0
    async for event in service.events(job, request):
        if isinstance(event, Delta):
            texts[event.choice] += event.text
            entries[event.choice] += [service.token_entry(t) for t in event.logprobs]
        elif isinstance(event, Finished):
            reasons[event.choice] = event.finish_reason
            completion_tokens += event.completion_tokens
        elif isinstance(event, Failed):
            raise event.error
        elif isinstance(event, Done):
            return texts, reasons, entries, completion_tokens
    return None


async def _chat_response(service: Service, request: Request, job: Job, req: ChatRequest, prepared: _Prepared) -> Response:
    result = await _collect(service, request, job)
    if result is None:
        return Response(status_code=499)
    texts, reasons, entries, completion_tokens = result
    texts, reasons = await run_in_threadpool(guard.filter_outputs, service.config.moderation, texts, reasons)
    usage = service.usage("chat", prepared.prompt_tokens, completion_tokens, prepared.started, reasons[0])
    if req.sampling.stream:  # checked whole before streaming (serve.moderation)
        return guard.whole_response("chat", service.config.model_id, texts, reasons, usage, True,
                                    req.sampling.include_usage)
    want_logprobs = req.sampling.logprobs is not None
    messages = []
    for i in range(job.size):
        message: dict[str, Any] = {"role": "assistant", "content": texts[i], "refusal": None}
        if prepared.tools is not None:
            content, calls = tooling.parse_tool_calls(texts[i], prepared.tools)
            if calls:
                message.update(content=content or None, tool_calls=[c.openai() for c in calls])
                reasons[i] = "tool_calls"
        messages.append(message)
    return JSONResponse({
        "id": _id("chatcmpl"), "object": "chat.completion", "created": int(time.time()),
        "model": service.config.model_id, "system_fingerprint": f"lmforge-{lmforge.__version__}",
        "choices": [{"index": i, "message": messages[i],
                     "logprobs": protocol.chat_logprobs(entries[i]) if want_logprobs else None,
                     "finish_reason": reasons[i]} for i in range(job.size)],
        "usage": usage,
    })


async def _completion_response(service: Service, request: Request, job: Job, req: CompletionRequest,
                               prepared: _Prepared) -> Response:
    result = await _collect(service, request, job)
    if result is None:
        return Response(status_code=499)
    texts, reasons, entries, completion_tokens = result
    texts, reasons = await run_in_threadpool(guard.filter_outputs, service.config.moderation, texts, reasons)
    usage = service.usage("completion", prepared.prompt_tokens, completion_tokens, prepared.started, reasons[0])
    echo = prepared.echo_texts
    if req.sampling.stream:  # checked whole before streaming (serve.moderation)
        return guard.whole_response("completion", service.config.model_id,
                                    [(echo[i] if echo else "") + t for i, t in enumerate(texts)], reasons, usage, True,
                                    req.sampling.include_usage)
    want_logprobs = req.sampling.logprobs is not None
    return JSONResponse({
        "id": _id("cmpl"), "object": "text_completion", "created": int(time.time()),
        "model": service.config.model_id, "system_fingerprint": f"lmforge-{lmforge.__version__}",
        "choices": [{"index": i, "text": (echo[i] if echo else "") + texts[i],
                     "logprobs": protocol.completion_logprobs(entries[i]) if want_logprobs else None,
                     "finish_reason": reasons[i]} for i in range(job.size)],
        "usage": usage,
    })


class _Chunks:
    """Turns scheduler events into OpenAI stream chunks; subclasses shape the choices per endpoint."""

    object_name = ""
    id_prefix = ""

    def __init__(self, service: Service, sampling: Sampling, prepared: _Prepared) -> None:
        self.service = service
        self.sampling = sampling
        self.size = len(prepared.prompts)
        self.prompt_tokens = prepared.prompt_tokens
        self.completion_tokens = 0
        self.started, self.reason = prepared.started, "stop"
        self.id = _id(self.id_prefix)
        self.created = int(time.time())

    def chunk(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
        payload: dict[str, Any] = {"id": self.id, "object": self.object_name, "created": self.created,
                                   "model": self.service.config.model_id,
                                   "system_fingerprint": f"lmforge-{lmforge.__version__}", "choices": choices}
        if self.sampling.include_usage:
            payload["usage"] = usage
        return sse.event(payload)

    def entries(self, event: Delta) -> list[dict[str, Any]]:
        return [self.service.token_entry(t) for t in event.logprobs]


class _ChatChunks(_Chunks):
    object_name, id_prefix = "chat.completion.chunk", "chatcmpl"

    def __init__(self, service: Service, sampling: Sampling, prepared: _Prepared) -> None:
        super().__init__(service, sampling, prepared)
        self.splitters = None if prepared.tools is None else [tooling.ToolStream(prepared.tools) for _ in range(self.size)]

    def opening(self) -> list[bytes]:
        return [self.chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                             "finish_reason": None}]) for i in range(self.size)]

    def delta(self, event: Delta) -> dict[str, Any]:
        logprobs = protocol.chat_logprobs(self.entries(event)) if self.sampling.logprobs is not None else None
        text = event.text if self.splitters is None else self.splitters[event.choice].feed(event.text)
        return {"index": event.choice, "delta": {"content": text}, "logprobs": logprobs, "finish_reason": None}

    def finished(self, event: Finished) -> dict[str, Any]:
        return {"index": event.choice, "delta": {}, "logprobs": None, "finish_reason": event.finish_reason}

    def finished_chunks(self, event: Finished) -> list[bytes]:
        """The closing chunks of a choice: held-back content, tool calls by index, the finish reason."""
        if self.splitters is None:
            return [self.chunk([self.finished(event)])]
        rest, calls = self.splitters[event.choice].finish()
        out = []
        if rest:
            out.append(self.chunk([{"index": event.choice, "delta": {"content": rest}, "logprobs": None,
                                    "finish_reason": None}]))
        for index, call in enumerate(calls):  # the call's head, then its arguments in pieces
            head = {"index": index, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}
            out.append(self.chunk([{"index": event.choice, "delta": {"tool_calls": [head]}, "logprobs": None,
                                    "finish_reason": None}]))
            text = call.arguments_json
            for start in range(0, len(text), 16):
                piece = {"index": index, "function": {"arguments": text[start:start + 16]}}
                out.append(self.chunk([{"index": event.choice, "delta": {"tool_calls": [piece]}, "logprobs": None,
                                        "finish_reason": None}]))
        finish = self.finished(event)
        if calls:
            finish["finish_reason"] = "tool_calls"
        out.append(self.chunk([finish]))
        return out


class _CompletionChunks(_Chunks):
    object_name, id_prefix = "text_completion", "cmpl"

    def __init__(self, service: Service, sampling: Sampling, prepared: _Prepared) -> None:
        super().__init__(service, sampling, prepared)
        self.echo = prepared.echo_texts
        self.offsets = [len(t) for t in self.echo] if self.echo else [0] * self.size

    def opening(self) -> list[bytes]:
        if not self.echo:
            return []
        return [self.chunk([{"index": i, "text": text, "logprobs": None, "finish_reason": None}])
                for i, text in enumerate(self.echo)]

    def delta(self, event: Delta) -> dict[str, Any]:
        logprobs = None
        if self.sampling.logprobs is not None:
            logprobs = protocol.completion_logprobs(self.entries(event), self.offsets[event.choice])
        self.offsets[event.choice] += len(event.text)
        return {"index": event.choice, "text": event.text, "logprobs": logprobs, "finish_reason": None}

    def finished(self, event: Finished) -> dict[str, Any]:
        return {"index": event.choice, "text": "", "logprobs": None, "finish_reason": event.finish_reason}

    def finished_chunks(self, event: Finished) -> list[bytes]:
        return [self.chunk([self.finished(event)])]


async def _stream(request: Request, job: Job, chunks: _ChatChunks | _CompletionChunks) -> Response:
    """Wait for the first event (so a failed admission is a plain HTTP error), then stream SSE."""
    service: Service = request.app.state.service
    events = service.events(job, request)
    try:
        first = await events.__anext__()
    except StopAsyncIteration:
        return Response(status_code=499)
    if isinstance(first, Failed):
        await events.aclose()
        raise first.error

    async def body() -> AsyncIterator[bytes]:
        try:
            for piece in chunks.opening():
                yield piece
            event = first
            while True:
                if isinstance(event, Delta):
                    yield chunks.chunk([chunks.delta(event)])
                elif isinstance(event, Finished):
                    chunks.completion_tokens += event.completion_tokens
                    chunks.reason = event.finish_reason
                    for piece in chunks.finished_chunks(event):
                        yield piece
                elif isinstance(event, Failed):
                    yield sse.event(event.error.body())
                    break
                elif isinstance(event, Done):
                    usage = service.usage("chat" if chunks.object_name.startswith("chat") else "completion",
                                          chunks.prompt_tokens, chunks.completion_tokens, chunks.started, chunks.reason)
                    if chunks.sampling.include_usage:
                        yield chunks.chunk([], usage)
                    break
                try:
                    event = await events.__anext__()
                except StopAsyncIteration:  # the client left
                    return
            yield sse.DONE
        finally:
            await events.aclose()

    return StreamingResponse(body(), media_type=sse.MEDIA_TYPE, headers=sse.HEADERS)
