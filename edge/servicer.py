"""The edge daemon's ``Inference`` servicer: cache -> route -> proxy -> cloud -> fallback.

One request, in order (the request path of docs/architecture.md):

1. validate at the boundary (INVALID_ARGUMENT with the reason);
2. a deterministic request already answered -> the cached answer, route CACHE;
3. the router's plan: the mode (request preference, else settings), policy escalation (prompt or
   ``max_new_tokens`` beyond the proxy), else the proxy decodes with the confidence threshold and
   stops at the first token below it;
4. confident to the end -> route EDGE; otherwise the cloud gets the prompt and the proxy's draft;
5. the cloud fails (down, breaker open, deadline) -> the proxy's own full answer with route
   EDGE_FALLBACK, unless ``fallback.on_cloud_failure = "fail"``.

The proxy runs in a thread pool (ONNX Runtime releases the GIL) while other decodes run, so the
event loop keeps serving; a short decode with nothing else decoding runs on the event loop (the
thread hop would cost a large share of a short decode; docs/benchmarks.md).
``GenerateStream`` sends the whole answer in one chunk with ``final`` set: the proxy's answer is
ready in milliseconds, and a cloud answer is only final once the cloud is done.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from dataclasses import replace
from typing import Any

import grpc

from edge import router
from edge.cache import AnswerCache, cache_key
from edge.cloud_client import CloudClient, CloudError, CloudRejected
from edge.metrics import EdgeMetrics
from edge.proxy import Proxy, ProxyHolder
from edge.runner import DecodeResult
from shared.request_ids import new_request_id, request_label
from shared.rpc import inference_pb2 as pb
from shared.rpc import inference_pb2_grpc
from shared.sampling import (
    InvalidRequest,
    SamplingParams,
    first_stop,
    require_prompt,
    sampling_from_wire,
    sampling_to_wire,
    validate_params,
)
from shared.settings.edge import RuntimeSettings

log = logging.getLogger(__name__)

ROUTE_NAME = {
    pb.ROUTE_EDGE: "edge",
    pb.ROUTE_CLOUD: "cloud",
    pb.ROUTE_EDGE_FALLBACK: "edge_fallback",
    pb.ROUTE_CACHE: "cache",
}
FINISH = {"eos": pb.FINISH_REASON_EOS, "length": pb.FINISH_REASON_LENGTH}
FINISH["stop"] = pb.FINISH_REASON_STOP_STRING
# Of an app's deadline, the share a cloud call may use: the rest is kept for the fallback.
CLOUD_SHARE_OF_DEADLINE = 0.8
# Longest decode run on the event loop when nothing else decodes (a step is short on a CPU).
INLINE_MAX_TOKENS = 32


class Timings:
    """Stage durations in the order the stages ran, "total" last."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.stages: list[tuple[str, float]] = []

    def add(self, stage: str, since: float) -> None:
        self.stages.append((stage, time.monotonic() - since))

    def wire(self) -> list[pb.StageTiming]:
        stages = [*self.stages, ("total", time.monotonic() - self.start)]
        return [pb.StageTiming(stage=name, ms=s * 1e3) for name, s in stages]


class EdgeInference(inference_pb2_grpc.InferenceServicer):
    """Answers local apps' requests with the proxy, the cloud, or the cache."""

    def __init__(
        self,
        proxies: ProxyHolder,
        cloud: CloudClient,
        runtime: RuntimeSettings,
        metrics: EdgeMetrics,
        executor: Executor,
        *,
        max_new_tokens_limit: int,
    ) -> None:
        self.proxies = proxies
        self.cloud = cloud
        self.runtime = runtime
        self.metrics = metrics
        self.executor = executor
        self.max_new_tokens_limit = max_new_tokens_limit
        self.cache = AnswerCache(runtime.cache)
        self._decoding = 0  # proxy decodes running now (event-loop thread only)

    @staticmethod
    def _inline_ok(max_new_tokens: int) -> bool:
        """Short decodes may run on the event loop (bounded: at most INLINE_MAX_TOKENS steps)."""
        return max_new_tokens <= INLINE_MAX_TOKENS

    def apply_runtime(self, runtime: RuntimeSettings) -> None:
        """New runtime settings (from the control plane); requests in flight keep theirs."""
        self.cache.reconfigure(runtime.cache)
        self.cloud.reconfigure(runtime.cloud_call)
        self.runtime = runtime

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GenerateResponse:
        return await self._serve(request, context)

    async def GenerateStream(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.GenerateChunk]:
        final = await self._serve(request, context)
        yield pb.GenerateChunk(
            request_id=final.request_id,
            text_delta=final.text,
            token_ids=final.token_ids,
            final=final,
        )

    async def _serve(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GenerateResponse:
        """The answer, or the call aborted with the status code that says why."""
        rid = request_label(request.request_id)  # the app's label, for logs and the echo
        t = Timings()
        self.metrics.in_flight.inc()
        route, status = "none", "ok"
        try:
            response = await self.answer(request, rid, t, context.time_remaining())
            route = ROUTE_NAME[response.route]
            return response
        except InvalidRequest as exc:
            status = "invalid_argument"
            log.info("%s: INVALID_ARGUMENT: %s", rid, exc, extra={"request_id": rid})
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{exc} (request {rid})")
        except CloudError as exc:  # rejected by the cloud, or failed with fallback = fail
            status = exc.code.name.lower()
            log.info("%s: %s: %s", rid, exc.code.name, exc, extra={"request_id": rid})
            await context.abort(exc.code, f"cloud: {exc} (request {rid})")
        except asyncio.CancelledError:
            status = "cancelled"
            raise
        finally:
            self.metrics.in_flight.dec()
            self.metrics.finished(route, status, time.monotonic() - t.start)
        raise AssertionError("unreachable: context.abort raises")

    async def answer(
        self, request: pb.GenerateRequest, rid: str, t: Timings, remaining: float | None
    ) -> pb.GenerateResponse:
        """Serve one request (steps 1-5 of the module docstring)."""
        rt = self.runtime  # one consistent view of the settings for the whole request
        proxy = self.proxies.current  # the request finishes on this proxy, even across a swap
        require_prompt(request.prompt)
        params = sampling_from_wire(request.sampling)
        validate_params(params, max_new_tokens_limit=self.max_new_tokens_limit)
        params = replace(params, max_new_tokens=params.max_new_tokens or proxy.max_new_tokens)
        mode = router.resolve_mode(request.route, rt.routing.mode)
        prompt_ids = proxy.tokenizer.encode(request.prompt)
        n_prompt = len(prompt_ids)

        threshold = proxy.threshold(rt.routing) if mode == "auto" else 0.0
        key = cache_key(proxy.version, request.prompt, params, mode, threshold)
        if params.deterministic:
            since = time.monotonic()
            cached = self.cache.get(key)
            if cached is not None:
                t.add("cache", since)
                cached.request_id, cached.route = rid, pb.ROUTE_CACHE
                del cached.timings[:]
                cached.timings.extend(t.wire())
                return cached

        plan = router.plan(
            mode,
            len(prompt_ids),
            params.max_new_tokens,
            context_limit=proxy.decoder.context_limit,
            proxy_max_new_tokens=proxy.max_new_tokens,
            threshold=threshold,
        )
        draft: DecodeResult | None = None
        reason = plan.escalate
        if plan.run_proxy:
            draft = await self._decode(proxy, prompt_ids, params, plan.stop_below, t, "edge")
            if draft.finished != "low_confidence":
                response = self._local(rid, proxy, draft, params, pb.ROUTE_EDGE, "", t, n_prompt)
                if params.deterministic:
                    self.cache.put(key, response)
                return response
            reason = router.LOW_CONFIDENCE
        assert reason is not None, "a request that did not run to the end must escalate"
        self.metrics.escalations.labels(reason=reason).inc()

        since = time.monotonic()
        try:
            cloud_response, _target = await self.cloud.generate(
                self._cloud_request(rid, request, params, proxy, draft),
                timeout_s=_cloud_timeout(rt.cloud_call.deadline_s, remaining),
            )
        except CloudRejected:
            raise
        except CloudError as exc:
            t.add("cloud", since)
            self.metrics.cloud_failed(exc.code.name)
            log.warning("%s: cloud failed (%s): %s", rid, exc.code.name, exc)
            if rt.fallback.on_cloud_failure == "fail" or not plan.proxy_fits:
                raise
            local = await self._decode(proxy, prompt_ids, params, None, t, "fallback")
            fallback = pb.ROUTE_EDGE_FALLBACK
            return self._local(rid, proxy, local, params, fallback, reason, t, n_prompt)
        t.add("cloud", since)
        response = self._from_cloud(rid, cloud_response, proxy, draft, reason, t)
        if params.deterministic:
            self.cache.put(key, response)
        return response

    async def _decode(
        self,
        proxy: Proxy,
        prompt_ids: list[int],
        params: SamplingParams,
        stop_below: float | None,
        t: Timings,
        stage: str,
    ) -> DecodeResult:
        since = time.monotonic()
        stops = params.stop
        tok = proxy.tokenizer

        def should_stop(ids: list[int]) -> bool:
            return first_stop(tok.decode(ids), stops) is not None

        def decode() -> DecodeResult:
            return proxy.decoder.generate(
                prompt_ids,
                params.max_new_tokens,
                params=params,
                stop_below=stop_below,
                should_stop=should_stop if stops else None,
            )

        inline = self._decoding == 0 and self._inline_ok(params.max_new_tokens)
        self._decoding += 1
        try:
            if inline:
                # Alone: decode on the event loop (handing a short decode to a worker thread and
                # back costs a large share of it); with others in flight, decodes overlap.
                result = decode()
            else:
                result = await asyncio.get_running_loop().run_in_executor(self.executor, decode)
        finally:
            self._decoding -= 1
        t.add(stage, since)
        self.metrics.proxy_seconds.observe(time.monotonic() - since)
        return result

    def _local(
        self,
        rid: str,
        proxy: Proxy,
        result: DecodeResult,
        params: SamplingParams,
        route: pb.Route,
        reason: str,
        t: Timings,
        prompt_tokens: int,
    ) -> pb.GenerateResponse:
        text = proxy.tokenizer.decode(result.token_ids)
        cut = first_stop(text, params.stop)
        return pb.GenerateResponse(
            request_id=rid,
            text=text if cut is None else text[:cut],
            token_ids=result.token_ids,
            finish_reason=FINISH[result.finished],
            route=route,
            confidence=result.confidence,
            escalation_reason=reason,
            models=pb.ModelVersions(edge_pack=proxy.label),
            usage=pb.Usage(prompt_tokens=prompt_tokens, completion_tokens=len(result.token_ids)),
            timings=t.wire(),
        )

    def _cloud_request(
        self,
        rid: str,
        request: pb.GenerateRequest,
        params: SamplingParams,
        proxy: Proxy,
        draft: DecodeResult | None,
    ) -> pb.GenerateRequest:
        cloud_id = new_request_id()  # never the app's id: the cloud is shared by many devices
        log.debug("%s: escalated as %s", rid, cloud_id, extra={"request_id": rid})
        wire = pb.GenerateRequest(
            request_id=cloud_id,
            prompt=request.prompt,
            sampling=sampling_to_wire(params),
            priority=request.priority,
        )
        if draft is not None:
            wire.draft.CopyFrom(
                pb.Draft(
                    token_ids=draft.token_ids,
                    token_probs=draft.token_probs[: len(draft.token_ids)],
                    pack_version=proxy.label,
                )
            )
        return wire

    def _from_cloud(
        self,
        rid: str,
        cloud: pb.GenerateResponse,
        proxy: Proxy,
        draft: DecodeResult | None,
        reason: str,
        t: Timings,
    ) -> pb.GenerateResponse:
        response = pb.GenerateResponse()
        response.CopyFrom(cloud)
        response.request_id = rid
        response.route = pb.ROUTE_CLOUD
        response.confidence = draft.confidence if draft is not None else 0.0
        response.escalation_reason = reason
        response.models.edge_pack = proxy.label if draft is not None else ""
        del response.timings[:]
        response.timings.extend(t.wire())
        return response


def _cloud_timeout(deadline_s: float, remaining: float | None) -> float:
    """The cloud call's timeout: the configured deadline, within the app's own deadline."""
    if remaining is None:
        return deadline_s
    return max(0.001, min(deadline_s, remaining * CLOUD_SHARE_OF_DEADLINE))
