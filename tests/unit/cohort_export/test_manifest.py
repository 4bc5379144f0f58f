"""kit.cohort.manifest: the dataset manifest, its JSON and its comparison with a folder listing."""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.cohort.manifest import (
    MANIFEST_NAME,
    FileEntry,
    Manifest,
    build_manifest,
    compare,
    from_json,
    public_address,
    to_json,
)
from kit.errors import InvalidInputError, KitError, VerificationError

WHEN = dt.datetime(2026, 11, 29, 14, 0, 5, tzinfo=dt.UTC)


def _entry(path: str, data: bytes) -> FileEntry:
    return FileEntry(path, len(data), hashlib.sha256(data).hexdigest())


FILES = [_entry("index.parquet", b"index"), _entry("dicom/2.25.1/2.25.2/2.25.3.dcm", b"dicom"),
         _entry("fhir/Patient.parquet", b"patients"), _entry("datalist.json", b"{}")]


def _manifest(files: list[FileEntry] = FILES, **changes: object) -> Manifest:
    args: dict[str, object] = dict(request=[{"row": 1, "accession_number": "A0123456789abcde"}],
                                   sources={"pacs": "dicom://KIT@127.0.0.1:11112", "fhir": "http://h/fhir/R4"},
                                   files=files, key_fingerprint="0123456789abcdef",
                                   counts={"studies": 1, "instances": 1}, kit_version="0.1.0", created=WHEN)
    args.update(changes)
    return build_manifest(**args)  # type: ignore[arg-type]


def test_json_is_deterministic_sorted_and_reads_back() -> None:
    a = _manifest()
    b = _manifest(files=list(reversed(FILES)), counts={"instances": 1, "studies": 1})
    assert to_json(a) == to_json(b)
    body = orjson.loads(to_json(a))
    assert list(body) == sorted(body)
    assert [f["path"] for f in body["files"]] == sorted(f.path for f in FILES)
    assert body["created"] == "2026-11-29T14:00:05Z" and body["request"] == [
        {"row": "1", "accession_number": "A0123456789abcde"}]
    back = from_json(to_json(a))
    assert back == a and to_json(back) == to_json(a)
    # only the time differs between two exports of the same data
    later = _manifest(created=WHEN + dt.timedelta(hours=1))
    assert later.files == a.files and to_json(later) != to_json(a)


def test_compare_names_missing_extra_and_changed() -> None:
    m = _manifest()
    assert compare(m, FILES).ok and compare(m, FILES).summary() == "4 files verified"
    listing = [f for f in FILES if f.path != "index.parquet"]
    listing.append(_entry("notes.txt", b"x"))
    listing.append(FileEntry(MANIFEST_NAME, 3, hashlib.sha256(b"abc").hexdigest()))  # never compared
    listing[0] = _entry(listing[0].path, b"dicoM")
    result = compare(m, listing)
    assert (result.missing, result.extra, result.changed) == (
        ("index.parquet",), ("notes.txt",), ("dicom/2.25.1/2.25.2/2.25.3.dcm",))
    assert result.summary() == ("dataset differs from its manifest: 1 missing (index.parquet); 1 extra "
                                "(notes.txt); 1 changed (dicom/2.25.1/2.25.2/2.25.3.dcm)")
    with pytest.raises(VerificationError, match="1 missing") as err:
        result.check()
    assert err.value.differences == ["missing: index.parquet", "extra: notes.txt",
                                     "changed: dicom/2.25.1/2.25.2/2.25.3.dcm"]
    # same size, other content; and a link where a file was
    same_size = [f if f.path != "datalist.json" else _entry("datalist.json", b"[]") for f in FILES]
    assert compare(m, same_size).changed == ("datalist.json",)
    link = [f if f.path != "datalist.json" else FileEntry("datalist.json", -1, "") for f in FILES]
    assert compare(m, link).changed == ("datalist.json",)


def test_addresses_lose_their_credentials() -> None:
    assert public_address("http://user:s3cret@ehr.example.org:8443/fhir/R4?token=abc#x") == \
        "http://ehr.example.org:8443/fhir/R4"
    assert public_address("dicom://KIT@127.0.0.1:11112") == "dicom://KIT@127.0.0.1:11112"
    assert public_address("dicom://KIT:pw@127.0.0.1:11112") == "dicom://127.0.0.1:11112"
    assert public_address("/data/mllp.db") == "/data/mllp.db"
    m = _manifest(sources={"fhir": "https://bob:hunter2@ehr/fhir?_token=t"})
    assert b"hunter2" not in to_json(m) and b"bob" not in to_json(m)


@pytest.mark.parametrize("path", ["/etc/passwd", "../x", "a/../b", "a//b", "a\\b", "", "./a", "a/", "a\x00"])
def test_paths_outside_the_folder_are_refused(path: str) -> None:
    with pytest.raises(InvalidInputError):
        FileEntry(path, 1, "0" * 64)


@pytest.mark.parametrize("changes", [
    {"key_fingerprint": "not-a-fingerprint"}, {"request": "some"}, {"created": dt.datetime(2026, 1, 1)},
    {"files": [*FILES, FILES[0]]}, {"files": [*FILES, _entry(MANIFEST_NAME, b"")]},
    {"counts": {"studies": "1"}}, {"kit_version": ""},
])
def test_invalid_manifests_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(InvalidInputError):
        _manifest(**changes)


def test_a_broken_manifest_file_is_a_verification_error() -> None:
    good = orjson.loads(to_json(_manifest()))
    outside = [{"path": "../x", "size": 1, "sha256": "0" * 64}]
    for bad in (b"", b"[]", b"{", orjson.dumps({**good, "files": outside}),
                orjson.dumps({**good, "format": "other/1"}), orjson.dumps({k: v for k, v in good.items()
                                                                           if k != "files"}),
                orjson.dumps({**good, "created": "2026-11-29T14:00:05+01:00"}),
                orjson.dumps({**good, "sources": {"fhir": "http://[ehr/fhir"}})):  # urlsplit: Invalid IPv6
        with pytest.raises(VerificationError, match="manifest.json"):
            from_json(bad)


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                     lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
                     max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["format", "created", "kit_version", "key_fingerprint", "request",
                                        "sources", "notes", "counts", "files"]), _json))
def test_fuzzed_manifests_fail_only_with_kit_errors(body: dict[str, object]) -> None:
    good = orjson.loads(to_json(_manifest()))
    try:
        m = from_json(json.dumps({**good, **body}))  # json: integers of any size
    except KitError:
        return
    assert from_json(to_json(m)) == m  # what reads writes back the same
