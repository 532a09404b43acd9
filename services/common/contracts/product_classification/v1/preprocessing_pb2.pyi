from services.common.contracts.product_classification.v1 import common_pb2 as _common_pb2
from services.common.contracts.product_classification.v1 import events_pb2 as _events_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PredictListingRequest(_message.Message):
    __slots__ = ("submission_id", "listing")
    SUBMISSION_ID_FIELD_NUMBER: _ClassVar[int]
    LISTING_FIELD_NUMBER: _ClassVar[int]
    submission_id: str
    listing: _common_pb2.Listing
    def __init__(self, submission_id: _Optional[str] = ..., listing: _Optional[_Union[_common_pb2.Listing, _Mapping]] = ...) -> None: ...
