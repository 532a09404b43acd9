from services.common.contracts.product_classification.v1 import common_pb2 as _common_pb2
from services.common.contracts.product_classification.v1 import events_pb2 as _events_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetClassificationRequest(_message.Message):
    __slots__ = ("listing_id",)
    LISTING_ID_FIELD_NUMBER: _ClassVar[int]
    listing_id: str
    def __init__(self, listing_id: _Optional[str] = ...) -> None: ...

class ListClassificationsRequest(_message.Message):
    __slots__ = ("marketplace", "page_size", "before_sequence")
    MARKETPLACE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    BEFORE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    marketplace: str
    page_size: int
    before_sequence: int
    def __init__(self, marketplace: _Optional[str] = ..., page_size: _Optional[int] = ..., before_sequence: _Optional[int] = ...) -> None: ...

class ListClassificationsResponse(_message.Message):
    __slots__ = ("classifications", "next_before_sequence")
    CLASSIFICATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_BEFORE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    classifications: _containers.RepeatedCompositeFieldContainer[_common_pb2.Classification]
    next_before_sequence: int
    def __init__(self, classifications: _Optional[_Iterable[_Union[_common_pb2.Classification, _Mapping]]] = ..., next_before_sequence: _Optional[int] = ...) -> None: ...

class WatchClassificationsRequest(_message.Message):
    __slots__ = ("marketplace", "after_sequence")
    MARKETPLACE_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    marketplace: str
    after_sequence: int
    def __init__(self, marketplace: _Optional[str] = ..., after_sequence: _Optional[int] = ...) -> None: ...
