"""The console's only way to data: the result service's gRPC API (grpc.aio), and one shared watch stream per replica.

Every browser on the live feed is served from the FeedHub's single WatchClassifications stream, so a hundred open
browsers cost the result service one stream, not a hundred.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

import grpc

from services.common.contracts.product_classification.v1 import common_pb2, results_pb2, results_pb2_grpc
from services.console.settings import ConsoleSettings

log = logging.getLogger(__name__)


class ResultsUnavailable(Exception):
    """The result service did not answer (down, overloaded, or past the deadline)."""


class ResultsClient:
    def __init__(self, settings: ConsoleSettings):
        self.settings = settings
        self.channel: grpc.aio.Channel | None = None
        self.stub: results_pb2_grpc.ClassificationResultsStub | None = None
        key = settings.results_api_key.get_secret_value() if settings.results_api_key else ""
        self.metadata = (("authorization", f"Bearer {key}"),) if key else ()
        self._names: OrderedDict[tuple[str, str], common_pb2.Category] = OrderedDict()  # (id, locale) -> category

    async def start(self) -> None:
        tls = self.settings.results_tls()
        options = [("grpc.max_receive_message_length", 16 * 1024 * 1024)]
        if tls.ca_file:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=tls.ca_file.read_bytes(),
                private_key=tls.key_file.read_bytes() if tls.key_file else None,
                certificate_chain=tls.cert_file.read_bytes() if tls.cert_file else None)
            self.channel = grpc.aio.secure_channel(self.settings.results_address, credentials, options=options)
        else:
            self.channel = grpc.aio.insecure_channel(self.settings.results_address, options=options)
        self.stub = results_pb2_grpc.ClassificationResultsStub(self.channel)

    async def stop(self) -> None:
        if self.channel is not None:
            await self.channel.close()

    async def call(self, method: str, request):
        """One unary call with the console's key and deadline. Client errors (INVALID_ARGUMENT, NOT_FOUND, ...) come
        back as grpc.aio.AioRpcError; the service being away as ResultsUnavailable."""
        try:
            return await getattr(self.stub, method)(request, metadata=self.metadata,
                                                    timeout=self.settings.results_timeout_s)
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAUTHENTICATED,
                                grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INTERNAL):
                raise ResultsUnavailable(f"{error.code().name}: {error.details()}") from None
            raise

    async def localize(self, classifications: list[common_pb2.Classification], locale: str) -> None:
        """Renames each classification's category and candidates in the operator's locale (cached per replica)."""
        wanted: dict[str, set[str]] = {}
        for classification in classifications:
            for category in [classification.category, *(c.category for c in classification.candidates)]:
                if category.id and (category.id, locale) not in self._names:
                    wanted.setdefault(classification.marketplace, set()).add(category.id)
        for marketplace, ids in wanted.items():
            found = await self.call("SearchCategories", results_pb2.SearchCategoriesRequest(
                marketplace=marketplace, locale=locale, category_ids=sorted(ids)))
            for category in found.categories:
                self._names[(category.id, locale)] = category
                while len(self._names) > 20_000:
                    self._names.popitem(last=False)
        for classification in classifications:
            for category in [classification.category, *(c.category for c in classification.candidates)]:
                named = self._names.get((category.id, locale))
                if named is not None:
                    category.CopyFrom(named)


class Subscriber:
    """One browser on the live feed: its queue, and whether the hub dropped it for not keeping up."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=256)
        self.dropped = False


class FeedHub:
    """One WatchClassifications stream per replica, fanned out to every browser on the live feed."""

    def __init__(self, client: ResultsClient, max_clients: int):
        self.client = client
        self.max_clients = max_clients
        self._subscribers: set[Subscriber] = set()
        self._task: asyncio.Task | None = None
        self.position = 0  # the last sequence seen: a reconnect resumes after it
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="feed-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        for subscriber in list(self._subscribers):
            subscriber.dropped = True

    def subscribe(self) -> Subscriber | None:
        """New classifications for one browser; None when this replica has as many browsers as it serves."""
        if len(self._subscribers) >= self.max_clients:
            return None
        subscriber = Subscriber()
        self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)

    async def _run(self) -> None:
        backoff = 0.5
        while True:
            try:
                stream = self.client.stub.WatchClassifications(
                    results_pb2.WatchClassificationsRequest(after_sequence=self.position),
                    metadata=self.client.metadata)
                self.connected.set()
                async for classification in stream:
                    backoff = 0.5
                    self.position = max(self.position, classification.sequence)
                    self._fan_out(classification)
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as error:
                log.warning("feed stream ended; reconnecting", extra={"code": error.code().name,
                                                                     "retry_in_s": backoff})
            except Exception as error:  # noqa: BLE001  (keep the feed alive whatever happens)
                log.warning("feed stream failed; reconnecting", extra={"error": repr(error), "retry_in_s": backoff})
            self.connected.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)

    def _fan_out(self, classification: common_pb2.Classification) -> None:
        for subscriber in list(self._subscribers):
            try:
                subscriber.queue.put_nowait(classification)
            except asyncio.QueueFull:  # a browser that does not read: drop it (its page reconnects and reloads)
                subscriber.dropped = True
                self._subscribers.discard(subscriber)
