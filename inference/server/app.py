"""The HTTP side: nnInteractive's protocol (inference/server/wire.py) on Starlette, every request checked
before it reaches a session.

One model for every session, one inference worker thread that runs every network pass in turn; each
session's requests take its own lock, so a session sees one request at a time and never another's data.
Requests are answered off the event loop (a thread each), so heartbeats and healthz stay quick while a
prediction runs. Anything wrong with a request is a 4xx with `{"detail": one line}`.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import sys
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..model import Model
from . import wire
from .capabilities import capabilities
from .inputs import flag
from .leases import Lease, Leases
from .session import Change, Rules, Session
from .wire import ClientError

JSON_BODY_BYTES = 1 << 20
PACKED_OVERHEAD = 1 << 20  # headers and blosc2 frames beyond the raw bytes of an incompressible array


@dataclass(frozen=True)
class ServerSettings:
    """The server's flags (python -m inference.server), nnInteractive's defaults where they mean the same."""

    max_sessions: int = 3
    idle_timeout: float = 600.0
    liveness_timeout: float = 60.0
    max_image_voxels: int = 512 * 512 * 1024
    autozoom: bool = True
    undo: bool = True
    api_key: str | None = None


def make_app(model: Model, settings: ServerSettings, trained_box: str) -> Starlette:
    """The app for one loaded model; `trained_box` is the box encoding its weights were trained with."""
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segfm-inference")
    rules = Rules(settings.autozoom, settings.undo, extend_2d_boxes=trained_box == "slab")
    leases = Leases(lambda: Session(model, rules, lambda work: worker.submit(work).result()),
                    settings.max_sessions, settings.idle_timeout, settings.liveness_timeout)
    answers = capabilities(model.spec, trained_box, settings.autozoom, settings.undo)
    max_body = settings.max_image_voxels * 8 + PACKED_OVERHEAD  # float64, the widest dtype taken

    def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not given.startswith("Bearer "):
            raise ClientError(401, "missing bearer token (Authorization: Bearer KEY)")
        if not hmac.compare_digest(given[len("Bearer "):].encode(), settings.api_key.encode()):
            raise ClientError(401, "invalid bearer token")

    def lease_of(request: Request, active: bool = True) -> Lease[Session]:
        return leases.get(request.headers.get(wire.LEASE_HEADER), active)

    async def guarded(request: Request, handle: Callable) -> Response:
        """Run `handle(request)` after the key check; ClientError becomes its status, anything else a 500."""
        try:
            authorize(request)
            answer = await handle(request)
        except ClientError as exc:
            headers = {"Retry-After": "10"} if exc.status == 503 else None
            return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=headers)
        except Exception as exc:  # a bug, not the client's input: say so in one line, log the trace
            traceback.print_exc(file=sys.stderr)
            return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)
        return answer if isinstance(answer, Response) else JSONResponse(answer)

    def route(path: str, handle: Callable, method: str = "POST") -> Route:
        async def endpoint(request: Request) -> Response:
            return await guarded(request, handle)
        return Route(path, endpoint, methods=[method])

    async def in_session(request: Request, work: Callable[[Session], object], active: bool = True):
        """`work(session)` on a thread, under the session's lock."""
        lease = lease_of(request, active)

        def locked():
            with lease.lock:
                return work(lease.session)
        return await run_in_threadpool(locked)

    # ----------------------------------------------------------------------------- lifecycle

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def get_capabilities(request: Request) -> dict:
        return answers

    async def claim(request: Request) -> dict:
        return {"lease_token": leases.claim(), "idle_timeout_seconds": settings.idle_timeout,
                "liveness_timeout_seconds": settings.liveness_timeout, "max_sessions": settings.max_sessions}

    async def release(request: Request) -> dict:
        leases.release(request.headers.get(wire.LEASE_HEADER))
        return {"released": True}

    async def heartbeat(request: Request) -> dict:
        return {"remaining_seconds": leases.remaining(lease_of(request, active=False))}

    async def lease_status(request: Request) -> dict:
        lease = leases.peek(request.headers.get(wire.LEASE_HEADER))
        return {"remaining_seconds": leases.remaining(lease), "idle_timeout_seconds": settings.idle_timeout}

    # ----------------------------------------------------------------------------- the session

    async def set_image(request: Request) -> dict:
        lease_of(request)  # 410 before the upload is read
        meta, body = meta_of(request), await body_of(request, max_body)
        image = await run_in_threadpool(wire.unpack, body, 4, settings.max_image_voxels, "image")
        shape = await in_session(request, lambda s: s.set_image(image, meta.get("image_properties")))
        return {"original_image_shape": list(shape)}

    async def set_target_buffer(request: Request) -> dict:
        payload = await json_of(request)
        await in_session(request, lambda s: s.set_target_buffer(payload))
        return {}

    async def set_do_autozoom(request: Request) -> dict:
        payload = await json_of(request)
        autozoom = flag(payload, "do_autozoom")
        await in_session(request, lambda s: setattr(s, "autozoom", autozoom))
        return {}

    async def reset_interactions(request: Request) -> dict:
        await json_of(request)
        await in_session(request, Session.reset)
        return {}

    async def changed(request: Request, work: Callable[[Session], Change]) -> Response:
        return await in_session(request, lambda s: change_response(work(s)))

    async def undo(request: Request) -> Response:
        await json_of(request)
        return await changed(request, Session.undo)

    async def predict(request: Request) -> Response:
        payload = await json_of(request)
        flag(payload, "force_full_refine", False)  # accepted; refinement is the pipeline's own
        return await changed(request, Session.predict)

    async def add_bbox(request: Request) -> Response:
        payload = await json_of(request)
        return await changed(request, lambda s: s.add_box(payload))

    async def add_point(request: Request) -> Response:
        payload = await json_of(request)
        return await changed(request, lambda s: s.add_point(payload))

    async def add_scribble(request: Request) -> Response:
        lease_of(request)
        raise ClientError(422, "scribbles are not supported by this server's models (no scribble channel is fed): "
                               "use points or a box")

    async def add_lasso(request: Request) -> Response:
        meta, mask = await packed_mask(request, "lasso")
        return await changed(request, lambda s: s.add_lasso(meta, mask))

    async def add_initial_seg(request: Request) -> Response:
        meta, seg = await packed_mask(request, "initial segmentation")
        return await changed(request, lambda s: s.add_initial_seg(meta, seg))

    async def packed_mask(request: Request, what: str) -> tuple[dict, np.ndarray]:
        lease_of(request)  # 410 before the upload is read
        meta, body = meta_of(request), await body_of(request, max_body)
        return meta, await run_in_threadpool(wire.unpack, body, 3, settings.max_image_voxels, what)

    @asynccontextmanager
    async def lifespan(app: Starlette):
        reaper = asyncio.create_task(sweep_forever(leases))
        try:
            yield
        finally:
            reaper.cancel()
            worker.shutdown(wait=True)

    routes = [Route(wire.HEALTHZ, healthz, methods=["GET"]), route(wire.CAPABILITIES, get_capabilities, "GET"),
              route(wire.CLAIM, claim), route(wire.RELEASE, release), route(wire.HEARTBEAT, heartbeat),
              route(wire.LEASE_STATUS, lease_status, "GET"), route(wire.SET_IMAGE, set_image),
              route(wire.SET_TARGET_BUFFER, set_target_buffer), route(wire.SET_DO_AUTOZOOM, set_do_autozoom),
              route(wire.RESET_INTERACTIONS, reset_interactions), route(wire.UNDO, undo), route(wire.PREDICT, predict),
              route(wire.ADD_BBOX, add_bbox), route(wire.ADD_POINT, add_point), route(wire.ADD_SCRIBBLE, add_scribble),
              route(wire.ADD_LASSO, add_lasso), route(wire.ADD_INITIAL_SEG, add_initial_seg)]
    return Starlette(routes=routes, lifespan=lifespan)


async def sweep_forever(leases: Leases) -> None:
    """Reap idle and dead sessions a few times per timeout (requests on them see 410 on their own too)."""
    every = max(0.05, min(15.0, leases.idle_timeout / 4, leases.liveness_timeout / 4))
    while True:
        await asyncio.sleep(every)
        leases.sweep()


def change_response(change: Change) -> Response:
    """A prediction's (or undo's) answer: the changed block packed, its region in the metadata header."""
    block = change.block
    meta = {"ran_prediction": change.ran, "bbox": block.region if block else None}
    body = b""
    if block is not None:
        meta |= {"dtype": block.content.dtype.name, "shape": list(block.content.shape)}
        body = wire.pack(block.content)
    return Response(body, media_type=wire.OCTET_STREAM, headers={wire.META_HEADER: json.dumps(meta)})


def meta_of(request: Request) -> dict:
    """The `X-Meta` header's JSON object ({} without one)."""
    raw = request.headers.get(wire.META_HEADER)
    return {} if raw is None else json_object(raw, wire.META_HEADER)


def json_object(text: str | bytes, what: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ClientError(400, f"{what} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ClientError(400, f"{what} must be a JSON object")
    return value


async def body_of(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is known to be over `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ClientError(413, f"request body of {declared} bytes, this server takes at most {limit}")
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise ClientError(413, f"request body over {limit} bytes")
        parts.append(part)
    return b"".join(parts)


async def json_of(request: Request) -> dict:
    """A JSON object body (an empty body counts as {})."""
    body = await body_of(request, JSON_BODY_BYTES)
    return json_object(body, "body") if body.strip() else {}
