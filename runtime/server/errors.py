"""Errors the server answers with, in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}`` (a superset of
SGLang's native ``{"error": {"message"}}``), and the handlers that turn every failure into one: a bad request
never gets a 500 or a traceback."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from runtime.errors import ChatTemplateError
from runtime.requests import InvalidRequestError
from runtime.server.dispatch import ClientGone

logger = logging.getLogger("runtime.server")

_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    503: "service_unavailable",
}


class APIError(Exception):
    """A failure to report to the client with ``status`` and a one-line ``message``."""

    def __init__(
        self, message: str, status: int = 400, *, param: str | None = None, code: str | int | None = None,
        type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code
        self.type = type or _STATUS_TYPES.get(status, "server_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def as_api_error(err: BaseException) -> APIError:
    """The ``APIError`` to report for any exception: user-fixable ones are 400s, anything else a 500 with a
    short message (the traceback goes to the server log only)."""
    if isinstance(err, APIError):
        return err
    if isinstance(err, (InvalidRequestError, ChatTemplateError)):
        return APIError(str(err) or type(err).__name__, 400)
    logger.error("request failed", exc_info=err)
    return APIError(f"internal server error: {type(err).__name__}: {err}", 500, type="server_error")


def install_error_handlers(app: FastAPI) -> None:
    async def api_error(_: Request, err: APIError) -> JSONResponse:
        return err.response()

    async def known_error(_: Request, err: Exception) -> JSONResponse:
        return as_api_error(err).response()

    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        message = str(err.detail)
        if err.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        elif err.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        return APIError(message, err.status_code).response()

    async def validation_error(_: Request, err: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in err.errors()[:3]]
        return APIError("; ".join(parts) or "invalid request", 400).response()

    async def client_gone(_: Request, err: ClientGone) -> Response:
        return Response(status_code=499)  # nobody is listening; nginx's "client closed request"

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(ClientGone, client_gone)
    app.add_exception_handler(InvalidRequestError, known_error)
    app.add_exception_handler(ChatTemplateError, known_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, known_error)
