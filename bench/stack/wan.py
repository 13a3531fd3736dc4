"""An emulated WAN on loopback: a TCP forwarder that delays every chunk it carries.

``DelayProxy`` listens on 127.0.0.1 and forwards each connection to a target (a cloud server),
holding every chunk of bytes for half the round-trip time, plus jitter, in each direction. Order
within a connection is kept (a chunk is never released before the one read ahead of it), the
way TCP keeps it on a real link, so gRPC over the proxy behaves as over a slow network: a unary
call on an open channel costs one round trip more; a new connection pays the handshake too.

The delay can be changed while traffic flows (``set_delay``: a latency spike), and every open
connection can be cut (``cut``: a network drop). It runs an asyncio loop on its own thread, so
tests, benchmarks and the demo use it from ordinary code::

    with DelayProxy("127.0.0.1:50051", rtt_ms=50, jitter_ms=5) as wan:
        channel = grpc.insecure_channel(wan.address)

It only ever listens on loopback; it is a measuring instrument, not a network component.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

from shared.net import split_host_port

CHUNK = 64 * 1024
T = TypeVar("T")


class DelayProxy:
    """Forwards 127.0.0.1:``port`` to ``target`` with ``rtt_ms`` of added round-trip time.

    Each direction adds ``rtt_ms / 2`` plus a uniform draw in ``[-jitter_ms / 2, jitter_ms / 2]``
    per chunk (never below zero), from a generator seeded with ``seed``.
    """

    def __init__(
        self,
        target: str,
        *,
        rtt_ms: float = 50.0,
        jitter_ms: float = 0.0,
        seed: int = 0,
        port: int = 0,
    ) -> None:
        if rtt_ms < 0 or jitter_ms < 0:
            raise ValueError("rtt_ms and jitter_ms must be >= 0")
        self.target = split_host_port(target)
        self.rtt_ms, self.jitter_ms = rtt_ms, jitter_ms
        self._rng = random.Random(seed)
        self._port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="wan", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()  # one per open connection
        self.connections = 0  # accepted so far
        self.bytes_forwarded = 0

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> DelayProxy:
        self._thread.start()
        self._server = self._call(
            asyncio.start_server(self._accept, "127.0.0.1", self._port, reuse_address=True)
        )
        self._port = int(self._server.sockets[0].getsockname()[1])
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> DelayProxy:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._port}"

    # -- knobs -----------------------------------------------------------------------------

    def set_delay(self, rtt_ms: float, jitter_ms: float = 0.0) -> None:
        """New delay for every chunk read from now on (open connections included)."""
        if rtt_ms < 0 or jitter_ms < 0:
            raise ValueError("rtt_ms and jitter_ms must be >= 0")
        self.rtt_ms, self.jitter_ms = rtt_ms, jitter_ms

    def cut(self) -> int:
        """Close every open connection at once (a dropped link); returns how many were open.
        New connections are still accepted."""
        return int(self._call(self._cut()))

    # -- inside the loop -------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def _one_way_s(self) -> float:
        half_jitter = self.jitter_ms / 2
        ms = self.rtt_ms / 2 + (self._rng.uniform(-half_jitter, half_jitter) if half_jitter else 0)
        return max(0.0, ms) / 1000

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            self._tasks.discard(task)
            client_w.close()  # the target is down: the client sees a reset, as over a WAN
            return
        self._writers |= {client_w, server_w}
        try:
            await asyncio.gather(self._pump(client_r, server_w), self._pump(server_r, client_w))
        finally:
            self._tasks.discard(task)
            for w in (client_w, server_w):
                self._writers.discard(w)
                w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Reads chunks, and writes each one when its delay is up, in order."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    break
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                writer.write(data)
                await writer.drain()
                self.bytes_forwarded += len(data)
            if writer.can_write_eof():
                writer.write_eof()

        sender = asyncio.create_task(deliver())
        last_due = 0.0
        try:
            while True:
                data = await reader.read(CHUNK)
                last_due = max(last_due, time.monotonic() + self._one_way_s())
                queue.put_nowait((last_due, data))
                if not data:
                    break
            await sender
        except (ConnectionError, OSError):
            pass
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                await sender
            writer.close()

    async def _cut(self) -> int:
        open_now = len(self._writers) // 2
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()
        return open_now

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
