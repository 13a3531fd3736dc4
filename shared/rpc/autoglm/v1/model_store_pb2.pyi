from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListPacksRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class PackFile(_message.Message):
    __slots__ = ("path", "sha256", "size")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    path: str
    sha256: str
    size: int
    def __init__(self, path: _Optional[str] = ..., sha256: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class PackInfo(_message.Message):
    __slots__ = ("name", "version", "manifest_json", "files")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    manifest_json: str
    files: _containers.RepeatedCompositeFieldContainer[PackFile]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., manifest_json: _Optional[str] = ..., files: _Optional[_Iterable[_Union[PackFile, _Mapping]]] = ...) -> None: ...

class ListPacksResponse(_message.Message):
    __slots__ = ("packs",)
    PACKS_FIELD_NUMBER: _ClassVar[int]
    packs: _containers.RepeatedCompositeFieldContainer[PackInfo]
    def __init__(self, packs: _Optional[_Iterable[_Union[PackInfo, _Mapping]]] = ...) -> None: ...

class FetchPackRequest(_message.Message):
    __slots__ = ("name", "version", "chunk_size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    chunk_size: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., chunk_size: _Optional[int] = ...) -> None: ...

class PackChunk(_message.Message):
    __slots__ = ("path", "offset", "data", "sha256", "size", "last")
    PATH_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    path: str
    offset: int
    data: bytes
    sha256: str
    size: int
    last: bool
    def __init__(self, path: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., sha256: _Optional[str] = ..., size: _Optional[int] = ..., last: _Optional[bool] = ...) -> None: ...
