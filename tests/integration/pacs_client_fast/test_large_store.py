"""PacsClient.store of a large file: checked where its headers are, sent from the file in pieces.

Against dcmtk storescp (a real peer in its own process, so that tracemalloc here counts the
client alone): an 18 MiB instance, with LARGE_FILE lowered to 1 MiB, arrives byte for byte while
the client allocates a few MiB (it read the file whole for the check, kept it, and joined it into
one request: three copies). Mixed with small files, the rows keep their order. A large file cut
short after its check is a DicomFileError, the association aborted, and the PACS keeps nothing
of it (the embedded PACS, truncating the file when the instance before it arrives).
"""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from kit.dicom import _outgoing
from kit.dicom.dimse import PacsClient
from kit.dicom.scp import EmbeddedPACS
from kit.errors import DicomFileError
from kit.examples.dicom import random_ct_files
from tests.conftest import free_port, peer_env, spawned, wait_for_port
from tests.integration.pacs_scp.conftest import dcmtk

LARGE = 1 << 20


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """dcmtk storescp on a free 127.0.0.1 port writing into a folder; (port, folder)."""
    port, out = free_port(), tmp_path / "received"
    out.mkdir()
    with spawned([dcmtk("storescp"), "-aet", "STORESCP", "-od", str(out), str(port)], env=peer_env()) as proc:
        wait_for_port(port, proc=proc)
        yield port, out


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """One 18 MiB CT instance and three small ones of another study."""
    folder = tmp_path_factory.mktemp("src")
    (big,) = random_ct_files(folder / "big", 1, patient_id="BIGSEND", size=3072, seed=11)
    return big, random_ct_files(folder / "small", 3, patient_id="SMALLSEND", size=64, seed=12)


def _received(out: Path) -> dict[str, Any]:
    return {str(ds.SOPInstanceUID): ds.PixelData for ds in (dcmread(p) for p in out.iterdir())}


@pytest.fixture
def to_storescp(storescp: tuple[int, Path], files: tuple[Path, list[Path]],
                monkeypatch: pytest.MonkeyPatch) -> tuple[PacsClient, Path, Path, list[Path]]:
    """(a client of storescp, the folder it writes, the large file, the small ones), LARGE_FILE
    lowered to 1 MiB."""
    monkeypatch.setattr(_outgoing, "LARGE_FILE", LARGE)
    port, out = storescp
    return PacsClient("127.0.0.1", port, called_aet="STORESCP", timeout=30), out, *files


def test_a_large_file_is_sent_from_the_file_in_pieces(
        to_storescp: tuple[PacsClient, Path, Path, list[Path]]) -> None:
    client, out, big, small = to_storescp
    client.store([small[0]])  # the imports (polars) and the first association before the count
    tracemalloc.start()
    try:
        frame = client.store([big])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert frame["status"].to_list() == [0]
    size = big.stat().st_size
    assert peak < 8 * LARGE + 4 * (1 << 20), f"{peak:,} bytes allocated to send a {size:,}-byte file"
    source = dcmread(big)
    first = dcmread(small[0])
    assert _received(out) == {str(source.SOPInstanceUID): source.PixelData,
                              str(first.SOPInstanceUID): first.PixelData}


def test_large_and_small_files_in_one_store_keep_their_order(
        to_storescp: tuple[PacsClient, Path, Path, list[Path]]) -> None:
    client, out, big, small = to_storescp
    order = [small[0], big, small[1], big, small[2]]
    frame = client.store(order)
    assert frame["status"].to_list() == [0] * 5
    assert frame["sop_instance_uid"].to_list() == [str(dcmread(p).SOPInstanceUID) for p in order]
    assert _received(out) == {str(ds.SOPInstanceUID): ds.PixelData for ds in map(dcmread, order)}


def test_a_large_file_cut_short_after_its_check_is_an_error_and_nothing_of_it_is_kept(
        pacs: EmbeddedPACS, files: tuple[Path, list[Path]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    big_src, small = files
    big = tmp_path / "big.dcm"
    big.write_bytes(big_src.read_bytes())
    monkeypatch.setattr(_outgoing, "LARGE_FILE", LARGE)
    store = pacs.store.store_encoded

    def cut_then_store(*args: Any, **kwargs: Any) -> Any:  # the PACS receives the small one first
        os.truncate(big, big.stat().st_size // 2)
        return store(*args, **kwargs)

    monkeypatch.setattr(pacs.store, "store_encoded", cut_then_store)
    with pytest.raises(DicomFileError, match="changed since it was checked|cut short"):
        PacsClient("127.0.0.1", pacs.port, called_aet=pacs.aet, timeout=10).store([small[0], big])
    monkeypatch.setattr(pacs.store, "store_encoded", store)
    assert [dcmread(p).PatientID for p in (pacs.store.root / "files").rglob("*.dcm")] == ["SMALLSEND"]
    assert PacsClient("127.0.0.1", pacs.port, called_aet=pacs.aet, timeout=10).echo() is not None
