"""OpenAI-style errors: every failure answers `{"error": {"message", "type", "param", "code"}}`.

Client mistakes are 4xx `invalid_request_error`s (FastAPI's own validation errors included: no
raw 422 detail lists; malformed JSON is a 400); 5xx is only for our faults, and a response
never carries a traceback (the log does).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("mlx_qwen_tts.server")

_TYPES = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers

    @property
    def type(self) -> str:
        return _TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _one_line(text) -> str:
    return " ".join(str(text).split())


def _validation_message(errors) -> tuple[str, str | None, str]:
    """The first validation error as (message, param, code)."""
    if not errors:
        return "invalid request", None, "invalid_request"
    e = errors[0]
    loc = [str(p) for p in e.get("loc", ()) if p not in ("body",)]
    if e.get("type") == "json_invalid":
        return f"the body is not valid JSON ({_one_line(e.get('msg', ''))})", None, "invalid_json"
    param = loc[0] if loc else None  # the top-level field (a union adds its member names)
    kind = e.get("type", "")
    if kind == "value_error":  # our validators: the message follows the field's name
        return f"{param or 'body'} {_one_line(e.get('msg', '')).removeprefix('Value error, ')}", param, "invalid_value"
    if param == "voice" and kind != "missing":
        return 'voice must be a voice name or an object {"id": name}', param, "invalid_type"
    if kind == "missing":
        return f"{param or 'body'} is required", param, "missing_required_parameter"
    if kind == "extra_forbidden":
        return f"unknown parameter {param}", param, "unknown_parameter"
    if kind == "model_attributes_type":
        return "the body must be a JSON object", None, "invalid_type"
    return f"{param or 'body'}: {_one_line(e.get('msg', 'invalid value'))}", param, "invalid_value"


def install_error_handlers(app: FastAPI) -> None:
    def respond(request: Request, error: ApiError):
        record = request.scope.get("mlx_qwen_tts.record")  # the request's log line names the error
        if record is not None and error.code:
            record.fields["error"] = error.code
        return error.response()

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return respond(request, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        message, param, code = _validation_message(exc.errors())
        return respond(request, ApiError(400, message, param=param, code=code))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message, code = exc.detail if isinstance(exc.detail, str) else "request failed", None
        if exc.status_code == 404:
            message, code = f"no such endpoint: {request.method} {request.url.path}", "unknown_endpoint"
        elif exc.status_code == 405:
            message, code = f"{request.method} is not allowed on {request.url.path}", "method_not_allowed"
        return respond(request, ApiError(exc.status_code, message, code=code, headers=getattr(exc, "headers", None)))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return respond(request, ApiError(500, "internal server error; see the server log", code="internal_error"))
