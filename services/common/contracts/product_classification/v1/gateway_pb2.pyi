from services.common.contracts.product_classification.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClassifyListingRequest(_message.Message):
    __slots__ = ("listing",)
    LISTING_FIELD_NUMBER: _ClassVar[int]
    listing: _common_pb2.Listing
    def __init__(self, listing: _Optional[_Union[_common_pb2.Listing, _Mapping]] = ...) -> None: ...

class ClassifyListingsRequest(_message.Message):
    __slots__ = ("listings",)
    LISTINGS_FIELD_NUMBER: _ClassVar[int]
    listings: _containers.RepeatedCompositeFieldContainer[_common_pb2.Listing]
    def __init__(self, listings: _Optional[_Iterable[_Union[_common_pb2.Listing, _Mapping]]] = ...) -> None: ...

class ClassificationOutcome(_message.Message):
    __slots__ = ("listing_id", "classification", "error")
    LISTING_ID_FIELD_NUMBER: _ClassVar[int]
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    listing_id: str
    classification: _common_pb2.Classification
    error: ClassificationError
    def __init__(self, listing_id: _Optional[str] = ..., classification: _Optional[_Union[_common_pb2.Classification, _Mapping]] = ..., error: _Optional[_Union[ClassificationError, _Mapping]] = ...) -> None: ...

class ClassificationError(_message.Message):
    __slots__ = ("kind", "reason")
    KIND_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    kind: _common_pb2.ErrorKind
    reason: str
    def __init__(self, kind: _Optional[_Union[_common_pb2.ErrorKind, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class ClassifyListingsResponse(_message.Message):
    __slots__ = ("outcomes",)
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedCompositeFieldContainer[ClassificationOutcome]
    def __init__(self, outcomes: _Optional[_Iterable[_Union[ClassificationOutcome, _Mapping]]] = ...) -> None: ...

class SubmitListingRequest(_message.Message):
    __slots__ = ("listing",)
    LISTING_FIELD_NUMBER: _ClassVar[int]
    listing: _common_pb2.Listing
    def __init__(self, listing: _Optional[_Union[_common_pb2.Listing, _Mapping]] = ...) -> None: ...

class SubmitListingResponse(_message.Message):
    __slots__ = ("submission_id", "listing_id")
    SUBMISSION_ID_FIELD_NUMBER: _ClassVar[int]
    LISTING_ID_FIELD_NUMBER: _ClassVar[int]
    submission_id: str
    listing_id: str
    def __init__(self, submission_id: _Optional[str] = ..., listing_id: _Optional[str] = ...) -> None: ...
