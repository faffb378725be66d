"""The FastAPI application: both APIs over one engine, API-key checking, and errors in one JSON shape."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from runtime.server import native, openai_api
from runtime.server.errors import APIError, install_error_handlers
from runtime.server.state import ServerState

# Routes open without the API key.
PUBLIC_PATHS = frozenset({"/health"})


def create_app(engine: Any, api_key: str | None = None, served_model_name: str | None = None) -> FastAPI:
    """An ASGI app serving ``engine`` through SGLang's native API and the OpenAI API.

    With ``api_key``, every route but ``/health`` requires ``Authorization: Bearer <api_key>``. The OpenAI API
    accepts as ``model`` the served name (``served_model_name``, else the ``--model`` argument), the model
    argument, and the resolved model path. The app does not own the engine: shut it down yourself."""
    from runtime import __version__

    args = getattr(engine, "args", None)
    model_arg = getattr(args, "model", None) or engine.model_path
    name = served_model_name or model_arg
    aliases = {name, model_arg, str(engine.model_path)}
    app = FastAPI(title="sglang-dsl", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = ServerState(engine=engine, served_model_name=name, model_aliases=frozenset(aliases),
                                   api_key=api_key or None)
    install_error_handlers(app)

    if api_key:
        @app.middleware("http")
        async def require_api_key(request: Request, call_next) -> Response:
            if request.url.path not in PUBLIC_PATHS and not _authorized(request, api_key):
                return APIError("invalid or missing API key: send 'Authorization: Bearer <key>'", 401,
                                code="invalid_api_key").response()
            return await call_next(request)

    app.include_router(native.router)
    app.include_router(openai_api.router)
    return app


def _authorized(request: Request, api_key: str) -> bool:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())
