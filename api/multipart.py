"""Streaming ``multipart/related`` (RFC 2387) reading and writing for DICOMweb bodies.

Reading uses python-multipart's parser: parts come out as soon as they end, each bounded in
size, so a STOW-RS request is never held whole in memory and a body that is malformed or
truncated is noticed (``MultipartError``) without guessing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

__all__ = ["MultipartError", "Part", "PartTooLarge", "RelatedParts", "boundary_of", "related_chunks"]


class MultipartError(ValueError):
    """The body is not well-formed ``multipart/related``."""


class PartTooLarge(MultipartError):
    """One part is larger than allowed."""


@dataclass
class Part:
    """One body part: its headers (lower-case names) and its bytes."""

    headers: dict[str, str] = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)

    @property
    def content_type(self) -> str:
        """The part's media type without parameters, lower case."""
        media, _ = parse_options_header(self.headers.get("content-type", ""))
        return media.decode("latin-1").lower()


def boundary_of(content_type: str) -> tuple[str, str, str]:
    """``(media type, type parameter, boundary)`` of a Content-Type header.

    >>> boundary_of('multipart/related; type="application/dicom"; boundary=b1')
    ('multipart/related', 'application/dicom', 'b1')
    """
    media, params = parse_options_header(content_type)
    get = lambda k: params.get(k, b"").decode("latin-1")  # noqa: E731
    return media.decode("latin-1").lower(), get(b"type").lower(), get(b"boundary")


class RelatedParts:
    """Feed body chunks in; complete parts come out."""

    def __init__(self, boundary: str, max_part_bytes: int) -> None:
        # RFC 2046 allows 70 characters; Orthanc's STOW-RS client sends 73. Be lenient, bounded.
        if not boundary or len(boundary) > 256:
            raise MultipartError("Content-Type: a boundary of 1 to 256 characters is required")
        self._max = max_part_bytes
        self._done: list[Part] = []
        self._part: Part | None = None
        self._field = bytearray()
        self._value = bytearray()
        self.ended = False
        self.parts_seen = 0
        callbacks = {
            "on_part_begin": self._begin,
            "on_part_data": self._data,
            "on_part_end": self._end_part,
            "on_header_field": lambda d, s, e: self._field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._value.extend(d[s:e]),
            "on_header_end": self._header,
            "on_end": self._end,
        }
        self._parser = MultipartParser(boundary, callbacks, max_header_count=16)  # type: ignore[arg-type]

    def _begin(self) -> None:
        self._part = Part()
        self.parts_seen += 1

    def _header(self) -> None:
        if self._part is not None:
            name = bytes(self._field).decode("latin-1").strip().lower()
            self._part.headers[name] = bytes(self._value).decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._part is None:
            return
        if len(self._part.data) + (end - start) > self._max:
            raise PartTooLarge(f"part {self.parts_seen}: larger than the limit of {self._max} bytes")
        self._part.data.extend(data[start:end])

    def _end_part(self) -> None:
        if self._part is not None:
            self._done.append(self._part)
        self._part = None

    def _end(self) -> None:
        self.ended = True

    def feed(self, chunk: bytes) -> list[Part]:
        """Parse a chunk; return the parts it completed.

        Raises:
            MultipartError: The bytes are not multipart (bad boundary line, header syntax).
            PartTooLarge: A part passed the size limit.
        """
        try:
            self._parser.write(chunk)
        except PartTooLarge:
            raise
        except MultipartParseError as exc:
            raise MultipartError(f"malformed multipart/related body: {exc}") from None
        done, self._done = self._done, []
        return done

    def close(self) -> None:
        """The body ended: it must have ended with the closing boundary.

        Raises:
            MultipartError: The body was truncated, or had no part.
        """
        if not self.ended:
            raise MultipartError(
                "truncated multipart/related body: the closing boundary never came"
                if self.parts_seen
                else "no multipart/related part found (is the boundary right?)"
            )


def related_chunks(boundary: str, parts: Iterator[tuple[str, bytes]]) -> Iterator[bytes]:
    """A ``multipart/related`` body of ``(content type, bytes)`` parts, chunk by chunk."""
    for content_type, data in parts:
        yield f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode()
        yield data
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()
