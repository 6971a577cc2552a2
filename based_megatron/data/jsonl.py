"""Streaming Pile-style JSONL input (plain, ``.gz`` or ``.zst``) and per-line validation.

Every problem is a ``BadInput`` naming the file, the 1-based line and one of ``BAD_INPUT_CLASSES``.
"""

import gzip
import io
import json
import os
from dataclasses import dataclass
from typing import BinaryIO, Dict, Iterator, List, Sequence, Tuple

MALFORMED_JSON = "malformed JSON"
MISSING_KEY = "missing key"
NON_STRING = "non-string value"
INVALID_UTF8 = "invalid UTF-8"
EMPTY_DOCUMENT = "empty document"
UNREADABLE_FILE = "unreadable file"
BAD_INPUT_CLASSES = (MALFORMED_JSON, MISSING_KEY, NON_STRING, INVALID_UTF8, EMPTY_DOCUMENT,
                     UNREADABLE_FILE)


@dataclass
class BadInput(Exception):
    path: str
    line: int  # 1-based; 0 when the whole file is unusable
    kind: str  # one of BAD_INPUT_CLASSES
    problem: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.kind}: {self.problem}"


def check_input_file(path: str) -> None:
    """Raise BadInput(UNREADABLE_FILE) unless ``path`` is a readable regular file."""
    if not os.path.exists(path):
        raise BadInput(path, 0, UNREADABLE_FILE, "no such file")
    if not os.path.isfile(path):
        raise BadInput(path, 0, UNREADABLE_FILE, "not a regular file")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as error:
        raise BadInput(path, 0, UNREADABLE_FILE, f"cannot be read ({error.strerror})") from None


def open_input(path: str) -> BinaryIO:
    """A binary stream of the decompressed contents, chosen by extension (.gz, .zst, else plain)."""
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith(".zst"):
        import zstandard

        raw = open(path, "rb")
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))
    return open(path, "rb")


def iter_line_chunks(path: str, max_lines: int, max_bytes: int) -> Iterator[Tuple[int, List[bytes]]]:
    """Yield (first line number, raw lines) chunks; memory is bounded by one chunk. A read
    failure part-way (corrupt or truncated compressed stream) yields the lines read so far, then
    raises BadInput(UNREADABLE_FILE) at the line that could not be read."""
    chunk: List[bytes] = []
    chunk_bytes = 0
    first_line = 1
    failure = None
    try:
        with open_input(path) as stream:
            for raw in stream:
                chunk.append(raw)
                chunk_bytes += len(raw)
                if len(chunk) >= max_lines or chunk_bytes >= max_bytes:
                    yield first_line, chunk
                    first_line, chunk, chunk_bytes = first_line + len(chunk), [], 0
    except _read_errors() as error:
        failure = BadInput(path, first_line + len(chunk), UNREADABLE_FILE, f"read failed: {error}")
    if chunk:
        yield first_line, chunk
    if failure is not None:
        raise failure


def _read_errors() -> tuple:
    import zstandard

    return (OSError, EOFError, ValueError, zstandard.ZstdError)


def _first_surrogate(text: str) -> int:
    """Index of the first lone surrogate (from a JSON escape such as \\udc80), or -1."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return error.start
    return -1


def parse_line(raw: bytes, keys: Sequence[str], path: str, line: int) -> Dict[str, str]:
    """The texts under ``keys`` of one JSONL line, or BadInput naming the problem."""
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadInput(path, line, INVALID_UTF8,
                       f"byte {error.start} of the line is not valid UTF-8 ({error.reason})") from None
    if not decoded.strip():
        raise BadInput(path, line, MALFORMED_JSON, "blank line, expected a JSON object")
    try:
        record = json.loads(decoded)
    except json.JSONDecodeError as error:
        raise BadInput(path, line, MALFORMED_JSON, f"{error.msg} at column {error.colno}") from None
    if not isinstance(record, dict):
        raise BadInput(path, line, MALFORMED_JSON,
                       f"expected a JSON object, got {type(record).__name__}")
    texts = {}
    for key in keys:
        if key not in record:
            raise BadInput(path, line, MISSING_KEY, f"no key {key!r} (keys: {sorted(record)[:8]})")
        value = record[key]
        if not isinstance(value, str):
            raise BadInput(path, line, NON_STRING,
                           f"key {key!r} holds {type(value).__name__}, expected a string")
        position = -1 if value.isascii() else _first_surrogate(value)
        if position >= 0:
            raise BadInput(path, line, INVALID_UTF8,
                           f"key {key!r}: escaped lone surrogate \\u{ord(value[position]):04x} at "
                           f"character {position} is not valid UTF-8")
        if not value.strip():
            raise BadInput(path, line, EMPTY_DOCUMENT, f"key {key!r} is empty or only whitespace")
        texts[key] = value
    return texts
