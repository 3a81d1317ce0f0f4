"""Azure Personalizer's REST API over the native decision path (no second implementation).

Three base paths (`routers()`): `/personalizer/v1.0` (the legacy SDK
`azure-cognitiveservices-personalizer`), `/personalizer/v1.1-preview.3`, and `/personalizer` with
`?api-version=2022-09-01-preview` (the SDK `azure-ai-personalizer`). The previews add multi-slot
rank, reward and activate, applyFromEvaluation and model import.

**Which loop.** One Personalizer resource is one loop. The key (`Ocp-Apim-Subscription-Key`, or
`Authorization: Bearer`) selects it: a key scoped to exactly one loop acts on that loop; an
unscoped key (every loop, e.g. the admin key) acts on the `default` loop; a key scoped to several
loops names no single resource and is refused (403 `forbidden`).

Rank, reward and activate call the same `Service` methods as `/v1/loops/{loop}/...`
(`decision_service/personalizer/mapping.py` translates the bodies): the same validation, store,
idempotency, joiner and learner. Statuses are Personalizer's: rank 201, reward and activate 204
with an empty body. Errors answer Personalizer's codes (`errors.py`).

These routes are not in the native OpenAPI document (`include_in_schema=False`): their contract
is Personalizer's published specification, which the real SDKs are tested against.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from decision_service import routes_evaluations
from decision_service.auth import authorize
from decision_service.personalizer import config as pconfig
from decision_service.personalizer import evaluations as pevaluations
from decision_service.personalizer import mapping
from decision_service.personalizer.errors import route_class
from decision_service.routes import read_body, read_json
from decision_service.service import Service
from deploy.registry import live_version, load_artifact, register
from explore.errors import Conflict, Forbidden, InvalidInput, NotFound
from learn.offline_eval_spec import EvaluationSpec, SpecError
from log.evaluations import EvaluationRecord, get_evaluation
from log.loops import DEFAULT_LOOP, LoopConfig, get_loop, update_loop
from log.personalizer_evaluations import (
    PersonalizerEvaluation,
    add_personalizer_evaluation,
    delete_personalizer_evaluation,
    get_personalizer_evaluation,
    list_personalizer_evaluations,
)
from log.personalizer_reads import apprentice_metrics, log_date_range, model_times
from log.store import get_stored_decision
from policies import check_model_args

__all__ = ["API_VERSION_2022", "BASES", "routers"]

API_VERSION_2022 = "2022-09-01-preview"
V1_0, V1_1 = "v1.0", "v1.1-preview.3"
BASES = {V1_0: "/personalizer/v1.0", V1_1: "/personalizer/v1.1-preview.3"}
BASES[API_VERSION_2022] = "/personalizer"
MODEL_MANIFEST = "manifest.json"
MODEL_FILE = "model.vw"


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _no_content() -> Response:
    return Response(status_code=204)


async def resource(request: Request, permission: str, version: str) -> str:
    """Check the key (401/403 as on every route) and return the loop it selects."""
    principal = await authorize(request, permission)
    if version == API_VERSION_2022:
        given = request.query_params.get("api-version")
        if given != API_VERSION_2022:
            raise InvalidInput(
                f"api-version must be {API_VERSION_2022} on /personalizer (got {given!r}); "
                "v1.0 and v1.1-preview.3 are served under /personalizer/<version>",
                "unsupported_api_version",
            )
    if principal.loops is None:
        return DEFAULT_LOOP
    if len(principal.loops) == 1:
        return principal.loops[0]
    raise Forbidden(
        "a key scoped to several loops names no single Personalizer resource: use a key "
        "scoped to exactly one loop (or an unscoped key, which acts on the default loop)",
        "forbidden",
    )


async def _stored_config(service: Service, loop: str) -> LoopConfig:
    stored = await run_in_threadpool(get_loop, service.engine, loop)
    if stored is None:
        raise NotFound(f"loop {loop!r} does not exist", "loop_not_found")
    return stored.config


async def _update(
    service: Service, loop: str, change: Callable[[LoopConfig], LoopConfig]
) -> LoopConfig:
    """Apply `change` to the loop's stored configuration: one read-modify-write transaction in
    `log.loops.update_loop` (concurrent PUTs never lose each other's update); what `change`
    raises (InvalidInput) writes nothing."""
    stored = await run_in_threadpool(update_loop, service.engine, loop, change)
    if stored is None:
        raise NotFound(f"loop {loop!r} does not exist", "loop_not_found")
    await run_in_threadpool(service.loops.install, stored)
    return stored.config


def _slot_ids(context: dict[str, Any], event_id: str) -> list[str]:
    ids = context.get(mapping.SLOT_IDS)
    if not isinstance(ids, list):
        raise InvalidInput(f"event {event_id!r} is not a multi-slot event", "not_multislot")
    return [str(x) for x in ids]


def routers() -> list[APIRouter]:
    """One router per API version (their paths never overlap: `/personalizer/v1.0/...`,
    `/personalizer/v1.1-preview.3/...`, `/personalizer/...`)."""
    return [_router(V1_0), _router(V1_1), _router(API_VERSION_2022)]


def _router(version: str) -> APIRouter:
    router = APIRouter(
        prefix=BASES[version], route_class=route_class(version), include_in_schema=False
    )
    preview = version != V1_0

    # -------------------------------------------------------------------- rank, reward, activate
    @router.post("/rank", status_code=201)
    async def rank(request: Request) -> Response:
        loop = await resource(request, "decide", version)
        service = _service(request)
        body = mapping.rank_body(await read_json(request))
        native, _ = await service.rank(loop, body)
        return _json(mapping.rank_response(native), 201)

    @router.post("/events/{event_id:path}/reward", status_code=204)
    async def reward(request: Request, event_id: str) -> Response:
        loop = await resource(request, "decide", version)
        body = await read_json(request)
        value = mapping.reward_value(body.get("value") if isinstance(body, dict) else None)
        await _service(request).reward(loop, event_id, {"value": value})
        return _no_content()

    @router.post("/events/{event_id:path}/activate", status_code=204)
    async def activate(request: Request, event_id: str) -> Response:
        loop = await resource(request, "decide", version)
        await _activate(_service(request), loop, event_id)
        return _no_content()

    if preview:

        @router.post("/multislot/rank", status_code=201)
        async def multislot_rank(request: Request) -> Response:
            loop = await resource(request, "decide", version)
            body = mapping.multislot_rank_body(await read_json(request))
            native, _ = await _service(request).rank(loop, body)
            slot_ids = body["context"][mapping.SLOT_IDS]
            return _json(mapping.multislot_response(native, slot_ids), 201)

        @router.post("/multislot/events/{event_id:path}/reward", status_code=204)
        async def multislot_reward(request: Request, event_id: str) -> Response:
            loop = await resource(request, "decide", version)
            service = _service(request)
            body = await read_json(request)
            record = await run_in_threadpool(
                get_stored_decision, service.engine, service.writer.index, loop, event_id
            )
            if record is None:
                raise NotFound(f"no decision {event_id!r}", "event_not_found")
            rewards = mapping.slot_rewards(body, _slot_ids(record.context, event_id))
            for slot, value in rewards:
                await service.reward(loop, event_id, {"value": value, "slot": slot})
            return _no_content()

        @router.post("/multislot/events/{event_id:path}/activate", status_code=204)
        async def multislot_activate(request: Request, event_id: str) -> Response:
            loop = await resource(request, "decide", version)
            await _activate(_service(request), loop, event_id)
            return _no_content()

    # ---------------------------------------------------------------------- configuration
    @router.get("/configurations/service")
    async def get_service_configuration(request: Request) -> Response:
        loop = await resource(request, "read", version)
        service = _service(request)
        return _json(await _service_configuration(service, loop))

    @router.put("/configurations/service")
    async def put_service_configuration(request: Request) -> Response:
        loop = await resource(request, "configure", version)
        service = _service(request)
        body = await read_json(request)
        now = datetime.now(UTC)
        await _update(
            service, loop, lambda config: pconfig.apply_service_configuration(config, body, now)
        )
        return _json(await _service_configuration(service, loop))

    @router.get("/configurations/policy")
    async def get_policy(request: Request) -> Response:
        loop = await resource(request, "read", version)
        return _json(pconfig.policy_json(await _stored_config(_service(request), loop)))

    @router.put("/configurations/policy")
    async def put_policy(request: Request) -> Response:
        loop = await resource(request, "configure", version)
        service = _service(request)
        body = await read_json(request)
        now = datetime.now(UTC)
        config = await _update(service, loop, lambda c: pconfig.apply_policy(c, body, now))
        return _json(pconfig.policy_json(config))

    @router.delete("/configurations/policy")
    async def reset_policy(request: Request) -> Response:
        loop = await resource(request, "configure", version)
        service = _service(request)
        now = datetime.now(UTC)
        config = await _update(service, loop, lambda c: pconfig.reset_policy(c, now))
        return _json(pconfig.policy_json(config))

    # ------------------------------------------------------------------------------- logs
    @router.get("/logs/properties")
    async def get_log_properties(request: Request) -> Response:
        loop = await resource(request, "read", version)
        first, last = await run_in_threadpool(log_date_range, _service(request).engine, loop)
        date_range = (
            {}
            if first is None or last is None
            else {
                "from": first.isoformat(),
                "to": last.isoformat(),
            }
        )
        return _json({"dateRange": date_range})

    @router.delete("/logs")
    async def delete_logs(request: Request) -> Response:
        await resource(request, "configure", version)
        raise Conflict(
            "this service never deletes acknowledged decisions and rewards (the log is the "
            "record the gate, evaluations and audits rely on); export them with `decision-service "
            "export` and use a new loop (a new key scoped to it) to start afresh",
            "OperationNotAllowed",
        )

    # ------------------------------------------------------------------------------ model
    @router.get("/model/properties")
    async def get_model_properties(request: Request) -> Response:
        loop = await resource(request, "read", version)
        created, modified = await run_in_threadpool(model_times, _service(request).engine, loop)
        out = {}
        if created is not None and modified is not None:
            out = {"creationTime": created.isoformat(), "lastModifiedTime": modified.isoformat()}
        return _json(out)

    @router.get("/model")
    async def get_model(request: Request) -> Response:
        loop = await resource(request, "export", version)
        engine = _service(request).engine
        live = await run_in_threadpool(live_version, engine, loop)
        if live is None:
            raise NotFound(f"loop {loop!r} has no trained model yet", "model_not_found")
        artifact = await run_in_threadpool(load_artifact, engine, live.version)
        return Response(
            _model_zip(loop, live.version, live.vw_args, artifact),
            media_type="application/octet-stream",
        )

    @router.delete("/model")
    async def reset_model(request: Request) -> Response:
        await resource(request, "configure", version)
        raise Conflict(
            "resetting the live model is not supported: the live version changes only through "
            "the gate and rollback (POST /v1/loops/{loop}/rollback), which keep the audit trail",
            "OperationNotAllowed",
        )

    if preview:

        @router.put("/model", status_code=204)
        async def import_model(request: Request) -> Response:
            loop = await resource(request, "configure", version)
            service = _service(request)
            data = await read_body(request, service.settings.max_body_bytes)
            args, artifact = _read_model_zip(data)
            await run_in_threadpool(
                lambda: register(
                    service.engine,
                    loop=loop,
                    kind="manual",
                    vw_args=args,
                    artifact=artifact,
                    actor="personalizer:import",
                    reason="PUT /model (Personalizer import): a candidate for the gate",
                )
            )
            return _no_content()

    # ------------------------------------------------------------------------ evaluations
    v2022 = version == API_VERSION_2022
    if v2022:

        @router.put("/evaluations/{evaluation_id}")
        async def create_evaluation_2022(request: Request, evaluation_id: str) -> Response:
            loop = await resource(request, "evaluate", version)
            mapping.check_id(evaluation_id, "evaluationId")
            body = await read_json(request)
            item = await _create_evaluation(request, loop, evaluation_id, body)
            return _json(await _evaluation(request, item, None))

    else:

        @router.post("/evaluations", status_code=201)
        async def create_evaluation_v1(request: Request) -> Response:
            loop = await resource(request, "evaluate", version)
            body = await read_json(request)
            item = await _create_evaluation(request, loop, None, body)
            out = _json(await _evaluation(request, item, None), 201)
            out.headers["Location"] = f"{BASES[version]}/evaluations/{item.evaluation_id}"
            return out

    @router.get("/evaluations")
    async def list_evaluations(request: Request) -> Response:
        loop = await resource(request, "read", version)
        skip, top = _paging(request) if v2022 else (0, MAX_LISTED)
        engine = _service(request).engine
        items = await run_in_threadpool(
            lambda: list_personalizer_evaluations(engine, loop, skip=skip, top=top)
        )
        listed = [await _evaluation(request, item, None) for item in items]
        if not v2022:
            return _json(listed)
        page: dict[str, Any] = {"value": listed}
        if len(items) == top:  # there may be more: the SDK follows nextLink
            page["nextLink"] = (
                f"{request.base_url}{BASES[version].lstrip('/')}/evaluations?"
                f"api-version={API_VERSION_2022}&skip={skip + top}&top={top}"
            )
        return _json(page)

    @router.get("/evaluations/{evaluation_id}")
    async def get_evaluation_route(request: Request, evaluation_id: str) -> Response:
        loop = await resource(request, "read", version)
        item = await _find_evaluation(request, loop, evaluation_id)
        return _json(await _evaluation(request, item, _series_query(request, v2022)))

    @router.delete("/evaluations/{evaluation_id}", status_code=204)
    async def delete_evaluation(request: Request, evaluation_id: str) -> Response:
        loop = await resource(request, "evaluate", version)
        engine = _service(request).engine
        if not await run_in_threadpool(delete_personalizer_evaluation, engine, loop, evaluation_id):
            raise NotFound(f"no evaluation {evaluation_id!r}", "evaluation_not_found")
        return _no_content()

    if preview:

        @router.post("/configurations/applyFromEvaluation", status_code=204)
        async def apply_from_evaluation(request: Request) -> Response:
            loop = await resource(request, "configure", version)
            body = await read_json(request)
            if not isinstance(body, dict):
                raise InvalidInput("the body must be {evaluationId, policyName}")
            item = await _find_evaluation(request, loop, str(body.get("evaluationId")))
            await _apply(_service(request), loop, item, body.get("policyName"))
            return _no_content()

    if v2022:

        @router.api_route("/featureImportances", methods=["GET"])
        @router.api_route("/featureImportances/{feature_importance_id}", methods=["GET", "PUT"])
        @router.api_route("/featureImportances/{feature_importance_id}", methods=["DELETE"])
        async def feature_importances(request: Request) -> Response:
            await resource(request, "read", version)
            raise InvalidInput(
                "feature importance is not computed by this service's evaluation runs; the "
                "evaluation result's per-policy estimates are available (GET /evaluations/{id})",
                "OperationNotAllowed",
            )

    return router


MAX_LISTED = 500


def _paging(request: Request) -> tuple[int, int]:
    def number(name: str, default: int, lo: int, hi: int) -> int:
        raw = request.query_params.get(name)
        if raw is None:
            return default
        if not raw.isdigit() or not lo <= int(raw) <= hi:
            raise InvalidInput(f"{name} must be an integer in [{lo}, {hi}], got {raw!r}")
        return int(raw)

    return number("skip", 0, 0, 10**9), number("top", MAX_LISTED, 1, MAX_LISTED)


def _series_query(request: Request, v2022: bool) -> dict[str, Any]:
    """The 2022 time-series query (startTime and endTime required), validated and echoed."""
    if not v2022:
        return {}
    q = request.query_params
    out: dict[str, Any] = {}
    for name in ("startTime", "endTime"):
        value = q.get(name)
        if value is None:
            raise InvalidInput(f"the query parameter {name} is required", "invalid_evaluation")
        try:
            out[name] = datetime.fromisoformat(value).isoformat()
        except ValueError:
            raise InvalidInput(f"{name} must be an ISO 8601 time", "invalid_evaluation") from None
    interval = q.get("intervalInMinutes", "5")
    if not interval.isdigit() or int(interval) not in pevaluations.INTERVALS:
        raise InvalidInput(
            f"intervalInMinutes must be one of {list(pevaluations.INTERVALS)}",
            "invalid_evaluation",
        )
    window = q.get("window", "Expanding")
    if window not in pevaluations.WINDOWS:
        raise InvalidInput(
            f"window must be one of {list(pevaluations.WINDOWS)}", "invalid_evaluation"
        )
    out["intervalInMinutes"] = int(interval)
    out["window"] = window
    return out


async def _create_evaluation(
    request: Request, loop: str, evaluation_id: str | None, body: Any
) -> PersonalizerEvaluation:
    """Start the native run of a Personalizer evaluation (the same steps as
    POST /v1/loops/{loop}/evaluations) and name it."""
    service = _service(request)
    engine = service.engine
    config = await _stored_config(service, loop)
    native, stored = pevaluations.native_spec(body, config.vw_args, pconfig.native_arguments)
    existing = None
    if evaluation_id is not None:
        existing = await run_in_threadpool(get_personalizer_evaluation, engine, loop, evaluation_id)
    if existing is not None:
        raise Conflict(f"an evaluation {evaluation_id!r} exists already", "evaluation_exists")
    try:
        spec = EvaluationSpec.from_json(native)
    except SpecError as err:
        raise InvalidInput(err.message, err.code) from None
    record = await routes_evaluations.queue_run(engine, service.settings, loop, spec)
    item = PersonalizerEvaluation(
        loop, evaluation_id or record.id, record.id, stored, record.created_at
    )
    await run_in_threadpool(add_personalizer_evaluation, engine, item)
    await routes_evaluations.start_run(engine, service.settings, record)
    return item


async def _find_evaluation(
    request: Request, loop: str, evaluation_id: str
) -> PersonalizerEvaluation:
    engine = _service(request).engine
    item = await run_in_threadpool(get_personalizer_evaluation, engine, loop, evaluation_id)
    if item is None:
        raise NotFound(f"no evaluation {evaluation_id!r}", "evaluation_not_found")
    return item


async def _evaluation(
    request: Request, item: PersonalizerEvaluation, query: dict[str, Any] | None
) -> dict[str, Any]:
    engine = _service(request).engine
    run: EvaluationRecord | None = await run_in_threadpool(get_evaluation, engine, item.run_id)
    status = "failed" if run is None else run.status
    result = None if run is None else run.result
    return pevaluations.evaluation_json(
        item.evaluation_id,
        item.contract,
        item.created_at,
        status,
        result,
        version_2022=request.query_params.get("api-version") == API_VERSION_2022,
        query=query,
    )


async def _apply(service: Service, loop: str, item: PersonalizerEvaluation, policy: Any) -> None:
    """Make an evaluated policy a candidate of the loop (`learner.candidates`): the learner
    trains it, the gate checks it, and it goes live only as the rollout policy allows."""
    found = pevaluations.policy_arguments(item.contract, str(policy))
    if found is None:
        raise InvalidInput(
            f"policy {policy!r} was not part of evaluation {item.evaluation_id!r}",
            "unknown_policy",
        )
    source, arguments = found
    if source == "Online":
        return  # it is the loop's own policy already
    if source in ("Baseline", "Random"):
        raise InvalidInput(
            f"{source} is a reference policy, not learning settings: it cannot be applied",
            "OperationNotAllowed",
        )
    args = pconfig.native_arguments(arguments)

    def add_candidate(config: LoopConfig) -> LoopConfig:
        candidates = config.learner.candidates
        if args in candidates:
            return config
        try:
            check_model_args(config.with_explore_args(args))  # as a native PUT checks it
            learner = replace(config.learner, candidates=(*candidates, args))
        except ValueError as err:
            raise InvalidInput(f"cannot add the candidate: {err}", "invalid_config") from None
        return replace(config, learner=learner)

    await _update(service, loop, add_candidate)


async def _activate(service: Service, loop: str, event_id: str) -> None:
    """Personalizer answers 204 also for an event that was not deferred or already active."""
    try:
        await service.activate(loop, event_id)
    except Conflict as err:
        if err.code != "not_deferred":
            raise


async def _service_configuration(service: Service, loop: str) -> dict[str, Any]:
    config = await _stored_config(service, loop)
    since = config.personalizer.apprentice_since
    metrics = None
    if since is not None:
        start = datetime.fromisoformat(since)
        found = await run_in_threadpool(apprentice_metrics, service.engine, loop, start)
        metrics = found.to_json()
    return pconfig.service_configuration(config, metrics)


def _model_zip(loop: str, version: str, vw_args: str, artifact: bytes) -> bytes:
    """The export: a zip of the VW model and a manifest (its sha256 is the import's check)."""
    manifest = {
        "loop": loop,
        "version": version,
        "vw_args": vw_args,
        "sha256": hashlib.sha256(artifact).hexdigest(),
    }
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(MODEL_MANIFEST, orjson.dumps(manifest))
        zf.writestr(MODEL_FILE, artifact)
    return out.getvalue()


def _read_model_zip(data: bytes) -> tuple[str, bytes]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            manifest = orjson.loads(zf.read(MODEL_MANIFEST))
            artifact = zf.read(MODEL_FILE)
    except (zipfile.BadZipFile, KeyError, orjson.JSONDecodeError):
        raise InvalidInput(
            "the model must be a zip exported by GET /model (manifest.json and model.vw)",
            "InvalidModelImportFormat",
        ) from None
    if (
        not isinstance(manifest, dict)
        or manifest.get("sha256") != hashlib.sha256(artifact).hexdigest()
    ):
        raise InvalidInput(
            "the model's manifest does not match its contents", "InvalidModelImportSignature"
        )
    args = manifest.get("vw_args")
    if not isinstance(args, str):
        raise InvalidInput("the manifest has no vw_args", "InvalidModelImportFormat")
    return pconfig.native_arguments(args), artifact
