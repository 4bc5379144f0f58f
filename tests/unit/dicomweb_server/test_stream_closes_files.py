"""A WADO-RS answer abandoned by its client closes the file it was sending, whenever it stops.

The generator behind the multipart answer is closed by the server when the client goes away;
the stored file it had opened must be closed then, not when the garbage collector finds it
(CPython warns "unclosed file" then, and a busy server holds descriptors meanwhile).
"""

from __future__ import annotations

import gc
import warnings
from pathlib import Path

import pytest

from kit.dicom.store import StoredInstance
from kit.dicom.web_server import _stream

TS = "1.2.840.10008.1.2.1"


def instances(tmp_path: Path, n: int) -> list[StoredInstance]:
    out = []
    for i in range(n):
        path = tmp_path / f"{i}.dcm"
        path.write_bytes(bytes([i]) * 300_000)  # more than one chunk
        out.append(StoredInstance(f"1.2.3.{i}", "1.2.840.10008.5.1.4.1.1.2", TS, "1.2.3", "1.2.3.9", "P",
                                  path))
    return out


@pytest.mark.parametrize("parts_read", [1, 2, 3, 5])
def test_an_answer_stopped_anywhere_leaves_no_file_open(tmp_path: Path, parts_read: int) -> None:
    answer = _stream(instances(tmp_path, 3), "b0undary", None)
    gc.collect()  # what earlier tests in this process left unclosed warns now, not below
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for _ in range(parts_read):
            next(answer)
        # what the server does when the client disconnects; the generator object stays referenced
        answer.close()
        gc.collect()
        unclosed = [w for w in seen if issubclass(w.category, ResourceWarning)
                    and str(tmp_path) in str(w.message)]  # this test's files, not an earlier test's
        assert unclosed == []
    assert answer.gi_frame is None  # the generator is finished


def test_an_answer_read_to_the_end_is_the_files_in_order(tmp_path: Path) -> None:
    stored = instances(tmp_path, 2)
    body = b"".join(_stream(stored, "b0undary", None))
    assert body.count(b"--b0undary") == 3
    assert body.index(bytes([0]) * 300_000) < body.index(bytes([1]) * 300_000)
