"""Personalizer's error answers: `{"error": {"code", "message", "innerError": {"code"}}}`.

The compatibility routes raise the service's domain errors like every route; `PersonalizerRoute`
turns them into the status and code Personalizer's clients expect:

- a request that breaks a rule is a **400** (Personalizer has no 422): code `BadRequest` in
  v1.0, else the operation's own code (`InvalidRankRequest`, `InvalidRewardRequest`,
  `InvalidEventIdToActivate`, `InvalidServiceConfiguration`, `InvalidPolicyConfiguration`,
  `InvalidEvaluationContract`, `InvalidMultiSlotApiAccess`, ...);
- 404: `ResourceNotFound` (`EvaluationNotFound` for an evaluation in the previews);
- 409: `Conflict`; 413: `PayloadSizeExceeded`; 429: `TooManyRequests` with `Retry-After`;
  503: `ServiceUnavailable` with `Retry-After`.

An error raised with one of Personalizer's own codes (CamelCase: `OperationNotAllowed`,
`InvalidModelImportSignature`, ...) keeps it. `innerError.code` keeps the native code (e.g.
`limit_exceeded`, `reward_out_of_range`). Key errors (401, 403) are answered as on every route
(`unauthorized`, `forbidden`, with `WWW-Authenticate`): both SDKs raise them as their own
exceptions with that status.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from decision_service.errors import describe_validation, status_of
from explore.errors import (
    DomainError,
    Forbidden,
    InvalidInput,
    TooManyRequests,
    Unauthorized,
    Unavailable,
)
from log.store import is_unreachable

__all__ = ["OPERATION_CODES", "PersonalizerRoute", "personalizer_error"]

V1_0 = "v1.0"
# endpoint function name -> the code of a bad request in the previews
OPERATION_CODES: dict[str, str] = {
    "rank": "InvalidRankRequest",
    "reward": "InvalidRewardRequest",
    "activate": "InvalidEventIdToActivate",
    "multislot_rank": "InvalidMultiSlotRankRequest",
    "multislot_reward": "InvalidMultiSlotRewardRequest",
    "multislot_activate": "InvalidEventIdToActivate",
    "get_service_configuration": "InvalidServiceConfiguration",
    "put_service_configuration": "InvalidServiceConfiguration",
    "get_policy": "InvalidPolicyConfiguration",
    "put_policy": "InvalidPolicyConfiguration",
    "reset_policy": "InvalidPolicyConfiguration",
    "create_evaluation_2022": "InvalidEvaluationContract",
    "create_evaluation_v1": "InvalidEvaluationContract",
    "get_evaluation_route": "InvalidEvaluationContract",
    "list_evaluations": "InvalidEvaluationContract",
    "apply_from_evaluation": "InvalidEvaluationContract",
    "import_model": "InvalidModelImportFormat",
}
_BY_STATUS = {
    404: "ResourceNotFound",
    409: "Conflict",
    413: "PayloadSizeExceeded",
    429: "TooManyRequests",
    503: "ServiceUnavailable",
}


def personalizer_error(
    status: int, code: str, message: str, inner: str, headers: dict[str, str] | None = None
) -> Response:
    body = {"error": {"code": code, "message": message, "innerError": {"code": inner}}}
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=headers
    )


def _code(status: int, err: DomainError, operation: str, version: str) -> str:
    if err.code[:1].isupper():  # raised with one of Personalizer's own codes
        return err.code
    if status == 400:
        if version == V1_0:
            return "BadRequest"
        return OPERATION_CODES.get(operation, "BadRequest")
    if status == 404 and err.code == "evaluation_not_found" and version != V1_0:
        return "EvaluationNotFound"
    return _BY_STATUS.get(status, "BadRequest")


def _answer(err: DomainError, operation: str, version: str) -> Response:
    status = status_of(err)
    if status == 500:
        raise err  # not a client error: the app's handler logs it and answers 500
    if status == 422:
        status = 400
    headers = None
    if isinstance(err, TooManyRequests | Unavailable):
        headers = {"Retry-After": str(max(int(err.retry_after_s), 0))}
    return personalizer_error(
        status, _code(status, err, operation, version), err.message, err.code, headers
    )


class PersonalizerRoute(APIRoute):
    """A route whose domain errors answer in Personalizer's form (module docstring)."""

    version = V1_0

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        operation = getattr(self.endpoint, "__name__", "")
        version = self.version

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except (Unauthorized, Forbidden):
                raise  # answered as on every route
            except DomainError as err:
                return _answer(err, operation, version)
            except RequestValidationError as err:
                message = describe_validation(list(err.errors()))
                return _answer(InvalidInput(message), operation, version)
            except Exception as err:
                if not is_unreachable(err):
                    raise  # a bug: logged and answered 500 by the app
                unavailable = Unavailable("the event store is unreachable; retry shortly")
                return _answer(unavailable, operation, version)

        return route


def route_class(version: str) -> type[PersonalizerRoute]:
    """The route class of one API version."""
    return type(f"PersonalizerRoute_{version}", (PersonalizerRoute,), {"version": version})
