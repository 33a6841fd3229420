"""The HTTP face of the server: OpenAI's ``/v1/models``, ``/v1/chat/completions`` and ``/v1/completions``.

Every failure answers in OpenAI's error format (``schemas.error_body``): 400 for a request
that does not validate, 401 for a wrong API key, 404 for an unknown model, 413 for a body
over the limit, 500 when generation fails, after which the server keeps serving.
Streams are server-sent events of OpenAI's chunk objects ending with ``data: [DONE]``.
"""
from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from jinja2 import TemplateError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..data.templates import render, resolve_template
from .generation import Outcome, Sampling, complete_text, stream_text
from .models import ServedModels
from .schemas import ChatRequest, CompletionRequest, error_body, new_id, now, usage

log = logging.getLogger("leantune.serve")


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1_000_000
    max_tokens: int = 2048          # the most a request may ask for
    default_max_tokens: int = 256   # when a request does not say


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.body = status, error_body(message, kind, param, code)


class _BodyTooLarge(Exception):
    pass


class Guard:
    """ASGI middleware, before anything reads the request: the API key (401), then the body size (413)."""

    def __init__(self, app, limit: int, api_key: str | None):
        self.app, self.limit, self.api_key = app, limit, api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.api_key is not None:
            scheme, _, given = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.api_key.encode()):
                return await _send_error(send, 401, error_body(
                    "missing or wrong API key (send 'Authorization: Bearer KEY')", code="invalid_api_key"))
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send)
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise _BodyTooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _BodyTooLarge:
            await self._refuse(send)

    async def _refuse(self, send):
        await _send_error(send, 413, error_body(f"request body over the server's limit of {self.limit} bytes "
                                                f"(leantune serve --max-body-bytes)", code="request_too_large"))


async def _send_error(send, status: int, error: dict) -> None:
    body = json.dumps(error).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0]
    where = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    if not where:  # the body parsed, but not to an object (or was sent as a form)
        return "the request body must be a JSON object, sent with Content-Type: application/json", None
    param = ".".join(where)
    return f"{param}: {first.get('msg', 'invalid')}", param


def create_app(served: ServedModels, api_key: str | None = None, limits: Limits = Limits()) -> FastAPI:
    """The FastAPI app answering for ``served``; ``api_key`` (if given) is required as a Bearer token."""
    app = FastAPI(title="leantune serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Guard, limit=limits.max_body_bytes, api_key=api_key)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse(exc.body, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return JSONResponse(error_body(message, param=param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return JSONResponse(error_body(message), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.error("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "server_error"), status_code=500)

    created = now()
    base = next((name for name, entry in served.entries.items() if entry.base), None)

    def known(name: str) -> None:
        if name not in served.entries:
            raise ApiError(404, f"the model {name!r} is not served here; GET /v1/models lists "
                                f"{', '.join(served.entries)}", param="model", code="model_not_found")

    def card(name: str) -> dict:
        """vLLM's model card: an adapter's parent is the base model (no folder paths leave the server)."""
        adapter = served.entries[name].adapter is not None
        return {"id": name, "object": "model", "created": created, "owned_by": "leantune", "root": name,
                "parent": base if adapter else None}

    def sampling(body: ChatRequest | CompletionRequest, prompt_ids: list[int]) -> Sampling:
        wanted = body.wanted_tokens() or limits.default_max_tokens
        if wanted > limits.max_tokens:
            raise ApiError(400, f"max_tokens: {wanted} is over the server's limit of {limits.max_tokens} "
                                f"(leantune serve --max-tokens-limit)", param="max_tokens")
        context = served.context_length
        if context and len(prompt_ids) + wanted > context:
            raise ApiError(400, f"the prompt ({len(prompt_ids)} tokens) and max_tokens ({wanted}) exceed the "
                                f"model's context of {context} tokens; shorten the prompt or ask for fewer tokens",
                           param="messages", code="context_length_exceeded")
        return Sampling(wanted, body.temperature, body.top_p, body.stops(), body.seed, body.repetition_penalty)

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [card(name) for name in served.entries]}

    @app.get("/v1/models/{name:path}")
    def model(name: str):
        known(name)
        return card(name)

    @app.post("/v1/chat/completions")
    def chat(body: ChatRequest):
        known(body.model)
        entry = served.entries[body.model]
        template = resolve_template(served.tokenizer, entry.template)
        messages = [m.as_template_message() for m in body.messages]
        if entry.ask is not None:  # a run trained with data.retrieval reads its documentation
            messages = entry.ask(messages, body.wanted_tokens() or limits.default_max_tokens)
        try:
            text = render(served.tokenizer, messages, template, add_generation_prompt=True)
        except TemplateError as exc:  # e.g. a template that wants user and assistant turns to alternate
            raise ApiError(400, f"messages: the chat template of {body.model!r} cannot render them: {exc}",
                           param="messages") from None
        prompt_ids = served.tokenizer(text, add_special_tokens=False)["input_ids"]
        return _answer(served, body, prompt_ids, sampling(body, prompt_ids), chat=True)

    @app.post("/v1/completions")
    def completions(body: CompletionRequest):
        known(body.model)
        prompt_ids = served.tokenizer(body.text())["input_ids"]
        return _answer(served, body, prompt_ids, sampling(body, prompt_ids), chat=False)

    return app


def _answer(served: ServedModels, body, prompt_ids: list[int], sampling: Sampling, chat: bool):
    rid, created = new_id("chatcmpl" if chat else "cmpl"), now()
    if body.stream:
        outcome = Outcome(prompt_tokens=len(prompt_ids))
        pieces = stream_text(served, body.model, prompt_ids, sampling, outcome)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = _events(pieces, outcome, rid, created, body.model, chat, include_usage)
        return StreamingResponse(events, media_type="text/event-stream")
    try:
        outcome = complete_text(served, body.model, prompt_ids, sampling)
    except Exception as exc:  # noqa: BLE001 - one request failed; the server keeps serving
        log.error("generation failed for model %s: %s: %s", body.model, type(exc).__name__, exc)
        raise ApiError(500, f"generation failed: {type(exc).__name__}: {exc}", kind="server_error") from None
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": outcome.text},
                  "finish_reason": outcome.finish_reason, "logprobs": None}
    else:
        choice = {"index": 0, "text": outcome.text, "finish_reason": outcome.finish_reason, "logprobs": None}
    return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
            "model": body.model, "choices": [choice],
            "usage": usage(outcome.prompt_tokens, outcome.completion_tokens)}


def _events(pieces: Iterator[str], outcome: Outcome, rid: str, created: int, model: str, chat: bool,
            include_usage: bool) -> Iterator[str]:
    """Server-sent events: OpenAI's chunks (the role first, for chat), the finish reason, [DONE]."""
    kind = "chat.completion.chunk" if chat else "text_completion"

    def event(choices: list, **extra) -> str:
        return "data: " + json.dumps({"id": rid, "object": kind, "created": created, "model": model,
                                      "choices": choices, **extra}) + "\n\n"

    def choice(text: str | None, finish: str | None) -> dict:
        if chat:
            delta = {} if text is None else {"content": text}
            return {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}

    if chat:
        yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None,
                      "logprobs": None}])
    try:
        for piece in pieces:
            yield event([choice(piece, None)])
    except Exception as exc:  # noqa: BLE001 - the status line is sent: the error goes in the stream
        log.error("generation failed for model %s: %s: %s", model, type(exc).__name__, exc)
        yield "data: " + json.dumps(error_body(f"generation failed: {type(exc).__name__}: {exc}",
                                               "server_error")) + "\n\n"
        yield "data: [DONE]\n\n"
        return
    yield event([choice(None, outcome.finish_reason)])
    if include_usage:
        yield event([], usage=usage(outcome.prompt_tokens, outcome.completion_tokens))
    yield "data: [DONE]\n\n"
