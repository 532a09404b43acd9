import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClassificationStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CLASSIFICATION_STATUS_UNSPECIFIED: _ClassVar[ClassificationStatus]
    CLASSIFICATION_STATUS_CLASSIFIED: _ClassVar[ClassificationStatus]
    CLASSIFICATION_STATUS_FAILED: _ClassVar[ClassificationStatus]
    CLASSIFICATION_STATUS_NEEDS_REVIEW: _ClassVar[ClassificationStatus]

class ErrorKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_KIND_UNSPECIFIED: _ClassVar[ErrorKind]
    ERROR_KIND_INVALID_REQUEST: _ClassVar[ErrorKind]
    ERROR_KIND_INVALID_IMAGE: _ClassVar[ErrorKind]
    ERROR_KIND_IMAGE_TOO_LARGE: _ClassVar[ErrorKind]
    ERROR_KIND_SOURCE_UNREACHABLE: _ClassVar[ErrorKind]
    ERROR_KIND_UNAVAILABLE: _ClassVar[ErrorKind]
    ERROR_KIND_INTERNAL: _ClassVar[ErrorKind]
    ERROR_KIND_OVERLOADED: _ClassVar[ErrorKind]
    ERROR_KIND_SOURCE_TOO_SLOW: _ClassVar[ErrorKind]
CLASSIFICATION_STATUS_UNSPECIFIED: ClassificationStatus
CLASSIFICATION_STATUS_CLASSIFIED: ClassificationStatus
CLASSIFICATION_STATUS_FAILED: ClassificationStatus
CLASSIFICATION_STATUS_NEEDS_REVIEW: ClassificationStatus
ERROR_KIND_UNSPECIFIED: ErrorKind
ERROR_KIND_INVALID_REQUEST: ErrorKind
ERROR_KIND_INVALID_IMAGE: ErrorKind
ERROR_KIND_IMAGE_TOO_LARGE: ErrorKind
ERROR_KIND_SOURCE_UNREACHABLE: ErrorKind
ERROR_KIND_UNAVAILABLE: ErrorKind
ERROR_KIND_INTERNAL: ErrorKind
ERROR_KIND_OVERLOADED: ErrorKind
ERROR_KIND_SOURCE_TOO_SLOW: ErrorKind

class Listing(_message.Message):
    __slots__ = ("listing_id", "marketplace", "locale", "image_bytes", "image_url", "title")
    LISTING_ID_FIELD_NUMBER: _ClassVar[int]
    MARKETPLACE_FIELD_NUMBER: _ClassVar[int]
    LOCALE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    IMAGE_URL_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    listing_id: str
    marketplace: str
    locale: str
    image_bytes: bytes
    image_url: str
    title: str
    def __init__(self, listing_id: _Optional[str] = ..., marketplace: _Optional[str] = ..., locale: _Optional[str] = ..., image_bytes: _Optional[bytes] = ..., image_url: _Optional[str] = ..., title: _Optional[str] = ...) -> None: ...

class ModelPrediction(_message.Message):
    __slots__ = ("model_name", "model_version", "labels", "probabilities")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., probabilities: _Optional[_Iterable[float]] = ...) -> None: ...

class Category(_message.Message):
    __slots__ = ("id", "name", "path", "locale", "google_category", "customs_codes")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    LOCALE_FIELD_NUMBER: _ClassVar[int]
    GOOGLE_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    CUSTOMS_CODES_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    path: _containers.RepeatedScalarFieldContainer[str]
    locale: str
    google_category: GoogleProductCategory
    customs_codes: _containers.RepeatedCompositeFieldContainer[CustomsCode]
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., path: _Optional[_Iterable[str]] = ..., locale: _Optional[str] = ..., google_category: _Optional[_Union[GoogleProductCategory, _Mapping]] = ..., customs_codes: _Optional[_Iterable[_Union[CustomsCode, _Mapping]]] = ...) -> None: ...

class GoogleProductCategory(_message.Message):
    __slots__ = ("id", "name")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class CustomsCode(_message.Message):
    __slots__ = ("code", "description", "heading", "heading_description", "depends_on")
    class DependsOnEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CODE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    HEADING_FIELD_NUMBER: _ClassVar[int]
    HEADING_DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    DEPENDS_ON_FIELD_NUMBER: _ClassVar[int]
    code: str
    description: str
    heading: str
    heading_description: str
    depends_on: _containers.ScalarMap[str, str]
    def __init__(self, code: _Optional[str] = ..., description: _Optional[str] = ..., heading: _Optional[str] = ..., heading_description: _Optional[str] = ..., depends_on: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CategoryCandidate(_message.Message):
    __slots__ = ("category", "label", "confidence")
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    category: Category
    label: str
    confidence: float
    def __init__(self, category: _Optional[_Union[Category, _Mapping]] = ..., label: _Optional[str] = ..., confidence: _Optional[float] = ...) -> None: ...

class Classification(_message.Message):
    __slots__ = ("listing_id", "submission_id", "marketplace", "locale", "status", "category", "label", "confidence", "candidates", "image_digest", "model_versions", "submitted_at", "classified_at", "error_kind", "error_reason", "sequence", "review_threshold", "superseded")
    LISTING_ID_FIELD_NUMBER: _ClassVar[int]
    SUBMISSION_ID_FIELD_NUMBER: _ClassVar[int]
    MARKETPLACE_FIELD_NUMBER: _ClassVar[int]
    LOCALE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    IMAGE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    CLASSIFIED_AT_FIELD_NUMBER: _ClassVar[int]
    ERROR_KIND_FIELD_NUMBER: _ClassVar[int]
    ERROR_REASON_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    REVIEW_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SUPERSEDED_FIELD_NUMBER: _ClassVar[int]
    listing_id: str
    submission_id: str
    marketplace: str
    locale: str
    status: ClassificationStatus
    category: Category
    label: str
    confidence: float
    candidates: _containers.RepeatedCompositeFieldContainer[CategoryCandidate]
    image_digest: str
    model_versions: str
    submitted_at: _timestamp_pb2.Timestamp
    classified_at: _timestamp_pb2.Timestamp
    error_kind: ErrorKind
    error_reason: str
    sequence: int
    review_threshold: float
    superseded: bool
    def __init__(self, listing_id: _Optional[str] = ..., submission_id: _Optional[str] = ..., marketplace: _Optional[str] = ..., locale: _Optional[str] = ..., status: _Optional[_Union[ClassificationStatus, str]] = ..., category: _Optional[_Union[Category, _Mapping]] = ..., label: _Optional[str] = ..., confidence: _Optional[float] = ..., candidates: _Optional[_Iterable[_Union[CategoryCandidate, _Mapping]]] = ..., image_digest: _Optional[str] = ..., model_versions: _Optional[str] = ..., submitted_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., classified_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., error_kind: _Optional[_Union[ErrorKind, str]] = ..., error_reason: _Optional[str] = ..., sequence: _Optional[int] = ..., review_threshold: _Optional[float] = ..., superseded: _Optional[bool] = ...) -> None: ...

class Correction(_message.Message):
    __slots__ = ("correction_id", "listing_id", "marketplace", "classification_sequence", "model_answer", "category", "label", "model_was_right", "operator", "corrected_at", "sequence", "carried_from_sequence", "photo_replaced_by_sequence")
    CORRECTION_ID_FIELD_NUMBER: _ClassVar[int]
    LISTING_ID_FIELD_NUMBER: _ClassVar[int]
    MARKETPLACE_FIELD_NUMBER: _ClassVar[int]
    CLASSIFICATION_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    MODEL_ANSWER_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_WAS_RIGHT_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    CORRECTED_AT_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CARRIED_FROM_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PHOTO_REPLACED_BY_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    correction_id: str
    listing_id: str
    marketplace: str
    classification_sequence: int
    model_answer: Classification
    category: Category
    label: str
    model_was_right: bool
    operator: str
    corrected_at: _timestamp_pb2.Timestamp
    sequence: int
    carried_from_sequence: int
    photo_replaced_by_sequence: int
    def __init__(self, correction_id: _Optional[str] = ..., listing_id: _Optional[str] = ..., marketplace: _Optional[str] = ..., classification_sequence: _Optional[int] = ..., model_answer: _Optional[_Union[Classification, _Mapping]] = ..., category: _Optional[_Union[Category, _Mapping]] = ..., label: _Optional[str] = ..., model_was_right: _Optional[bool] = ..., operator: _Optional[str] = ..., corrected_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sequence: _Optional[int] = ..., carried_from_sequence: _Optional[int] = ..., photo_replaced_by_sequence: _Optional[int] = ...) -> None: ...
