from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NumericColumn(_message.Message):
    __slots__ = ("n", "sum", "sumsq", "missing", "lo", "hi", "asinh")
    N_FIELD_NUMBER: _ClassVar[int]
    SUM_FIELD_NUMBER: _ClassVar[int]
    SUMSQ_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    LO_FIELD_NUMBER: _ClassVar[int]
    HI_FIELD_NUMBER: _ClassVar[int]
    ASINH_FIELD_NUMBER: _ClassVar[int]
    n: int
    sum: float
    sumsq: float
    missing: int
    lo: float
    hi: float
    asinh: bool
    def __init__(self, n: _Optional[int] = ..., sum: _Optional[float] = ..., sumsq: _Optional[float] = ..., missing: _Optional[int] = ..., lo: _Optional[float] = ..., hi: _Optional[float] = ..., asinh: _Optional[bool] = ...) -> None: ...

class CategoricalColumn(_message.Message):
    __slots__ = ("counts", "missing")
    class CountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    counts: _containers.ScalarMap[str, int]
    missing: int
    def __init__(self, counts: _Optional[_Mapping[str, int]] = ..., missing: _Optional[int] = ...) -> None: ...

class SiteSummary(_message.Message):
    __slots__ = ("version", "rows", "labels", "numeric", "categorical", "dropped", "regression", "target_n", "target_sum", "target_sumsq", "target_lo", "target_hi", "target_asinh", "image_shape", "noise")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class NumericEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: NumericColumn
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[NumericColumn, _Mapping]] = ...) -> None: ...
    class CategoricalEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: CategoricalColumn
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[CategoricalColumn, _Mapping]] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    NUMERIC_FIELD_NUMBER: _ClassVar[int]
    CATEGORICAL_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    REGRESSION_FIELD_NUMBER: _ClassVar[int]
    TARGET_N_FIELD_NUMBER: _ClassVar[int]
    TARGET_SUM_FIELD_NUMBER: _ClassVar[int]
    TARGET_SUMSQ_FIELD_NUMBER: _ClassVar[int]
    TARGET_LO_FIELD_NUMBER: _ClassVar[int]
    TARGET_HI_FIELD_NUMBER: _ClassVar[int]
    TARGET_ASINH_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SHAPE_FIELD_NUMBER: _ClassVar[int]
    NOISE_FIELD_NUMBER: _ClassVar[int]
    version: int
    rows: int
    labels: _containers.ScalarMap[str, int]
    numeric: _containers.MessageMap[str, NumericColumn]
    categorical: _containers.MessageMap[str, CategoricalColumn]
    dropped: _containers.RepeatedScalarFieldContainer[str]
    regression: bool
    target_n: int
    target_sum: float
    target_sumsq: float
    target_lo: float
    target_hi: float
    target_asinh: bool
    image_shape: _containers.RepeatedScalarFieldContainer[int]
    noise: float
    def __init__(self, version: _Optional[int] = ..., rows: _Optional[int] = ..., labels: _Optional[_Mapping[str, int]] = ..., numeric: _Optional[_Mapping[str, NumericColumn]] = ..., categorical: _Optional[_Mapping[str, CategoricalColumn]] = ..., dropped: _Optional[_Iterable[str]] = ..., regression: _Optional[bool] = ..., target_n: _Optional[int] = ..., target_sum: _Optional[float] = ..., target_sumsq: _Optional[float] = ..., target_lo: _Optional[float] = ..., target_hi: _Optional[float] = ..., target_asinh: _Optional[bool] = ..., image_shape: _Optional[_Iterable[int]] = ..., noise: _Optional[float] = ...) -> None: ...
