"""The playground's web app: OpenAI-compatible endpoints, the look-inside API and the pages, on Starlette.

    app = create_app("runs")                 # uvicorn.run(app, host="127.0.0.1", port=8000); `llmpath serve` does it
    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")
    client.chat.completions.create(model="chat/small-sft", messages=[{"role": "user", "content": "你好"}])

Routes (the JSON shapes follow OpenAI's API reference for the /v1 ones):
    GET  /v1/models[/<id>]          the runs that generate text (or one of them)
    POST /v1/completions            continue a prompt (text models), stream=true for server-sent events
    POST /v1/chat/completions       answer a conversation in the chat template (chat models)
    GET  /api/runs                  every run: what it can do, a few results, whether it has curves
    GET  /api/runs/<topic>/<name>/metrics    its metrics.jsonl rows
    POST /api/tokenize | /api/attention | /api/kv    the look-inside views ({"model": id, "text": ...})
    GET  /files/<path>              pictures, pages and JSON under the runs folder (the tour report)
    GET  /fonts/cjk.otf             the Chinese font of our figures, for machines without one
    GET  /                          the pages (static/)

Every refused request is a 4xx with OpenAI's error object {"error": {"message", "type", "param", "code"}}: one
line saying what was wrong and what to do. Models run in worker threads (Starlette's thread pool), never on the
event loop, and at most `workers` generate at once; the others wait their turn.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from llmpath.config import ConfigError
from llmpath.data.corpora import DataError
from llmpath.serve.models import ModelStore, Piece, Sampling, ServedModel, UnknownModel

STATIC = Path(__file__).parent / "static"
FILE_TYPES = {".html", ".png", ".svg", ".json", ".jsonl", ".md", ".txt"}  # what /files serves from the runs folder


@dataclass
class Limits:
    """What one request may ask for: the body, the prompt, the new tokens, the alternatives per token."""

    max_body_bytes: int = 1_000_000
    max_prompt_chars: int = 20_000
    max_tokens: int = 1024
    max_top_logprobs: int = 20  # OpenAI allows 0..20 (chat) and 0..5 (completions)
    workers: int = 4  # generations at once; more wait


class RequestError(Exception):
    """A request the API refuses: HTTP status, one-line message, the parameter at fault."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_response(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status)


# ------------------------------------------------------------------------------------------------ request checks

async def read_body(request: Request, limits: Limits) -> dict:
    """The JSON object of the body, refused when too large (413), not JSON or not an object (400)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise RequestError(413, f"the request body is {int(declared):,} bytes; the limit is "
                                f"{limits.max_body_bytes:,}: send a shorter prompt")
    body = bytearray()
    async for chunk in request.stream():  # counted as it arrives: a body without a length is bounded too
        body += chunk
        if len(body) > limits.max_body_bytes:
            raise RequestError(413, f"the request body is over the limit of {limits.max_body_bytes:,} bytes; "
                                    "send a shorter prompt")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(400, f"the body is not valid JSON ({e}); send a JSON object") from None
    if not isinstance(data, dict):
        raise RequestError(400, f"the body is a JSON {type(data).__name__}; send a JSON object")
    return data


def _number(data: dict, key: str, default: Any, kind: type, low: float | None = None, high: float | None = None):
    value = data.get(key, default)
    if value is None:
        return default
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        ok = ok and float(value).is_integer()
    if not ok:
        raise RequestError(400, f"{key} must be {'an integer' if kind is int else 'a number'}, not {value!r:.40}",
                           key)
    if (low is not None and value < low) or (high is not None and value > high):
        span = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise RequestError(400, f"{key}={value} is out of range; give a value {span}", key)
    return kind(value)


def _stops(data: dict) -> list[str]:
    stop = data.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > 4:
        raise RequestError(400, "stop must be a string or a list of up to 4 strings", "stop")
    return stops


def sampling(data: dict, served: ServedModel, prompt_len: int, limits: Limits, default_max: int | None,
             top_logprobs: int, slide: bool = False) -> Sampling:
    """The request's sampling options, checked against the model's context: the prompt must fit, and so must
    prompt + max_tokens unless `slide` (a text continuation may go on past the context, the model then reading
    the last block_size tokens, as `llmpath gpt sample` does; a chat reply may not: it would lose the question)."""
    if _number(data, "n", 1, int, 1) != 1:
        raise RequestError(400, "n > 1 is not supported; send one request per completion", "n")
    room = served.block_size - prompt_len
    if room < 1:
        raise RequestError(400, f"the prompt is {prompt_len} tokens and this model reads at most "
                                f"{served.block_size}; shorten it (or drop earlier turns)", "messages"
                           if served.info.kind == "chat" else "prompt", "context_length_exceeded")
    max_tokens = data.get("max_completion_tokens", data.get("max_tokens"))
    if max_tokens is None:
        max_tokens = min(room, limits.max_tokens) if default_max is None else min(default_max, room)
    max_tokens = _number({"max_tokens": max_tokens}, "max_tokens", 16, int, 1, limits.max_tokens)
    if max_tokens > room and not slide:
        raise RequestError(400, f"the prompt is {prompt_len} tokens and max_tokens={max_tokens}, but this model "
                                f"reads at most {served.block_size} tokens; ask for at most {room} new ones",
                           "max_tokens", "context_length_exceeded")
    return Sampling(max_tokens=max_tokens, temperature=_number(data, "temperature", 1.0, float, 0, 2),
                    top_p=_number(data, "top_p", 1.0, float, 0, 1), stop=_stops(data),
                    seed=_number(data, "seed", None, int, 0, 2**63 - 1), top_logprobs=top_logprobs)


def _prompt_text(data: dict, limits: Limits) -> str:
    prompt = data.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]  # OpenAI's client may send one prompt as a list of one
    if not isinstance(prompt, str):
        raise RequestError(400, "prompt must be a string (one prompt per request)", "prompt")
    if len(prompt) > limits.max_prompt_chars:
        raise RequestError(400, f"the prompt is {len(prompt):,} characters; the limit is "
                                f"{limits.max_prompt_chars:,}", "prompt", "context_length_exceeded")
    return prompt


def _messages(data: dict, limits: Limits) -> list[dict]:
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "messages must be a non-empty list of {role, content}", "messages")
    out = []
    for k, m in enumerate(messages):
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):  # OpenAI's content parts: only text ones are understood here
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise RequestError(400, f"message {k} has a non-text part; these models read text only", "messages")
            content = "".join(str(p.get("text", "")) for p in content)
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                or not isinstance(content, str):
            raise RequestError(400, f"message {k} must be {{'role': system|user|assistant, 'content': a string}}",
                               "messages")
        out.append({"role": m["role"], "content": content})
    if sum(len(m["content"]) for m in out) > limits.max_prompt_chars:
        raise RequestError(400, f"the messages are over {limits.max_prompt_chars:,} characters; shorten them",
                           "messages", "context_length_exceeded")
    return out


# ------------------------------------------------------------------------------------------------ the OpenAI shape

def _completion_logprobs(pieces: list[Piece], offset: int) -> dict:
    offsets, at = [], offset
    for p in pieces:
        offsets.append(at)
        at += len(p.text)
    return {"tokens": [p.token_text for p in pieces], "token_logprobs": [p.logprob for p in pieces],
            "top_logprobs": [{t: lp for t, _, lp in p.top} for p in pieces], "text_offset": offsets}


def _chat_logprobs(pieces: list[Piece]) -> dict:
    return {"content": [{"token": p.token_text, "logprob": p.logprob, "bytes": list(p.token_bytes),
                         "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(b)} for t, b, lp in p.top]}
                        for p in pieces], "refusal": None}


class Generation:
    """One request's generation: run in a worker thread, at most `workers` at once across the app."""

    def __init__(self, served: ServedModel, prompt: list[int], s: Sampling, gate: threading.Semaphore):
        self.served, self.prompt, self.s, self.gate = served, prompt, s, gate
        self.completion = None

    def pieces(self):
        """The pieces as a (blocking) iterator; holds a worker slot while it runs."""
        with self.gate:
            self.completion = self.served.complete(self.prompt, self.s)
            yield from self.completion

    @property
    def finish_reason(self) -> str:
        return self.completion.finish_reason if self.completion else "length"

    def usage(self) -> dict:
        n = self.completion.completion_tokens if self.completion else 0
        return {"prompt_tokens": len(self.prompt), "completion_tokens": n, "total_tokens": len(self.prompt) + n}


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _stream(gen: Generation, chunk, final, include_usage: bool, first: dict | None = None):
    """Server-sent events: `first` (when given), one chunk per piece (`chunk(pieces)`), the finish chunk, usage if
    asked, [DONE]. A plain generator: Starlette pulls it in a worker thread, so the model never runs on the loop."""
    if first is not None:
        yield _sse(first)
    try:
        waiting: list[Piece] = []  # tokens holding only part of a character's bytes: sent with the one completing it
        for piece in gen.pieces():
            waiting.append(piece)
            if piece.text:
                yield _sse(chunk(waiting))
                waiting = []
        if waiting:
            yield _sse(chunk(waiting))
        yield _sse(final(gen.finish_reason))
        if include_usage:
            yield _sse({**final(None), "choices": [], "usage": gen.usage()})
    except (ConfigError, DataError, ValueError) as e:  # after the headers went out: an error event, then the end
        yield _sse({"error": {"message": str(e), "type": "invalid_request_error", "param": None, "code": None}})
    yield "data: [DONE]\n\n"


# ------------------------------------------------------------------------------------------------ the app

def create_app(runs_dir: str | Path = "runs", device: str = "cpu", limits: Limits | None = None) -> Starlette:
    """The playground over a runs folder; serve it with uvicorn (`llmpath serve` does)."""
    limits = limits or Limits()
    store = ModelStore(runs_dir, device)
    gate = threading.BoundedSemaphore(limits.workers)

    def served_model(data: dict) -> ServedModel:
        run_id = data.get("model")
        if not isinstance(run_id, str) or not run_id:
            raise RequestError(400, "model is missing; give a run id from GET /v1/models, e.g. 'gpt/small'", "model")
        return store.get(run_id)  # an unknown run: UnknownModel, answered 404 model_not_found by `refused`

    async def load(data: dict) -> ServedModel:
        return await run_in_threadpool(served_model, data)  # the first request of a run loads it: off the loop

    def model_object(r) -> dict:
        return {"id": r.id, "object": "model", "created": r.created, "owned_by": "llmpath", "kind": r.kind,
                "topic": r.topic, "block_size": r.block_size}

    async def models(request: Request) -> JSONResponse:
        infos = await run_in_threadpool(store.models)
        return JSONResponse({"object": "list", "data": [model_object(r) for r in infos]})

    async def one_model(request: Request) -> JSONResponse:
        run_id = request.path_params["model"]
        info = await run_in_threadpool(store.info, run_id)
        if not info.generates:
            raise UnknownModel(f"{run_id} is a run that does not generate text; GET /v1/models lists those that do")
        return JSONResponse(model_object(info))

    async def completions(request: Request) -> Response:
        data = await read_body(request, limits)
        served = await load(data)
        text = _prompt_text(data, limits)
        prompt = await run_in_threadpool(served.text_prompt, text)
        top = _number(data, "logprobs", 0, int, 0, min(5, limits.max_top_logprobs))
        want_logprobs = data.get("logprobs") is not None
        s = sampling(data, served, len(prompt), limits, default_max=16, top_logprobs=top, slide=True)
        gen = Generation(served, prompt, s, gate)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        echo = text if data.get("echo") else ""

        def obj(text: str, pieces: list[Piece], reason: str | None, offset: int = 0) -> dict:
            lp = _completion_logprobs(pieces, offset) if want_logprobs else None
            return {"id": rid, "object": "text_completion", "created": created, "model": served.info.id,
                    "choices": [{"index": 0, "text": text, "logprobs": lp, "finish_reason": reason}]}

        if data.get("stream"):
            sent = [len(echo)]

            def chunk(pieces: list[Piece]) -> dict:
                out = obj("".join(p.text for p in pieces), pieces, None, sent[0])
                sent[0] += len(out["choices"][0]["text"])
                return out

            body = _stream(gen, chunk, lambda reason: obj("", [], reason),
                           bool((data.get("stream_options") or {}).get("include_usage")),
                           first=obj(echo, [], None) if echo else None)
            return StreamingResponse(body, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        pieces = await run_in_threadpool(lambda: list(gen.pieces()))
        out = obj(echo + "".join(p.text for p in pieces), pieces, gen.finish_reason, len(echo))
        return JSONResponse({**out, "usage": gen.usage()})

    async def chat_completions(request: Request) -> Response:
        data = await read_body(request, limits)
        served = await load(data)
        messages = _messages(data, limits)
        prompt = await run_in_threadpool(served.chat_prompt, messages)
        want_logprobs = bool(data.get("logprobs"))
        top = _number(data, "top_logprobs", 0, int, 0, limits.max_top_logprobs) if want_logprobs else 0
        s = sampling(data, served, len(prompt), limits, default_max=None, top_logprobs=top)
        gen = Generation(served, prompt, s, gate)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        base = {"id": rid, "created": created, "model": served.info.id, "system_fingerprint": None}

        if data.get("stream"):
            opened = [False]

            def chunk(pieces: list[Piece]) -> dict:
                delta = {"content": "".join(p.text for p in pieces)}
                if not opened[0]:  # OpenAI's first delta names the role
                    delta, opened[0] = {"role": "assistant", **delta}, True
                lp = _chat_logprobs(pieces) if want_logprobs else None
                return {**base, "object": "chat.completion.chunk",
                        "choices": [{"index": 0, "delta": delta, "logprobs": lp, "finish_reason": None}]}

            def final(reason: str | None) -> dict:
                delta = {} if opened[0] else {"role": "assistant", "content": ""}
                return {**base, "object": "chat.completion.chunk",
                        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}]}

            body = _stream(gen, chunk, final, bool((data.get("stream_options") or {}).get("include_usage")))
            return StreamingResponse(body, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        pieces = await run_in_threadpool(lambda: list(gen.pieces()))
        message = {"role": "assistant", "content": "".join(p.text for p in pieces), "refusal": None}
        return JSONResponse({**base, "object": "chat.completion", "usage": gen.usage(), "choices": [
            {"index": 0, "message": message, "logprobs": _chat_logprobs(pieces) if want_logprobs else None,
             "finish_reason": gen.finish_reason}]})

    # -------------------------------------------------------------------------------- the playground's own API

    async def runs(request: Request) -> JSONResponse:
        infos = await run_in_threadpool(store.runs)
        report = store.root / "tour" / "report.html"
        return JSONResponse({"runs": [r.public() for r in infos],
                             "report": "/files/tour/report.html" if report.exists() else None})

    async def metrics(request: Request) -> JSONResponse:
        from llmpath.train import read_metrics

        run_id = f"{request.path_params['topic']}/{request.path_params['name']}"
        info = await run_in_threadpool(store.info, run_id)
        path = info.path / "metrics.jsonl"
        rows = await run_in_threadpool(read_metrics, path) if path.exists() else []
        return JSONResponse({"id": info.id, "rows": rows})

    def look_inside(view: str):
        async def endpoint(request: Request) -> JSONResponse:
            from llmpath.serve import inspect

            data = await read_body(request, limits)
            text = data.get("text")
            if not isinstance(text, str) or not text:
                raise RequestError(400, "text must be a non-empty string", "text")
            if len(text) > limits.max_prompt_chars:
                raise RequestError(400, f"the text is {len(text):,} characters; the limit is "
                                        f"{limits.max_prompt_chars:,}", "text")
            served = await load(data)
            if view not in served.info.inspect:
                raise RequestError(400, f"{served.info.id} has no {view} view; it offers: "
                                        f"{', '.join(served.info.inspect) or 'none'}", "model")
            m, tok, topic = served.model, served.tok, served.info.topic

            def work() -> dict:
                with gate:  # in the worker thread: waiting for a slot never blocks the event loop
                    if view == "tokens":
                        tokens = inspect.token_pieces(tok, text)
                        return {"tokens": tokens, "count": len(tokens), "chars": len(text)}
                    if view == "attention":
                        return inspect.attention(m, tok, topic, text)
                    return inspect.kv_cache(m, tok, topic, text)

            result = await run_in_threadpool(work)
            return JSONResponse({"model": served.info.id, **result})

        return endpoint

    async def files(request: Request) -> Response:
        root = store.root.resolve()
        path = (root / request.path_params["path"]).resolve()
        if not path.is_relative_to(root) or path.suffix not in FILE_TYPES or not path.is_file():
            raise RequestError(404, f"no file /files/{request.path_params['path']} (the playground serves "
                                    f"{', '.join(sorted(FILE_TYPES))} files of the runs folder)")
        return FileResponse(path)

    async def cjk_font(request: Request) -> Response:
        from llmpath.plotting import cjk_font_files

        files = cjk_font_files()  # Noto Sans CJK SC from the mplfonts package: the font our figures use
        if not files:
            raise RequestError(404, "no CJK font installed (the mplfonts package ships one: `make install`)")
        return FileResponse(files[0], media_type="font/otf", headers={"Cache-Control": "max-age=86400"})

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    async def refused(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, RequestError):
            return error_response(exc.status, exc.message, exc.param, exc.code)
        if isinstance(exc, UnknownModel):
            return error_response(404, str(exc), "model", "model_not_found")
        if isinstance(exc, HTTPException):
            return error_response(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}")
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return error_response(400, first)

    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return error_response(500, f"internal error ({type(exc).__name__}: {first}); the server keeps serving. "
                                   "Please report it")

    routes = [
        Route("/v1/models", models),
        Route("/v1/models/{model:path}", one_model),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/api/runs", runs),
        Route("/api/runs/{topic}/{name}/metrics", metrics),
        Route("/api/tokenize", look_inside("tokens"), methods=["POST"]),
        Route("/api/attention", look_inside("attention"), methods=["POST"]),
        Route("/api/kv", look_inside("kv"), methods=["POST"]),
        Route("/files/{path:path}", files),
        Route("/healthz", healthz),
        Route("/fonts/cjk.otf", cjk_font),
        Route("/", index),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    handlers = {RequestError: refused, ConfigError: refused, DataError: refused, HTTPException: refused,
                Exception: crashed}
    app = Starlette(routes=routes, exception_handlers=handlers)
    app.state.store, app.state.limits = store, limits
    return app


@contextlib.contextmanager
def background_server(runs_dir: str | Path = "runs", device: str = "cpu", limits: Limits | None = None):
    """The app under uvicorn on 127.0.0.1 at a free port, in a thread of this process; yields its base URL.

        with background_server("runs") as url:      # tests, the docs' screenshots, a notebook
            openai.OpenAI(base_url=url + "/v1", api_key="-").models.list()
    """
    import socket

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # port 0: the system picks a free one
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(runs_dir, device, limits), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("the playground server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
