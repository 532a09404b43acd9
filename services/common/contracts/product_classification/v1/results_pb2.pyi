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
    __slots__ = ("marketplace", "page_size", "before_sequence", "failed_only", "error_kind")
    MARKETPLACE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    BEFORE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    FAILED_ONLY_FIELD_NUMBER: _ClassVar[int]
    ERROR_KIND_FIELD_NUMBER: _ClassVar[int]
    marketplace: str
    page_size: int
    before_sequence: int
    failed_only: bool
    error_kind: _common_pb2.ErrorKind
    def __init__(self, marketplace: _Optional[str] = ..., page_size: _Optional[int] = ..., before_sequence: _Optional[int] = ..., failed_only: _Optional[bool] = ..., error_kind: _Optional[_Union[_common_pb2.ErrorKind, str]] = ...) -> None: ...

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

class RecordCorrectionRequest(_message.Message):
    __slots__ = ("correction_id", "listing_id", "classification_sequence", "category_id", "operator", "locale")
    CORRECTION_ID_FIELD_NUMBER: _ClassVar[int]
    LISTING_ID_FIELD_NUMBER: _ClassVar[int]
    CLASSIFICATION_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_ID_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    LOCALE_FIELD_NUMBER: _ClassVar[int]
    correction_id: str
    listing_id: str
    classification_sequence: int
    category_id: str
    operator: str
    locale: str
    def __init__(self, correction_id: _Optional[str] = ..., listing_id: _Optional[str] = ..., classification_sequence: _Optional[int] = ..., category_id: _Optional[str] = ..., operator: _Optional[str] = ..., locale: _Optional[str] = ...) -> None: ...

class ListCorrectionsRequest(_message.Message):
    __slots__ = ("marketplace", "listing_id", "page_size", "before_sequence")
    MARKETPLACE_FIELD_NUMBER: _ClassVar[int]
    LISTING_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    BEFORE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    marketplace: str
    listing_id: str
    page_size: int
    before_sequence: int
    def __init__(self, marketplace: _Optional[str] = ..., listing_id: _Optional[str] = ..., page_size: _Optional[int] = ..., before_sequence: _Optional[int] = ...) -> None: ...

class ListCorrectionsResponse(_message.Message):
    __slots__ = ("corrections", "next_before_sequence")
    CORRECTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_BEFORE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    corrections: _containers.RepeatedCompositeFieldContainer[_common_pb2.Correction]
    next_before_sequence: int
    def __init__(self, corrections: _Optional[_Iterable[_Union[_common_pb2.Correction, _Mapping]]] = ..., next_before_sequence: _Optional[int] = ...) -> None: ...

class ListReviewQueueRequest(_message.Message):
    __slots__ = ("marketplace", "category_id", "page_size", "offset", "listing_id")
    MARKETPLACE_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LISTING_ID_FIELD_NUMBER: _ClassVar[int]
    marketplace: str
    category_id: str
    page_size: int
    offset: int
    listing_id: str
    def __init__(self, marketplace: _Optional[str] = ..., category_id: _Optional[str] = ..., page_size: _Optional[int] = ..., offset: _Optional[int] = ..., listing_id: _Optional[str] = ...) -> None: ...

class ListReviewQueueResponse(_message.Message):
    __slots__ = ("classifications", "total")
    CLASSIFICATIONS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    classifications: _containers.RepeatedCompositeFieldContainer[_common_pb2.Classification]
    total: int
    def __init__(self, classifications: _Optional[_Iterable[_Union[_common_pb2.Classification, _Mapping]]] = ..., total: _Optional[int] = ...) -> None: ...

class SearchCategoriesRequest(_message.Message):
    __slots__ = ("marketplace", "locale", "query", "category_ids", "page_size")
    MARKETPLACE_FIELD_NUMBER: _ClassVar[int]
    LOCALE_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_IDS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    marketplace: str
    locale: str
    query: str
    category_ids: _containers.RepeatedScalarFieldContainer[str]
    page_size: int
    def __init__(self, marketplace: _Optional[str] = ..., locale: _Optional[str] = ..., query: _Optional[str] = ..., category_ids: _Optional[_Iterable[str]] = ..., page_size: _Optional[int] = ...) -> None: ...

class SearchCategoriesResponse(_message.Message):
    __slots__ = ("categories",)
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    categories: _containers.RepeatedCompositeFieldContainer[_common_pb2.Category]
    def __init__(self, categories: _Optional[_Iterable[_Union[_common_pb2.Category, _Mapping]]] = ...) -> None: ...

class GetThumbnailRequest(_message.Message):
    __slots__ = ("image_digest",)
    IMAGE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    image_digest: str
    def __init__(self, image_digest: _Optional[str] = ...) -> None: ...

class Thumbnail(_message.Message):
    __slots__ = ("image_digest", "jpeg")
    IMAGE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    JPEG_FIELD_NUMBER: _ClassVar[int]
    image_digest: str
    jpeg: bytes
    def __init__(self, image_digest: _Optional[str] = ..., jpeg: _Optional[bytes] = ...) -> None: ...

class GetStatisticsRequest(_message.Message):
    __slots__ = ("marketplace", "window_s", "locale")
    MARKETPLACE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    LOCALE_FIELD_NUMBER: _ClassVar[int]
    marketplace: str
    window_s: int
    locale: str
    def __init__(self, marketplace: _Optional[str] = ..., window_s: _Optional[int] = ..., locale: _Optional[str] = ...) -> None: ...

class ThroughputBucket(_message.Message):
    __slots__ = ("start", "classifications")
    START_FIELD_NUMBER: _ClassVar[int]
    CLASSIFICATIONS_FIELD_NUMBER: _ClassVar[int]
    start: int
    classifications: int
    def __init__(self, start: _Optional[int] = ..., classifications: _Optional[int] = ...) -> None: ...

class CategoryStatistics(_message.Message):
    __slots__ = ("label", "category", "classified", "needs_review", "checked", "checked_correct")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    CLASSIFIED_FIELD_NUMBER: _ClassVar[int]
    NEEDS_REVIEW_FIELD_NUMBER: _ClassVar[int]
    CHECKED_FIELD_NUMBER: _ClassVar[int]
    CHECKED_CORRECT_FIELD_NUMBER: _ClassVar[int]
    label: str
    category: _common_pb2.Category
    classified: int
    needs_review: int
    checked: int
    checked_correct: int
    def __init__(self, label: _Optional[str] = ..., category: _Optional[_Union[_common_pb2.Category, _Mapping]] = ..., classified: _Optional[int] = ..., needs_review: _Optional[int] = ..., checked: _Optional[int] = ..., checked_correct: _Optional[int] = ...) -> None: ...

class Statistics(_message.Message):
    __slots__ = ("window_s", "classified", "needs_review", "failed", "checked", "checked_correct", "per_minute", "per_category", "failed_by_kind")
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    CLASSIFIED_FIELD_NUMBER: _ClassVar[int]
    NEEDS_REVIEW_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    CHECKED_FIELD_NUMBER: _ClassVar[int]
    CHECKED_CORRECT_FIELD_NUMBER: _ClassVar[int]
    PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    PER_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    FAILED_BY_KIND_FIELD_NUMBER: _ClassVar[int]
    window_s: int
    classified: int
    needs_review: int
    failed: int
    checked: int
    checked_correct: int
    per_minute: _containers.RepeatedCompositeFieldContainer[ThroughputBucket]
    per_category: _containers.RepeatedCompositeFieldContainer[CategoryStatistics]
    failed_by_kind: _containers.RepeatedCompositeFieldContainer[FailureCount]
    def __init__(self, window_s: _Optional[int] = ..., classified: _Optional[int] = ..., needs_review: _Optional[int] = ..., failed: _Optional[int] = ..., checked: _Optional[int] = ..., checked_correct: _Optional[int] = ..., per_minute: _Optional[_Iterable[_Union[ThroughputBucket, _Mapping]]] = ..., per_category: _Optional[_Iterable[_Union[CategoryStatistics, _Mapping]]] = ..., failed_by_kind: _Optional[_Iterable[_Union[FailureCount, _Mapping]]] = ...) -> None: ...

class FailureCount(_message.Message):
    __slots__ = ("error_kind", "count")
    ERROR_KIND_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    error_kind: _common_pb2.ErrorKind
    count: int
    def __init__(self, error_kind: _Optional[_Union[_common_pb2.ErrorKind, str]] = ..., count: _Optional[int] = ...) -> None: ...

class ListMarketplacesRequest(_message.Message):
    __slots__ = ("locale",)
    LOCALE_FIELD_NUMBER: _ClassVar[int]
    locale: str
    def __init__(self, locale: _Optional[str] = ...) -> None: ...

class MarketplaceInfo(_message.Message):
    __slots__ = ("name", "locales", "default_locale", "review_threshold", "categories")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LOCALES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_LOCALE_FIELD_NUMBER: _ClassVar[int]
    REVIEW_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    name: str
    locales: _containers.RepeatedScalarFieldContainer[str]
    default_locale: str
    review_threshold: float
    categories: _containers.RepeatedCompositeFieldContainer[_common_pb2.Category]
    def __init__(self, name: _Optional[str] = ..., locales: _Optional[_Iterable[str]] = ..., default_locale: _Optional[str] = ..., review_threshold: _Optional[float] = ..., categories: _Optional[_Iterable[_Union[_common_pb2.Category, _Mapping]]] = ...) -> None: ...

class ListMarketplacesResponse(_message.Message):
    __slots__ = ("marketplaces",)
    MARKETPLACES_FIELD_NUMBER: _ClassVar[int]
    marketplaces: _containers.RepeatedCompositeFieldContainer[MarketplaceInfo]
    def __init__(self, marketplaces: _Optional[_Iterable[_Union[MarketplaceInfo, _Mapping]]] = ...) -> None: ...
