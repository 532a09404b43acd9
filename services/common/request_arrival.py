"""A call's request message must arrive soon after its headers, or the call is cancelled.

gRPC counts a call against the server's limit of concurrent calls (and, on the thread-pool server, gives it a
thread) as soon as its headers arrive, then waits for the request message without any limit. So a caller that opens
calls and never sends their message, to any method (`grpc.health.v1.Health/Check` needs no key), holds them for as
long as it likes: as many silent calls as the server has workers (32 on the gateway) turned every other caller away
with RESOURCE_EXHAUSTED. `RequestArrivalDeadline` serves each method that takes one request message as a
request-streaming one, reads that message with a deadline, and cancels the call when it does not come; then the method
runs as before. Methods that take a stream of requests read it themselves.

Who the caller is decides how long it may take. It sits inside the authentication, so a call without a valid key is
refused before anything waits for its message. A caller that showed a key (or a certificate) may take `seconds` (60:
a 32 MiB photo at 5 Mbit/s) and as many calls at once as it likes. Anyone else (health and reflection need no key,
and no method does on a server without authentication) gets `anonymous_seconds` (10), and one address may have
`per_address` (8) such calls waiting at once: a call still without its message 50 ms after its headers counts as
waiting, and is cancelled then if its address already has that many (a client sends the message with the headers, so
only a silent call waits), so new silent calls cannot be opened as fast as old ones expire.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor

import grpc
from grpc._cython import cygrpc  # _SyncServicerContext: the context grpc.aio gives a blocking method's thread

from services.common.address_share import AddressShare
from services.common.grpc_security import UNAUTHENTICATED_METHODS

DEFAULT_ARRIVAL_S = 60.0
DEFAULT_ANONYMOUS_ARRIVAL_S = 10.0
DEFAULT_WAITING_PER_ADDRESS = 8
ARRIVAL_GRACE_S = 0.05  # a call whose message came within this never counts as waiting


def peer_address(peer: str) -> str:
    """'ipv4:10.0.0.7:53012' -> 'ipv4:10.0.0.7', 'ipv6:[::1]:5' -> 'ipv6:[::1]' (the port is the connection's)."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return f"{kind}:{rest.rpartition(':')[0]}"
    return peer


class Watchdog:
    """Runs actions at their deadlines from one daemon thread, looking every `tick_s` while any is pending (a timer
    per call would be a thread per call, and a heap of them a wake-up per call)."""

    def __init__(self, name: str = "grpc-arrival-watchdog", tick_s: float = 0.025):
        self.tick_s = tick_s
        self._pending: dict[int, tuple[float, Callable[[], None]]] = {}
        self._keys = itertools.count()
        self._condition = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def after(self, seconds: float, action: Callable[[], None]) -> int:
        """Schedules `action` (run within tick_s after its time); returns a handle for cancel()."""
        key = next(self._keys)
        with self._condition:
            self._pending[key] = (time.monotonic() + seconds, action)
            if len(self._pending) == 1:
                self._condition.notify()
        return key

    def cancel(self, handle: int) -> None:
        with self._condition:
            self._pending.pop(handle, None)

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._pending:
                    self._condition.wait()
                now = time.monotonic()
                due = [self._pending.pop(key)[1] for key, (at, _) in list(self._pending.items()) if at <= now]
            for action in due:
                try:
                    action()
                except Exception:  # noqa: BLE001  (a call that ended meanwhile; nothing else may stop the thread)
                    pass
            time.sleep(self.tick_s)


class ArrivalPolicy:
    """How long a call's message may take, and whether the per-address share applies (see the module's text)."""

    def __init__(self, callers_identified: bool, seconds: float = DEFAULT_ARRIVAL_S,
                 anonymous_seconds: float = DEFAULT_ANONYMOUS_ARRIVAL_S,
                 per_address: int = DEFAULT_WAITING_PER_ADDRESS):
        self.callers_identified = callers_identified
        self.seconds = seconds
        self.anonymous_seconds = anonymous_seconds
        self.waiting = AddressShare(per_address)  # calls waiting for their message

    def for_method(self, method: str) -> tuple[float, AddressShare | None]:
        """(deadline in seconds, the per-address count or None) for a call of `method` that got this far."""
        if self.callers_identified and not method.startswith(UNAUTHENTICATED_METHODS):
            return self.seconds, None
        return self.anonymous_seconds, self.waiting


class RequestArrivalDeadline(grpc.ServerInterceptor):
    """On a thread-pool server: put inside the authentication (a refused call then never waits) and outside the
    interceptors that wrap unary methods (they see the method as it was)."""

    def __init__(self, policy: ArrivalPolicy, watchdog: Watchdog | None = None):
        self.policy = policy
        self._watchdog = watchdog or Watchdog()
        self._lock = threading.Lock()

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.request_streaming:
            return handler
        seconds, waiting = self.policy.for_method(handler_call_details.method)

        def first(requests, context):
            return self._first_request(requests, context, seconds, waiting)
        if handler.response_streaming:
            behaviour = handler.unary_stream
            if getattr(behaviour, "experimental_non_blocking", False):  # (the health watch: it holds no thread)
                def answered_later(requests, context, send_response_callback=None):
                    behaviour(first(requests, context), context, send_response_callback=send_response_callback)
                answered_later.experimental_non_blocking = True
                return grpc.stream_stream_rpc_method_handler(answered_later, handler.request_deserializer,
                                                             handler.response_serializer)

            def stream_out(requests, context):
                yield from behaviour(first(requests, context), context)
            return grpc.stream_stream_rpc_method_handler(stream_out, handler.request_deserializer,
                                                         handler.response_serializer)
        behaviour = handler.unary_unary

        def unary_out(requests, context):
            return behaviour(first(requests, context), context)
        return grpc.stream_unary_rpc_method_handler(unary_out, handler.request_deserializer,
                                                    handler.response_serializer)

    def _first_request(self, requests, context, seconds: float, waiting: AddressShare | None):
        address = peer_address(context.peer())
        call = {"done": False, "counted": False, "deadline": None}

        def still_waiting() -> None:  # ARRIVAL_GRACE_S after the headers, on the watchdog's thread
            with self._lock:
                if call["done"]:
                    return
                call["counted"] = waiting.enter(address)
                if call["counted"]:
                    call["deadline"] = self._watchdog.after(seconds - ARRIVAL_GRACE_S, context.cancel)
            if not call["counted"]:
                context.cancel()

        first_check = (self._watchdog.after(ARRIVAL_GRACE_S, still_waiting) if waiting is not None
                       else self._watchdog.after(seconds, context.cancel))
        try:
            return next(requests)
        except StopIteration:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the call ended without its request message")
        finally:
            self._watchdog.cancel(first_check)
            with self._lock:
                call["done"] = True
                if call["deadline"] is not None:
                    self._watchdog.cancel(call["deadline"])
                if call["counted"]:
                    waiting.leave(address)


class AsyncRequestArrivalDeadline(grpc.aio.ServerInterceptor):
    """The same on a grpc.aio server (put inside the authentication and outside the thread bound): the message is
    awaited on the event loop, and a blocking method then runs in `pool` as grpc.aio itself would run it (with its
    thread-side context)."""

    def __init__(self, policy: ArrivalPolicy, pool: Executor):
        self.policy = policy
        self.pool = pool

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming:
            return handler
        seconds, waiting = self.policy.for_method(handler_call_details.method)

        async def first(requests, context):
            return await self._first_request(requests, context, seconds, waiting)
        if handler.response_streaming:
            behaviour = handler.unary_stream
            if inspect.iscoroutinefunction(behaviour):  # a stream written with context.write (the health watch)
                async def written_out(requests, context):
                    return await behaviour(await first(requests, context), context)
                return grpc.stream_stream_rpc_method_handler(written_out, handler.request_deserializer,
                                                             handler.response_serializer)
            if not inspect.isasyncgenfunction(behaviour):
                return handler  # (no blocking response streams are served this way)

            async def stream_out(requests, context):
                async for response in behaviour(await first(requests, context), context):
                    yield response
            return grpc.stream_stream_rpc_method_handler(stream_out, handler.request_deserializer,
                                                         handler.response_serializer)
        behaviour = handler.unary_unary
        pool = self.pool

        async def unary_out(requests, context):
            request = await first(requests, context)
            if inspect.iscoroutinefunction(behaviour):
                return await behaviour(request, context)
            return await asyncio.get_running_loop().run_in_executor(pool, behaviour, request,
                                                                    cygrpc._SyncServicerContext(context))
        return grpc.stream_unary_rpc_method_handler(unary_out, handler.request_deserializer,
                                                    handler.response_serializer)

    @staticmethod
    async def _first_request(requests, context, seconds: float, waiting: AddressShare | None):
        address = peer_address(context.peer())
        read = asyncio.ensure_future(requests.__anext__())
        read.add_done_callback(_consume_outcome)  # aborting the call ends the read with an error nobody awaits
        counted = False
        try:
            done, _ = await asyncio.wait({read}, timeout=ARRIVAL_GRACE_S if waiting is not None else seconds)
            if not done and waiting is not None:
                counted = waiting.enter(address)
                if not counted:
                    await context.abort(grpc.StatusCode.CANCELLED, "too many calls from this address are waiting "
                                        "for their request message")
                done, _ = await asyncio.wait({read}, timeout=seconds - ARRIVAL_GRACE_S)
            if not done:
                await context.abort(grpc.StatusCode.CANCELLED, f"the request message did not arrive within "
                                    f"{seconds:.0f} s of the call's headers")
            try:
                return read.result()
            except StopAsyncIteration:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the call ended without its request message")
        finally:
            if not read.done():
                read.cancel()
            if counted:
                waiting.leave(address)


def _consume_outcome(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()
