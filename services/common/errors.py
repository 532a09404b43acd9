"""Errors as values with a kind. Each kind has exactly one gRPC status and one Kafka outcome, defined here."""

from __future__ import annotations

import enum

import grpc

from services.common.contracts.product_classification.v1 import common_pb2


class KafkaOutcome(enum.Enum):
    """What a consumer does with an event whose processing failed with this kind."""

    DEAD_LETTER = "dead-letter"  # can never succeed: publish to the dead-letter topic with the reason, move on
    RETRY = "retry"  # a dependency is down: retry with backoff, never drop
    # This one event found no room in the worker now (the others of its batch held it): it goes to the back of its
    # topic, counted, and is dead-lettered only after the most deferrals (services.common.deferral). Retrying the
    # whole batch would redo the same work and meet the same wait, for ever. A whole batch failing so is retried.
    DEFER = "defer"


class ErrorKind(enum.Enum):
    INVALID_REQUEST = (common_pb2.ERROR_KIND_INVALID_REQUEST, grpc.StatusCode.INVALID_ARGUMENT, KafkaOutcome.DEAD_LETTER)
    INVALID_IMAGE = (common_pb2.ERROR_KIND_INVALID_IMAGE, grpc.StatusCode.INVALID_ARGUMENT, KafkaOutcome.DEAD_LETTER)
    IMAGE_TOO_LARGE = (common_pb2.ERROR_KIND_IMAGE_TOO_LARGE, grpc.StatusCode.INVALID_ARGUMENT, KafkaOutcome.DEAD_LETTER)
    # Retried inside the worker first; a source still unreachable after the retries is dead-lettered.
    SOURCE_UNREACHABLE = (common_pb2.ERROR_KIND_SOURCE_UNREACHABLE, grpc.StatusCode.UNAVAILABLE, KafkaOutcome.DEAD_LETTER)
    SOURCE_TOO_SLOW = (common_pb2.ERROR_KIND_SOURCE_TOO_SLOW, grpc.StatusCode.UNAVAILABLE, KafkaOutcome.DEAD_LETTER)
    UNAVAILABLE = (common_pb2.ERROR_KIND_UNAVAILABLE, grpc.StatusCode.UNAVAILABLE, KafkaOutcome.RETRY)
    INTERNAL = (common_pb2.ERROR_KIND_INTERNAL, grpc.StatusCode.INTERNAL, KafkaOutcome.DEAD_LETTER)
    OVERLOADED = (common_pb2.ERROR_KIND_OVERLOADED, grpc.StatusCode.RESOURCE_EXHAUSTED, KafkaOutcome.DEFER)

    @property
    def proto(self) -> int:
        return self.value[0]

    @property
    def grpc_status(self) -> grpc.StatusCode:
        return self.value[1]

    @property
    def kafka_outcome(self) -> KafkaOutcome:
        return self.value[2]

    @classmethod
    def from_proto(cls, value: int) -> "ErrorKind":
        for kind in cls:
            if kind.proto == value:
                return kind
        return cls.INTERNAL


class ClassificationError(Exception):
    """Why one listing could not be classified; reason is safe to show to the caller."""

    def __init__(self, kind: ErrorKind, reason: str):
        super().__init__(f"{kind.name}: {reason}")
        self.kind = kind
        self.reason = reason


_STATUS_TO_KIND = {status: kind for kind in ErrorKind for status in [kind.grpc_status]}
_STATUS_TO_KIND[grpc.StatusCode.INVALID_ARGUMENT] = ErrorKind.INVALID_REQUEST
_STATUS_TO_KIND[grpc.StatusCode.DEADLINE_EXCEEDED] = ErrorKind.UNAVAILABLE
_STATUS_TO_KIND[grpc.StatusCode.NOT_FOUND] = ErrorKind.INVALID_REQUEST

# The kind travels in trailing metadata so a downstream error keeps its kind across a gRPC hop.
ERROR_KIND_METADATA_KEY = "x-error-kind"


def abort_with(context: grpc.ServicerContext, error: ClassificationError) -> None:
    """The one place a ClassificationError becomes a gRPC status (raises, as context.abort does)."""
    context.set_trailing_metadata(((ERROR_KIND_METADATA_KEY, error.kind.name),))
    context.abort(error.kind.grpc_status, error.reason)


def from_rpc_error(error: grpc.RpcError) -> ClassificationError:
    """Turns a downstream service's gRPC error back into a ClassificationError with its original kind."""
    kind = None
    for key, value in (error.trailing_metadata() or ()):
        if key == ERROR_KIND_METADATA_KEY and value in ErrorKind.__members__:
            kind = ErrorKind[value]
    if kind is None:
        kind = _STATUS_TO_KIND.get(error.code(), ErrorKind.INTERNAL)
    return ClassificationError(kind, error.details() or error.code().name)
