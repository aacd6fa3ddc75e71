"""Continuous batching: concurrent requests share decode steps, and joining or leaving changes no output."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from lmforge.infer import Engine, SamplingParams

MODEL = "smollm2-135m-instruct"  # the embedded GGUF the live servers serve

PROMPTS = ["The three primary colours are", "def add(a, b):\n    return", "In 1492, Columbus", "Water boils at"]


def test_concurrent_requests_share_decode_steps_and_match_solo_generation(server, client, smollm):
    model, tokenizer = smollm
    tokens = 16
    solo = Engine(model, tokenizer, max_batch_size=1)
    expected = [solo.generate([p], SamplingParams(max_new_tokens=tokens, ignore_eos=True))[0].text for p in PROMPTS]
    scheduler = server.app.state.service.scheduler
    server.wait_idle()
    steps_before = scheduler.steps

    def ask(prompt: str) -> str:
        reply = client.completions.create(model=MODEL, prompt=prompt, max_tokens=tokens, temperature=0,
                                          extra_body={"ignore_eos": True})
        assert reply.usage.completion_tokens == tokens
        return reply.choices[0].text

    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        texts = list(pool.map(ask, PROMPTS))
    assert texts == expected  # batched with the others, each reads exactly as when generated alone
    # One request alone needs tokens-1 steps; four one after another would need 4x that.
    assert scheduler.steps - steps_before < 2 * tokens


def test_a_request_joins_and_leaves_while_another_runs(server, client):
    prompt = "Once upon a time"
    alone = client.completions.create(model=MODEL, prompt=prompt, max_tokens=40, temperature=0,
                                      extra_body={"ignore_eos": True}).choices[0].text
    long_stream = client.completions.create(model=MODEL, prompt=prompt, max_tokens=40, temperature=0, stream=True,
                                            extra_body={"ignore_eos": True})
    pieces = []
    for chunk in long_stream:
        pieces.append(chunk.choices[0].text)
        if len(pieces) == 5:  # the long one is running: a short request joins, finishes and leaves
            short = client.chat.completions.create(model=MODEL, max_tokens=4, temperature=0,
                                                   messages=[{"role": "user", "content": "Hi"}])
            assert short.usage.completion_tokens <= 4
            assert server.health()["running"] == 1  # the short one's row is free again; the long one goes on
    assert "".join(pieces) == alone


def test_a_fault_while_admitting_fails_that_request_and_the_queue_goes_on(smollm):
    """A non-input error (say, out of memory) preparing one request answers it with a server error;
    the requests queued behind it still run, and no row stays reserved."""
    import asyncio

    from lmforge.serve.scheduler import Done, Failed, Finished, Job, Scheduler

    model, tokenizer = smollm
    engine = Engine(model, tokenizer, max_batch_size=4)
    real_prepare = engine.prepare

    def faulty_prepare(prompt, params, constraint=None):
        if list(prompt) == [7, 7, 7]:
            raise RuntimeError("simulated out of memory")
        return real_prepare(prompt, params, constraint)

    engine.prepare = faulty_prepare
    scheduler = Scheduler(engine)

    async def run() -> list[list[object]]:
        loop = asyncio.get_running_loop()
        params = SamplingParams(max_new_tokens=3, ignore_eos=True)
        jobs = [Job([ids], [params], [None], loop) for ids in ([7, 7, 7], tokenizer.encode("Hello"), tokenizer.encode("Hi"))]
        scheduler.start()
        for job in jobs:
            scheduler.submit(job)
        events = []
        for job in jobs:
            seen = []
            while not seen or not isinstance(seen[-1], (Done, Failed)):
                seen.append(await asyncio.wait_for(job.queue.get(), timeout=60))
            events.append(seen)
        return events

    try:
        bad, first, second = asyncio.run(run())
    finally:
        scheduler.stop()
    assert isinstance(bad[-1], Failed) and bad[-1].error.status == 500 and "RuntimeError" in bad[-1].error.message
    for events in (first, second):
        assert isinstance(events[-1], Done)
        assert [e for e in events if isinstance(e, Finished)][0].completion_tokens == 3
    assert scheduler.in_use == 0 and not engine.active
