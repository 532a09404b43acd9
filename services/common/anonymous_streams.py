"""Streams anyone may open are bounded: `grpc.health.v1.Health/Watch` and server reflection need no key.

Before, each of them took one of the server's concurrent calls for as long as its caller kept it open: on the
thread-pool servers (gateway, preprocessing) a worker thread too, since the health servicer's non-blocking watch
lost its non-blocking mark inside the interceptors and fell back to a thread per watch, and reflection reads its
request stream in a thread. So 32 watches or reflection streams from anyone, with no key, turned away every caller
of the gateway, health checks included (`RESOURCE_EXHAUSTED`), and a few thousand did the same on the result service.

Now:
- A watch holds no thread once its request has arrived (the interceptors keep the health servicer's non-blocking
  mark), and at most `watches` are open at once on a server.
- A reflection stream holds a thread on the thread-pool servers while it is open, so at most `reflections` are open
  at once (a sixteenth of the workers unless set: 2 on the gateway, whose 24 classifications and 6 streams at once
  still find their threads), and each is ended `reflection_lifetime_s` after it opened (a tool such as grpcurl is
  done within a second).
- One address has at most `per_address` of these streams open at once, watches and reflection together.
- Past any of these a new stream is refused at once with `RESOURCE_EXHAUSTED` and the reason.

On the asyncio server (results), where neither holds a thread, the server's limit of concurrent calls is raised by
`watches + reflections`, so these streams never take the places of the service's own calls.
"""

from __future__ import annotations

import asyncio
import inspect
import threading

import grpc

from services.common.address_share import AddressShare
from services.common.request_arrival import Watchdog, peer_address

WATCH_METHOD = "/grpc.health.v1.Health/Watch"
REFLECTION_METHODS = ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                      "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")

DEFAULT_WATCHES = 256
DEFAULT_PER_ADDRESS = 4
DEFAULT_REFLECTION_LIFETIME_S = 10.0


class AnonymousStreamPolicy:
    """How many anonymous streams a server holds open, in all and per address, and how long reflection lasts."""

    def __init__(self, max_workers: int, watches: int = DEFAULT_WATCHES, reflections: int | None = None,
                 per_address: int = DEFAULT_PER_ADDRESS,
                 reflection_lifetime_s: float = DEFAULT_REFLECTION_LIFETIME_S):
        self.watches = watches
        self.reflections = max(1, max_workers // 16) if reflections is None else reflections
        self.reflection_lifetime_s = reflection_lifetime_s
        self.per_address = AddressShare(per_address)
        self._open = {"watch": 0, "reflection": 0}
        self._lock = threading.Lock()

    @property
    def extra_calls(self) -> int:
        """Concurrent calls these streams may hold at most (a server's limit grows by this when they hold no
        thread)."""
        return self.watches + self.reflections

    def enter(self, kind: str, address: str) -> str | None:
        """Takes a place for a stream of `kind` ('watch' or 'reflection') from `address`; the refusal's reason when
        there is none (nothing taken then)."""
        limit = self.watches if kind == "watch" else self.reflections
        with self._lock:
            if self._open[kind] >= limit:
                return (f"{limit} {kind} streams are open on this server, the most it holds at once; "
                        "retry later")
            if not self.per_address.enter(address):
                return (f"this address holds {self.per_address.per_address} health watch and reflection streams "
                        "open, the most one address may")
            self._open[kind] += 1
        return None

    def leave(self, kind: str, address: str) -> None:
        with self._lock:
            self._open[kind] -= 1
            self.per_address.leave(address)

    def open_streams(self, kind: str) -> int:
        with self._lock:
            return self._open[kind]


def _kind(method: str) -> str | None:
    if method == WATCH_METHOD:
        return "watch"
    if method in REFLECTION_METHODS:
        return "reflection"
    return None


def _released_once(policy: AnonymousStreamPolicy, kind: str, address: str):
    released = threading.Lock()

    def release() -> None:
        if released.acquire(blocking=False):
            policy.leave(kind, address)
    return release


class AnonymousStreamLimit(grpc.ServerInterceptor):
    """On a thread-pool server: put outside the other interceptors (a refused stream costs nothing more)."""

    def __init__(self, policy: AnonymousStreamPolicy, watchdog: Watchdog | None = None):
        self.policy = policy
        self._watchdog = watchdog or Watchdog(name="grpc-anonymous-streams")

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        kind = _kind(handler_call_details.method)
        if handler is None or kind is None or not handler.response_streaming:
            return handler
        attribute = "stream_stream" if handler.request_streaming else "unary_stream"
        behaviour = getattr(handler, attribute)
        policy, watchdog = self.policy, self._watchdog

        def opened(context):
            address = peer_address(context.peer())
            reason = policy.enter(kind, address)
            if reason:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, reason)
            release = _released_once(policy, kind, address)
            ending = (watchdog.after(policy.reflection_lifetime_s, context.cancel) if kind == "reflection"
                      else None)

            def ended() -> None:
                if ending is not None:
                    watchdog.cancel(ending)
                release()
            if not context.add_callback(ended):  # the call has ended already
                ended()

        if getattr(behaviour, "experimental_non_blocking", False):
            def non_blocking(request, context, send_response_callback=None):
                opened(context)
                behaviour(request, context, send_response_callback=send_response_callback)
            non_blocking.experimental_non_blocking = True
            return handler._replace(**{attribute: non_blocking})

        def blocking(request, context):
            opened(context)
            yield from behaviour(request, context)
        return handler._replace(**{attribute: blocking})


class AsyncAnonymousStreamLimit(grpc.aio.ServerInterceptor):
    """The same on a grpc.aio server, where the streams are coroutines: a reflection stream's next request must
    arrive within what is left of its lifetime, or it is ended there."""

    def __init__(self, policy: AnonymousStreamPolicy):
        self.policy = policy

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        kind = _kind(handler_call_details.method)
        if handler is None or kind is None or not handler.response_streaming:
            return handler
        attribute = "stream_stream" if handler.request_streaming else "unary_stream"
        behaviour = getattr(handler, attribute)
        policy = self.policy

        async def opened(request, context):
            address = peer_address(context.peer())
            reason = policy.enter(kind, address)
            if reason:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, reason)
            release = _released_once(policy, kind, address)
            context.add_done_callback(lambda _context: release())
            if kind == "reflection" and handler.request_streaming:
                request = _within(request, context, policy.reflection_lifetime_s)
            return request, release

        if inspect.isasyncgenfunction(behaviour):
            async def limited(request, context):
                request, release = await opened(request, context)
                try:
                    async for response in behaviour(request, context):
                        yield response
                finally:
                    release()
            return handler._replace(**{attribute: limited})
        if inspect.iscoroutinefunction(behaviour):  # a stream that writes with context.write (the health watch)
            async def limited_writes(request, context):
                request, release = await opened(request, context)
                try:
                    return await behaviour(request, context)
                finally:
                    release()
            return handler._replace(**{attribute: limited_writes})
        return handler


async def _within(requests, context, seconds: float):
    """The requests of a stream that must all arrive within `seconds` of its start."""
    loop = asyncio.get_running_loop()
    ends = loop.time() + seconds
    iterator = requests.__aiter__()
    while True:
        try:
            request = await asyncio.wait_for(iterator.__anext__(), max(0.0, ends - loop.time()))
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"a reflection stream lasts at most "
                                f"{seconds:.0f} s; open another")
        yield request
