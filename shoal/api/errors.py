"""The one table from errors to HTTP status codes, and the handlers that answer with it."""
from __future__ import annotations

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from .. import errors
from ..errors import ShoalError

STATUS: dict[type[ShoalError], int] = {
    errors.InvalidSpec: 422,
    errors.SourceNotFound: 422,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.TooLarge: 413,
    errors.StoreUnavailable: 503,
    errors.StoreFull: 507,
    errors.StoreCompacted: 410,       # as Kubernetes answers a watch from a compacted version
    errors.ClusterError: 503,
    errors.NodeUnreachable: 502,
    errors.LogIncomplete: 410,        # the rest of the log is gone with its node
    errors.TaskFailed: 409,           # the task's state does not allow what was asked
    errors.FlowFailed: 409,
    errors.FlowCancelled: 409,
    errors.SourceError: 502,          # a store outside shoal (files, object store) failed
    errors.SinkError: 502,            # likewise: a file system or database refused
    errors.ShoalError: 500,
    errors.InternalError: 500,
}
"""Status per class; a class not listed takes its nearest listed ancestor's. Deliberately
500 (a bug if one reaches an HTTP answer): ShoalError raised bare, and InternalError with
its branch (SetupError, FilterFailed, BadRecordsExceeded, LostDriverRole, StreamError,
StreamBroken, UpstreamFailed, UpstreamLost), which are caught on the node that raised them."""

INTERNAL = (errors.ShoalError, errors.InternalError)


def status_of(e: ShoalError | type[ShoalError]) -> int:
    cls = e if isinstance(e, type) else type(e)
    return next(STATUS[c] for c in cls.__mro__ if c in STATUS)


def _response(data, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def install(app: FastAPI) -> None:
    """Answer every ShoalError with its status and body, and FastAPI's own validation
    errors as InvalidSpec (422), worded like every other problem in input."""

    @app.exception_handler(ShoalError)
    async def _shoal_error(request: Request, e: ShoalError):
        return _response(errors.to_body(e), status_of(e))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        # FastAPI's locations start with where the value came from (body, query, path)
        errs = [dict(err, loc=tuple(err["loc"])[1:]) for err in e.errors()]
        return _response(errors.to_body(errors.InvalidSpec(errors.describe_validation(errs, whole="body"))), 422)
