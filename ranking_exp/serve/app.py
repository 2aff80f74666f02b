"""The HTTP API (FastAPI on uvicorn): ranking, TensorFlow-Serving-style predict, metadata, health.

Every error is a JSON body ``{"error": "..."}`` with its status code, and the server goes on
serving. Request bodies are read and decoded here (not through pydantic models) so that
validation follows the model's FeatureSpec exactly and costs little per document.
"""
from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ranking_exp.serve.batcher import MicroBatcher
from ranking_exp.serve.model import ServedModel
from ranking_exp.serve.schema import RequestError, RequestParser

try:  # several times faster than json on request bodies of numbers; json still decides on errors
    import orjson
except ImportError:  # pragma: no cover - a declared dependency
    orjson = None

log = logging.getLogger("ranking_exp.serve")


def _loads(body: bytes) -> Any:
    if orjson is not None:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass  # malformed, or NaN/Infinity literals and huge integers: json reads those and explains the rest
    return json.loads(body)


def _json(payload: Any, status: int = 200) -> Response:
    if orjson is not None:
        body = orjson.dumps(payload)
    else:
        body = json.dumps(payload, separators=(",", ":"))
    return Response(body, status_code=status, media_type="application/json")


def _error(status: int, message: str) -> Response:
    return Response(json.dumps({"error": message}), status_code=status, media_type="application/json")


class BodyLimit:
    """ASGI middleware: 413 for a request whose Content-Length is over the limit, before reading it.

    Bodies without a Content-Length (chunked) are counted while read (:func:`read_json`).
    """

    def __init__(self, app, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            for key, value in scope["headers"]:
                if key == b"content-length":
                    try:
                        too_big = int(value) > self.max_body_bytes
                    except ValueError:
                        too_big = False
                    if too_big:
                        response = _error(413, f"body: {int(value)} bytes, more than the limit of "
                                               f"{self.max_body_bytes} bytes")
                        response.headers["connection"] = "close"
                        await response(scope, receive, send)
                        return
                    break
        await self.app(scope, receive, send)


async def read_json(request: Request, limit: int) -> Any:
    """The decoded JSON body; 413 past ``limit`` bytes, 400 when it is not JSON."""
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(413, f"body: more than the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise RequestError(400, "body: the client disconnected before sending it all") from None
    body = b"".join(chunks)
    if not body.strip():
        raise RequestError(400, "body: empty (expected a JSON object)")
    try:
        return _loads(body)
    except json.JSONDecodeError as e:
        raise RequestError(400, f"body: malformed JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    except UnicodeDecodeError:
        raise RequestError(400, "body: malformed JSON: not UTF-8 text") from None
    except RecursionError:
        raise RequestError(400, "body: malformed JSON: nested too deeply") from None


def _finite(scores: np.ndarray) -> np.ndarray:
    if not np.isfinite(scores).all():
        raise RequestError(500, "the model returned a non-finite score")
    return scores


def _ranked(scores: np.ndarray) -> dict[str, list]:
    order = np.argsort(-_finite(scores), kind="stable")
    return {"scores": scores.astype(np.float64).tolist(), "ranking": order.tolist()}


def create_app(model: ServedModel, *, max_documents: int = 1000, max_queries: int = 100,
               max_body_bytes: int = 10 * 1024 * 1024, max_batch_size: int = 32, max_wait_ms: float = 0.0,
               workers: int = 1, inline_max_documents: int = 4096):
    """The ASGI app serving ``model`` (FastAPI wrapped in the body-size limit)."""
    parser = RequestParser(model.spec, max_documents=max_documents, max_queries=max_queries)
    batcher = MicroBatcher(lambda queries: model.score(queries, max_batch_size), max_batch_size=max_batch_size,
                           max_wait_ms=max_wait_ms, workers=workers, inline_max_documents=inline_max_documents)
    metadata = model.metadata()
    metadata["limits"] = {"max_documents": max_documents, "max_queries": max_queries,
                          "max_body_bytes": max_body_bytes}
    metadata["batching"] = {"max_batch_size": max_batch_size, "max_wait_ms": max_wait_ms, "workers": workers,
                            "inline_max_documents": inline_max_documents}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        app.state.ready = True
        log.info("model %r version %s ready (%s)", model.name, model.version, model.model_dir)
        try:
            yield
        finally:
            app.state.ready = False
            await batcher.stop()

    app = FastAPI(title="ranking_exp ranker", version=model.version, lifespan=lifespan,
                  description=f"Serves model {model.name!r}: POST /v1/rank, POST /v1/models/{model.name}:predict")
    app.state.ready = False
    app.state.batcher = batcher

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, e: RequestError):
        return _error(e.status, e.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        message = {404: f"no such endpoint: {request.method} {request.url.path}",
                   405: f"method {request.method} not allowed on {request.url.path}"}.get(e.status_code, str(e.detail))
        return _error(e.status_code, message)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, e: Exception):
        log.exception("internal error on %s", request.url.path)
        return _error(500, f"internal error: {type(e).__name__}: {e}")

    def _check_name(name: str) -> None:
        if name != model.name:
            raise RequestError(404, f"model {name!r} not found (this server serves {model.name!r})")

    schema = {k: v for k, v in model.spec.request_schema().items() if k != "$schema"}
    rank_body = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
        "oneOf": [schema, {"type": "object", "required": ["queries"],
                           "properties": {"queries": {"type": "array", "items": schema}}}]}}}}}

    @app.post("/v1/rank", openapi_extra=rank_body, summary="Score and rank one query's documents, or a batch")
    async def rank(request: Request):
        queries, batched = parser.rank_request(await read_json(request, max_body_bytes))
        scores = await batcher.submit(queries)
        if batched:
            return _json({"results": [_ranked(s) for s in scores]})
        return _json(_ranked(scores[0]))

    @app.post("/v1/models/{name}:predict", summary="TensorFlow Serving REST predict (instances or inputs)")
    async def predict(name: str, request: Request):
        _check_name(name)
        queries, form = parser.tf_request(await read_json(request, max_body_bytes))
        scores = [_finite(s).astype(np.float64).tolist() for s in await batcher.submit(queries)]
        return _json({"predictions": scores} if form == "row" else {"outputs": scores})

    @app.get("/v1/models/{name}", summary="The model's metadata: feature spec, version, source run")
    async def model_metadata(name: str):
        _check_name(name)
        return _json(metadata)

    @app.get("/v1/models/{name}/metadata", include_in_schema=False)
    async def model_metadata_alias(name: str):
        _check_name(name)
        return _json(metadata)

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz():
        return _json({"status": "ok"})

    @app.get("/readyz", summary="Readiness: the model is loaded, warmed up and being served")
    async def readyz():
        if app.state.ready and batcher.running:
            return _json({"status": "ready", "model": model.name, "version": model.version,
                          "model_calls": batcher.calls, "queries_scored": batcher.scored})
        return _error(503, "not ready")

    return BodyLimit(app, max_body_bytes)
