"""kit.dicom.web_multipart: bounded streaming multipart reading, media types, Accept (pure)."""

from __future__ import annotations

from io import BytesIO
from typing import IO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.dicom.web_multipart import (
    MultipartReader,
    Part,
    closing,
    parse_accept,
    parse_media_type,
    part_head,
)
from kit.errors import DicomWebRequestError, KitError

CTYPE = 'multipart/related; type="application/dicom"; boundary="b0undary"'


def _body(parts: list[bytes], boundary: str = "b0undary") -> bytes:
    return b"".join(part_head(boundary, "application/dicom", first=i == 0) + p for i, p in enumerate(parts)) \
        + closing(boundary, empty=not parts)


def _read(body: bytes, sizes: list[int], *, max_parts: int = 100) -> list[Part]:
    reader = MultipartReader(CTYPE, lambda _: BytesIO(), max_parts=max_parts)
    pos = 0
    for size in sizes:
        reader.feed(body[pos:pos + size])
        pos += size
    reader.feed(body[pos:])
    return reader.finish()


def _contents(parts: list[Part]) -> list[bytes]:
    out = []
    for part in parts:
        assert isinstance(part.body, BytesIO)
        out.append(part.body.getvalue())
    return out


PAYLOAD = st.binary(max_size=300).map(lambda b: b.replace(b"--b0undary", b"--b0undarz"))


@settings(max_examples=150, deadline=None)
@given(st.lists(PAYLOAD, min_size=1, max_size=5), st.lists(st.integers(1, 40), max_size=30))
def test_any_chunking_reads_the_same_parts(parts: list[bytes], sizes: list[int]) -> None:
    body = _body(parts)
    whole = _read(body, [])
    chunked = _read(body, sizes)
    assert _contents(whole) == _contents(chunked) == parts
    assert all(p.content_type is not None and p.content_type.type == "application/dicom" for p in chunked)
    assert [p.size for p in chunked] == [len(p) for p in parts]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(1, 64), max_size=10))
def test_garbage_raises_only_kit_errors(body: bytes, sizes: list[int]) -> None:
    try:
        _read(b"--b0undary\r\n" + body, sizes, max_parts=3)
    except KitError as exc:
        assert isinstance(exc, DicomWebRequestError) and exc.status_code in (400, 413)


def test_limits_and_refusals() -> None:
    with pytest.raises(DicomWebRequestError) as info:
        _read(_body([b"a", b"b", b"c"]), [], max_parts=2)
    assert info.value.status_code == 413
    with pytest.raises(DicomWebRequestError, match="closing boundary"):
        _read(_body([b"abc"])[:-8], [])
    for ctype in ("application/dicom", 'multipart/related; type="application/dicom"', "",
                  "multipart/related; boundary=" + "x" * 71):
        with pytest.raises(DicomWebRequestError) as info:
            MultipartReader(ctype, lambda _: BytesIO())
        assert info.value.status_code == 415


def test_sinks_get_each_parts_headers() -> None:
    seen: list[dict[str, str]] = []

    def sink(headers: dict[str, str]) -> IO[bytes]:  # type: ignore[type-arg]
        seen.append(dict(headers))
        return BytesIO()

    body = part_head("b0undary", "application/dicom; transfer-syntax=1.2.840.10008.1.2.1", first=True,
                     headers={"Content-Location": "x"}) + b"data" + closing("b0undary")
    reader = MultipartReader(CTYPE, sink)  # type: ignore[arg-type]
    reader.feed(body)
    assert reader.finish()[0].content_type.params["transfer-syntax"] == "1.2.840.10008.1.2.1"  # type: ignore[union-attr]
    assert seen == [{"content-type": "application/dicom; transfer-syntax=1.2.840.10008.1.2.1",
                     "content-location": "x"}]


def test_media_types_and_accept() -> None:
    media = parse_media_type('Multipart/Related; Type="application/dicom"; boundary=abc')
    assert media.type == "multipart/related"
    assert media.params == {"type": "application/dicom", "boundary": "abc"}
    ranges = parse_accept('application/json;q=0.5, multipart/related; type="application/dicom"; '
                          'transfer-syntax=*, text/html;q=0, */*;q=0.1')
    assert [r.type for r in ranges] == ["multipart/related", "application/json", "*/*"]
    assert ranges[0].params["transfer-syntax"] == "*"
    assert parse_accept('multipart/related; type="a,b"')[0].params["type"] == "a,b"
    assert [r.type for r in parse_accept(None)] == ["*/*"]
    assert parse_media_type("image/*").matches("image/jpeg")
    assert not parse_media_type("image/*").matches("a/b")
