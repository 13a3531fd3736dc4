"""The ``autoglm.v1.Inference`` servicer of the cloud: wire messages in, engine events out.

A :class:`GenerateRequest` is turned into engine arguments once, here at the boundary; engine
errors are turned into gRPC status codes in one place (:data:`STATUS_OF`). ``Generate`` and
``GenerateStream`` share one generator of chunks, so both give the same answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from typing import Any, cast

import grpc

from cloud.engine import (
    AsyncEngine,
    EngineFailed,
    EngineStopped,
    InvalidRequest,
    QueueFull,
    Request,
    RequestStatus,
    Scheduler,
    SchedulerOutput,
    TokenEvent,
)
from cloud.service.auth import ANYONE, BearerAuthInterceptor
from cloud.service.metrics import ServiceMetrics
from shared.request_ids import new_request_id, request_label
from shared.rpc import inference_pb2, inference_pb2_grpc
from shared.sampling import require_prompt, sampling_from_wire

log = logging.getLogger(__name__)

pb = inference_pb2


class DeadlineExpired(RuntimeError):
    """The request's deadline passed before it finished (the engine dropped it)."""


class PermissionRefused(RuntimeError):
    """The call's token is bound to other device ids (maps to PERMISSION_DENIED)."""


# The one place where engine errors become gRPC status codes.
STATUS_OF: dict[type[Exception], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    QueueFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    EngineStopped: grpc.StatusCode.UNAVAILABLE,
    EngineFailed: grpc.StatusCode.INTERNAL,
    DeadlineExpired: grpc.StatusCode.DEADLINE_EXCEEDED,
    PermissionRefused: grpc.StatusCode.PERMISSION_DENIED,
}
_MAPPED = tuple(STATUS_OF)

FINISH_REASON = {
    RequestStatus.FINISHED_EOS: pb.FINISH_REASON_EOS,
    RequestStatus.FINISHED_LENGTH: pb.FINISH_REASON_LENGTH,
    RequestStatus.FINISHED_STOP: pb.FINISH_REASON_STOP_STRING,
    RequestStatus.FINISHED_ABORTED: pb.FINISH_REASON_ABORTED,
}


def metrics_observer(metrics: ServiceMetrics) -> Callable[[SchedulerOutput, Scheduler], None]:
    """An EngineCore observer that feeds the queue gauges and the batch-size histogram."""

    def observe(out: SchedulerOutput, scheduler: Scheduler) -> None:
        metrics.set_queue(len(scheduler.running), scheduler.num_waiting)
        if out.prefill or out.decode:
            metrics.observe_batch(len(out.prefill) + len(out.decode))

    return observe


class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    """Serves Generate and GenerateStream from the AsyncEngine."""

    def __init__(
        self,
        engine: AsyncEngine,
        pack_label: str,
        metrics: ServiceMetrics,
        auth: BearerAuthInterceptor | None = None,
    ) -> None:
        self.engine = engine
        self.pack_label = pack_label
        self.metrics = metrics
        self.auth = auth  # the token's grant: device ids and the highest priority allowed

    async def Generate(
        self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> inference_pb2.GenerateResponse:
        await self._refuse_if_full(request, context)
        final = inference_pb2.GenerateResponse()
        async with aclosing(self._chunks(request, context)) as chunks:
            async for chunk in chunks:
                if chunk.HasField("final"):
                    final = chunk.final
        return final

    async def GenerateStream(
        self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[inference_pb2.GenerateChunk]:
        await self._refuse_if_full(request, context)
        async with aclosing(self._chunks(request, context)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def _refuse_if_full(
        self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        """Abort at once, before any other work, when the engine's queue is full.

        Under overload refusals are most of the calls, and every one of them costs the event
        loop time that the next refusal waits for; so they are counted (``requests_total``) but
        not timed or logged. ``submit`` checks again, so this is only the cheap way out.
        """
        try:
            self.engine.check_admission()
        except EngineStopped:
            return  # a drain: rare, and worth the log line that ``_chunks`` writes
        except QueueFull as exc:
            code = STATUS_OF[QueueFull]
            self.metrics.refused(code.name.lower())
            label = request_label(request.request_id) if request.request_id else "without id"
            await context.abort(code, f"{exc} (request {label})")

    async def _chunks(
        self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncGenerator[inference_pb2.GenerateChunk, None]:
        """One chunk per engine event; the last carries ``final``. Errors abort the call."""
        start = time.monotonic()
        rid = request_label(request.request_id)  # the caller's label, for logs and the echo
        engine_id = new_request_id()  # the engine's key: unique, whatever callers send
        status = "error"
        tokens: list[int] = []
        text: list[str] = []
        first_at: float | None = None
        done: Request | None = None  # the finished request, from the final event
        self.metrics.request_started()
        try:
            require_prompt(request.prompt)
            grant = self.auth.grant(context.invocation_metadata()) if self.auth else ANYONE
            if not grant.allows_device(request.device_id):
                raise PermissionRefused(
                    f"this token may not call for device {request_label(request.device_id)!r}"
                )
            remaining = context.time_remaining()
            kwargs: dict[str, Any] = {
                "params": sampling_from_wire(request.sampling),
                "priority": max(0, min(request.priority, grant.max_priority)),
                "deadline": None if remaining is None else start + remaining,
                "draft_ids": list(request.draft.token_ids),
            }
            log.debug(
                "%s: accepted (prompt %d chars, draft %d tokens, device %r)",
                rid,
                len(request.prompt),
                len(kwargs["draft_ids"]),
                request.device_id,
                extra={"request_id": rid, "engine_id": engine_id, "device_id": request.device_id},
            )
            last_at = start
            submitted = self.engine.submit(engine_id, request.prompt, **kwargs)
            async with aclosing(cast(AsyncGenerator[TokenEvent, None], submitted)) as events:
                async for event in events:
                    now = time.monotonic()
                    if event.token_ids:
                        if first_at is None:
                            first_at = now
                        else:
                            self.metrics.token_emitted(now - last_at)
                        last_at = now
                    tokens += event.token_ids
                    text.append(event.text)
                    if event.status == RequestStatus.FINISHED_DEADLINE:
                        raise DeadlineExpired("the deadline passed before the answer was ready")
                    if event.status == RequestStatus.FINISHED_ERROR and event.request is not None:
                        raise EngineFailed(
                            f"the engine failed on this request: {event.request.error}"
                        )
                    chunk = pb.GenerateChunk(
                        request_id=rid, text_delta=event.text, token_ids=event.token_ids
                    )
                    if event.finished:
                        done = event.request
                        chunk.final.CopyFrom(
                            self._response(rid, request, "".join(text), tokens, done, start)
                        )
                    yield chunk
            status = "ok"
        except (asyncio.CancelledError, GeneratorExit):
            status = "cancelled"
            log.info("%s: cancelled by the client", rid, extra={"request_id": rid})
            raise
        except _MAPPED as exc:
            code = STATUS_OF[type(exc)]
            status = code.name.lower()
            # Refusals under overload are counted by the metrics; one log line each would cost
            # the event loop time exactly when it has none to spare.
            level = logging.DEBUG if code == grpc.StatusCode.RESOURCE_EXHAUSTED else logging.INFO
            log.log(
                level,
                "%s: %s: %s",
                rid,
                code.name,
                exc,
                extra={"request_id": rid, "code": code.name},
            )
            await context.abort(code, f"{exc} (request {rid})")
        finally:
            self._record(rid, status, done, start, first_at, len(tokens), request)

    def _response(
        self,
        rid: str,
        request: inference_pb2.GenerateRequest,
        text: str,
        tokens: list[int],
        req: Request | None,
        start: float,
    ) -> inference_pb2.GenerateResponse:
        status = req.status if req is not None else RequestStatus.FINISHED_ABORTED
        return pb.GenerateResponse(
            request_id=rid,
            text=text,
            token_ids=tokens,
            finish_reason=FINISH_REASON.get(status, pb.FINISH_REASON_UNSPECIFIED),
            route=pb.ROUTE_CLOUD,
            confidence=0.0,
            models=pb.ModelVersions(cloud_pack=self.pack_label),
            usage=pb.Usage(
                prompt_tokens=len(req.prompt_ids) if req is not None else 0,
                completion_tokens=len(tokens),
                draft_tokens=len(request.draft.token_ids),
                draft_tokens_accepted=req.draft_accepted if req is not None else 0,
            ),
            timings=_timings(req, start),
        )

    def _record(
        self,
        rid: str,
        status: str,
        req: Request | None,
        start: float,
        first_at: float | None,
        completion_tokens: int,
        request: inference_pb2.GenerateRequest,
    ) -> None:
        e2e = time.monotonic() - start
        queue_s = None
        if req is not None and req.prefill_at is not None:
            queue_s = req.prefill_at - (req.queued_at or req.prefill_at)
        self.metrics.request_finished(
            status,
            queue_s=queue_s,
            ttft_s=None if first_at is None else first_at - start,
            e2e_s=e2e,
            prompt_tokens=len(req.prompt_ids) if req is not None else 0,
            completion_tokens=completion_tokens,
            draft_tokens=len(request.draft.token_ids),
            draft_accepted=req.draft_accepted if req is not None else 0,
        )
        log.log(
            logging.DEBUG if status == "resource_exhausted" else logging.INFO,
            "%s: %s after %.1f ms, %d tokens",
            rid,
            status,
            e2e * 1e3,
            completion_tokens,
            extra={
                "request_id": rid,
                "status": status,
                "e2e_ms": round(e2e * 1e3, 2),
                "completion_tokens": completion_tokens,
            },
        )


def _timings(req: Request | None, start: float) -> list[inference_pb2.StageTiming]:
    """queue, prefill (to the first token), decode and total, in milliseconds."""
    stages: list[tuple[str, float]] = []
    if req is not None:
        prefill_at = req.prefill_at
        queued = req.queued_at if req.queued_at is not None else start
        if prefill_at is not None:
            stages.append(("queue", prefill_at - queued))
            if req.first_token_at is not None:
                stages.append(("prefill", req.first_token_at - prefill_at))
                end = req.finished_at if req.finished_at is not None else time.monotonic()
                stages.append(("decode", end - req.first_token_at))
        elif req.finished_at is not None:
            stages.append(("queue", req.finished_at - queued))
    stages.append(("total", time.monotonic() - start))
    return [pb.StageTiming(stage=name, ms=max(0.0, s) * 1e3) for name, s in stages]
