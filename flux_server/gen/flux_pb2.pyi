from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Header(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class ErrorInfo(_message.Message):
    __slots__ = ("name", "message", "stack")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STACK_FIELD_NUMBER: _ClassVar[int]
    name: str
    message: str
    stack: str
    def __init__(self, name: _Optional[str] = ..., message: _Optional[str] = ..., stack: _Optional[str] = ...) -> None: ...

class ConsoleLine(_message.Message):
    __slots__ = ("seq", "offset", "level", "text")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    seq: int
    offset: float
    level: str
    text: str
    def __init__(self, seq: _Optional[int] = ..., offset: _Optional[float] = ..., level: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class DeterminismEntry(_message.Message):
    __slots__ = ("kind", "value_json")
    KIND_FIELD_NUMBER: _ClassVar[int]
    VALUE_JSON_FIELD_NUMBER: _ClassVar[int]
    kind: str
    value_json: str
    def __init__(self, kind: _Optional[str] = ..., value_json: _Optional[str] = ...) -> None: ...

class Frames(_message.Message):
    __slots__ = ("client", "server")
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    client: _containers.RepeatedScalarFieldContainer[bytes]
    server: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, client: _Optional[_Iterable[bytes]] = ..., server: _Optional[_Iterable[bytes]] = ...) -> None: ...

class Exchange(_message.Message):
    __slots__ = ("protocol", "connection", "seq", "lifetime", "request_id", "started_at", "duration", "frames", "request_json", "response_json", "source", "failed")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    LIFETIME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_JSON_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_JSON_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    protocol: str
    connection: int
    seq: int
    lifetime: str
    request_id: str
    started_at: float
    duration: float
    frames: Frames
    request_json: str
    response_json: str
    source: str
    failed: bool
    def __init__(self, protocol: _Optional[str] = ..., connection: _Optional[int] = ..., seq: _Optional[int] = ..., lifetime: _Optional[str] = ..., request_id: _Optional[str] = ..., started_at: _Optional[float] = ..., duration: _Optional[float] = ..., frames: _Optional[_Union[Frames, _Mapping]] = ..., request_json: _Optional[str] = ..., response_json: _Optional[str] = ..., source: _Optional[str] = ..., failed: _Optional[bool] = ...) -> None: ...

class Execution(_message.Message):
    __slots__ = ("id", "started_at", "duration", "method", "path", "query", "request_headers", "request_body", "request_truncated", "status", "response_headers", "response_body", "response_truncated", "error", "console", "exchanges", "determinism", "parent_id", "mode", "app_path", "code_version", "flux_version", "deno_version", "worker_id", "boot_id", "upstreams", "replay_outcome")
    class UpstreamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_HEADERS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_BODY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_HEADERS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_BODY_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CONSOLE_FIELD_NUMBER: _ClassVar[int]
    EXCHANGES_FIELD_NUMBER: _ClassVar[int]
    DETERMINISM_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    APP_PATH_FIELD_NUMBER: _ClassVar[int]
    CODE_VERSION_FIELD_NUMBER: _ClassVar[int]
    FLUX_VERSION_FIELD_NUMBER: _ClassVar[int]
    DENO_VERSION_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    UPSTREAMS_FIELD_NUMBER: _ClassVar[int]
    REPLAY_OUTCOME_FIELD_NUMBER: _ClassVar[int]
    id: str
    started_at: float
    duration: float
    method: str
    path: str
    query: str
    request_headers: _containers.RepeatedCompositeFieldContainer[Header]
    request_body: bytes
    request_truncated: bool
    status: int
    response_headers: _containers.RepeatedCompositeFieldContainer[Header]
    response_body: bytes
    response_truncated: bool
    error: ErrorInfo
    console: _containers.RepeatedCompositeFieldContainer[ConsoleLine]
    exchanges: _containers.RepeatedCompositeFieldContainer[Exchange]
    determinism: _containers.RepeatedCompositeFieldContainer[DeterminismEntry]
    parent_id: str
    mode: str
    app_path: str
    code_version: str
    flux_version: str
    deno_version: str
    worker_id: str
    boot_id: str
    upstreams: _containers.ScalarMap[str, str]
    replay_outcome: str
    def __init__(self, id: _Optional[str] = ..., started_at: _Optional[float] = ..., duration: _Optional[float] = ..., method: _Optional[str] = ..., path: _Optional[str] = ..., query: _Optional[str] = ..., request_headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., request_body: _Optional[bytes] = ..., request_truncated: _Optional[bool] = ..., status: _Optional[int] = ..., response_headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., response_body: _Optional[bytes] = ..., response_truncated: _Optional[bool] = ..., error: _Optional[_Union[ErrorInfo, _Mapping]] = ..., console: _Optional[_Iterable[_Union[ConsoleLine, _Mapping]]] = ..., exchanges: _Optional[_Iterable[_Union[Exchange, _Mapping]]] = ..., determinism: _Optional[_Iterable[_Union[DeterminismEntry, _Mapping]]] = ..., parent_id: _Optional[str] = ..., mode: _Optional[str] = ..., app_path: _Optional[str] = ..., code_version: _Optional[str] = ..., flux_version: _Optional[str] = ..., deno_version: _Optional[str] = ..., worker_id: _Optional[str] = ..., boot_id: _Optional[str] = ..., upstreams: _Optional[_Mapping[str, str]] = ..., replay_outcome: _Optional[str] = ...) -> None: ...

class BootRecord(_message.Message):
    __slots__ = ("id", "worker_id", "app_path", "started_at", "exchanges", "first_position")
    ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    APP_PATH_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    EXCHANGES_FIELD_NUMBER: _ClassVar[int]
    FIRST_POSITION_FIELD_NUMBER: _ClassVar[int]
    id: str
    worker_id: str
    app_path: str
    started_at: float
    exchanges: _containers.RepeatedCompositeFieldContainer[Exchange]
    first_position: int
    def __init__(self, id: _Optional[str] = ..., worker_id: _Optional[str] = ..., app_path: _Optional[str] = ..., started_at: _Optional[float] = ..., exchanges: _Optional[_Iterable[_Union[Exchange, _Mapping]]] = ..., first_position: _Optional[int] = ...) -> None: ...

class ExecutionSummary(_message.Message):
    __slots__ = ("id", "started_at", "duration", "method", "path", "status", "outcome", "error_message", "mode", "parent_id", "replay_outcome")
    ID_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    REPLAY_OUTCOME_FIELD_NUMBER: _ClassVar[int]
    id: str
    started_at: float
    duration: float
    method: str
    path: str
    status: int
    outcome: str
    error_message: str
    mode: str
    parent_id: str
    replay_outcome: str
    def __init__(self, id: _Optional[str] = ..., started_at: _Optional[float] = ..., duration: _Optional[float] = ..., method: _Optional[str] = ..., path: _Optional[str] = ..., status: _Optional[int] = ..., outcome: _Optional[str] = ..., error_message: _Optional[str] = ..., mode: _Optional[str] = ..., parent_id: _Optional[str] = ..., replay_outcome: _Optional[str] = ...) -> None: ...

class ExecutionFilter(_message.Message):
    __slots__ = ("outcome", "status", "status_class", "path", "method", "since", "until", "mode", "search")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STATUS_CLASS_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SEARCH_FIELD_NUMBER: _ClassVar[int]
    outcome: str
    status: int
    status_class: str
    path: str
    method: str
    since: float
    until: float
    mode: str
    search: str
    def __init__(self, outcome: _Optional[str] = ..., status: _Optional[int] = ..., status_class: _Optional[str] = ..., path: _Optional[str] = ..., method: _Optional[str] = ..., since: _Optional[float] = ..., until: _Optional[float] = ..., mode: _Optional[str] = ..., search: _Optional[str] = ...) -> None: ...

class RecordBatchRequest(_message.Message):
    __slots__ = ("executions", "boots")
    EXECUTIONS_FIELD_NUMBER: _ClassVar[int]
    BOOTS_FIELD_NUMBER: _ClassVar[int]
    executions: _containers.RepeatedCompositeFieldContainer[Execution]
    boots: _containers.RepeatedCompositeFieldContainer[BootRecord]
    def __init__(self, executions: _Optional[_Iterable[_Union[Execution, _Mapping]]] = ..., boots: _Optional[_Iterable[_Union[BootRecord, _Mapping]]] = ...) -> None: ...

class RecordBatchResponse(_message.Message):
    __slots__ = ("executions_stored", "boots_stored")
    EXECUTIONS_STORED_FIELD_NUMBER: _ClassVar[int]
    BOOTS_STORED_FIELD_NUMBER: _ClassVar[int]
    executions_stored: int
    boots_stored: int
    def __init__(self, executions_stored: _Optional[int] = ..., boots_stored: _Optional[int] = ...) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ("filter", "limit", "cursor")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    filter: ExecutionFilter
    limit: int
    cursor: str
    def __init__(self, filter: _Optional[_Union[ExecutionFilter, _Mapping]] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class ListResponse(_message.Message):
    __slots__ = ("executions", "next_cursor")
    EXECUTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    executions: _containers.RepeatedCompositeFieldContainer[ExecutionSummary]
    next_cursor: str
    def __init__(self, executions: _Optional[_Iterable[_Union[ExecutionSummary, _Mapping]]] = ..., next_cursor: _Optional[str] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetBootRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class TailRequest(_message.Message):
    __slots__ = ("filter",)
    FILTER_FIELD_NUMBER: _ClassVar[int]
    filter: ExecutionFilter
    def __init__(self, filter: _Optional[_Union[ExecutionFilter, _Mapping]] = ...) -> None: ...
