"""The cloud's continuous-batching engine: requests, scheduler, the step loop and its async wrapper.

``EngineCore.step()`` = schedule -> one batched forward -> sample -> update request states -> emit
:class:`TokenEvent` s. :class:`AsyncEngine` runs that loop in a thread for asyncio handlers.
"""

from cloud.engine.core import EngineCore, TokenEvent
from cloud.engine.loop import AsyncEngine, EngineFailed, EngineStopped
from cloud.engine.request import (
    InvalidRequest,
    Request,
    RequestStatus,
    SamplingParams,
    validate_request,
)
from cloud.engine.scheduler import QueueFull, Scheduler, SchedulerOutput

__all__ = [
    "AsyncEngine",
    "EngineCore",
    "EngineFailed",
    "EngineStopped",
    "InvalidRequest",
    "QueueFull",
    "Request",
    "RequestStatus",
    "SamplingParams",
    "Scheduler",
    "SchedulerOutput",
    "TokenEvent",
    "validate_request",
]
