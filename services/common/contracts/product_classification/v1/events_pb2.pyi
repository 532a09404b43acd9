import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from services.common.contracts.product_classification.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListingSubmitted(_message.Message):
    __slots__ = ("submission_id", "listing", "submitted_at")
    SUBMISSION_ID_FIELD_NUMBER: _ClassVar[int]
    LISTING_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    submission_id: str
    listing: _common_pb2.Listing
    submitted_at: _timestamp_pb2.Timestamp
    def __init__(self, submission_id: _Optional[str] = ..., listing: _Optional[_Union[_common_pb2.Listing, _Mapping]] = ..., submitted_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class PredictionMade(_message.Message):
    __slots__ = ("submission_id", "listing_id", "marketplace", "locale", "image_digest", "predictions", "submitted_at", "predicted_at", "thumbnail_jpeg")
    SUBMISSION_ID_FIELD_NUMBER: _ClassVar[int]
    LISTING_ID_FIELD_NUMBER: _ClassVar[int]
    MARKETPLACE_FIELD_NUMBER: _ClassVar[int]
    LOCALE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_AT_FIELD_NUMBER: _ClassVar[int]
    THUMBNAIL_JPEG_FIELD_NUMBER: _ClassVar[int]
    submission_id: str
    listing_id: str
    marketplace: str
    locale: str
    image_digest: str
    predictions: _containers.RepeatedCompositeFieldContainer[_common_pb2.ModelPrediction]
    submitted_at: _timestamp_pb2.Timestamp
    predicted_at: _timestamp_pb2.Timestamp
    thumbnail_jpeg: bytes
    def __init__(self, submission_id: _Optional[str] = ..., listing_id: _Optional[str] = ..., marketplace: _Optional[str] = ..., locale: _Optional[str] = ..., image_digest: _Optional[str] = ..., predictions: _Optional[_Iterable[_Union[_common_pb2.ModelPrediction, _Mapping]]] = ..., submitted_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., predicted_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., thumbnail_jpeg: _Optional[bytes] = ...) -> None: ...

class ListingClassified(_message.Message):
    __slots__ = ("classification", "event_id")
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    classification: _common_pb2.Classification
    event_id: str
    def __init__(self, classification: _Optional[_Union[_common_pb2.Classification, _Mapping]] = ..., event_id: _Optional[str] = ...) -> None: ...

class ListingCorrected(_message.Message):
    __slots__ = ("correction", "event_id")
    CORRECTION_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    correction: _common_pb2.Correction
    event_id: str
    def __init__(self, correction: _Optional[_Union[_common_pb2.Correction, _Mapping]] = ..., event_id: _Optional[str] = ...) -> None: ...

class ProcessingFailed(_message.Message):
    __slots__ = ("submission_id", "listing_id", "marketplace", "error_kind", "reason", "stage", "source_topic", "source_partition", "source_offset", "original_payload", "failed_at", "submitted_at", "source_batch", "source_batch_offset")
    SUBMISSION_ID_FIELD_NUMBER: _ClassVar[int]
    LISTING_ID_FIELD_NUMBER: _ClassVar[int]
    MARKETPLACE_FIELD_NUMBER: _ClassVar[int]
    ERROR_KIND_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TOPIC_FIELD_NUMBER: _ClassVar[int]
    SOURCE_PARTITION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    FAILED_AT_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_BATCH_FIELD_NUMBER: _ClassVar[int]
    SOURCE_BATCH_OFFSET_FIELD_NUMBER: _ClassVar[int]
    submission_id: str
    listing_id: str
    marketplace: str
    error_kind: _common_pb2.ErrorKind
    reason: str
    stage: str
    source_topic: str
    source_partition: int
    source_offset: int
    original_payload: bytes
    failed_at: _timestamp_pb2.Timestamp
    submitted_at: _timestamp_pb2.Timestamp
    source_batch: bytes
    source_batch_offset: int
    def __init__(self, submission_id: _Optional[str] = ..., listing_id: _Optional[str] = ..., marketplace: _Optional[str] = ..., error_kind: _Optional[_Union[_common_pb2.ErrorKind, str]] = ..., reason: _Optional[str] = ..., stage: _Optional[str] = ..., source_topic: _Optional[str] = ..., source_partition: _Optional[int] = ..., source_offset: _Optional[int] = ..., original_payload: _Optional[bytes] = ..., failed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., submitted_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source_batch: _Optional[bytes] = ..., source_batch_offset: _Optional[int] = ...) -> None: ...
