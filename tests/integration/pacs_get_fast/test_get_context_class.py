"""A real C-GET SCP (pynetdicom) misbehaving: a C-STORE sub-operation on a presentation context
negotiated for another SOP class, and one instance sent twice (one row for its one file).

pynetdicom (the library path the kit's C-GET replaced) answers it 0x0122 (SOP Class not
supported) without calling the handler: its data set is not what the context was negotiated
for (``Association._c_store_scp`` finds no context of that abstract syntax). The fast path
answers it the same way and writes nothing for it; the instances on their own contexts arrive.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pydicom
import pytest
from pydicom.uid import CTImageStorage, MRImageStorage
from pynetdicom import evt

from kit.dicom.dimse import PacsClient, RetrieveError
from kit.examples.dicom import random_ct_files
from tests.integration.pacs_get_fast.scp import serving_get


@pytest.fixture
def crossing_scp(tmp_path: Path) -> Iterator[SimpleNamespace]:
    """A C-GET SCP serving 6 CT instances that sends the 3rd on the MR context (a hostile or
    broken PACS), recording the status we answer for each."""
    files = random_ct_files(tmp_path / "src", 6, patient_id="CROSS", size=16, seed=6)
    datasets = [pydicom.dcmread(p) for p in files]
    state = SimpleNamespace(datasets=datasets, study=str(datasets[0].StudyInstanceUID), statuses=[])

    def on_get(event: evt.Event) -> Iterator[Any]:
        assoc = event.assoc
        real = assoc._get_valid_context

        def crossed(ab_syntax: Any, *args: Any, **kwargs: Any) -> Any:
            if crossing[0] and ab_syntax == CTImageStorage:
                return real(MRImageStorage, *args, **kwargs)
            return real(ab_syntax, *args, **kwargs)

        crossing = [False]
        assoc._get_valid_context = crossed
        yield len(datasets)
        for i, ds in enumerate(datasets):
            crossing[0] = i == 2
            yield 0xFF00, ds

    def on_recv(event: evt.Event) -> None:
        command = event.message.command_set
        if int(command.CommandField) == 0x8001:  # our C-STORE-RSP
            state.statuses.append(int(command.Status))

    with serving_get(on_get, on_recv=on_recv, classes=(CTImageStorage, MRImageStorage)) as state.port:
        yield state


def test_a_store_on_another_class_context_is_answered_0122(crossing_scp: SimpleNamespace,
                                                          tmp_path: Path) -> None:
    client = PacsClient("127.0.0.1", crossing_scp.port, called_aet="GETSCP", timeout=20)
    dest = tmp_path / "dest"
    with pytest.raises(RetrieveError) as caught:
        client.get(study_uid=crossing_scp.study, dest=dest, sop_classes=[CTImageStorage, MRImageStorage])
    assert crossing_scp.statuses == [0, 0, 0x0122, 0, 0, 0]
    assert caught.value.failed == 1 and caught.value.completed == 5
    crossed = str(crossing_scp.datasets[2].SOPInstanceUID)
    expected = sorted(f"{ds.SOPInstanceUID}.dcm" for ds in crossing_scp.datasets
                      if str(ds.SOPInstanceUID) != crossed)
    assert sorted(p.name for p in dest.iterdir()) == expected
    assert caught.value.received.height == 5


@pytest.fixture
def repeating_scp(tmp_path: Path) -> Iterator[SimpleNamespace]:
    """A C-GET SCP that sends 3 CT instances, then the first one again with other pixels."""
    files = random_ct_files(tmp_path / "src", 3, patient_id="TWICE", size=16, seed=7)
    datasets = [pydicom.dcmread(p) for p in files]
    again = pydicom.dcmread(files[0])
    again.PixelData = bytes(len(again.PixelData))
    again.ImageComments = "the second copy, a little longer"
    state = SimpleNamespace(datasets=datasets, again=again, study=str(datasets[0].StudyInstanceUID))

    def on_get(event: evt.Event) -> Iterator[Any]:
        yield 4
        for ds in [*datasets, again]:
            yield 0xFF00, ds

    with serving_get(on_get) as state.port:
        yield state


def test_an_instance_sent_twice_is_one_row_for_its_one_file(repeating_scp: SimpleNamespace,
                                                          tmp_path: Path) -> None:
    """The frame lists the files received, one row each, as on disk (a row per copy would list
    a path twice with the first copy's size: Medix would zip the file twice)."""
    client = PacsClient("127.0.0.1", repeating_scp.port, called_aet="GETSCP", timeout=20)
    dest = tmp_path / "dest"
    got = client.get(study_uid=repeating_scp.study, dest=dest, sop_classes=[CTImageStorage])
    assert sorted(p.name for p in dest.iterdir()) == sorted(f"{ds.SOPInstanceUID}.dcm"
                                                            for ds in repeating_scp.datasets)
    assert got.height == 3 and got["path"].n_unique() == 3
    for path, size in got.select("path", "size_bytes").iter_rows():
        assert Path(path).stat().st_size == size
    first = dest / f"{repeating_scp.again.SOPInstanceUID}.dcm"
    assert pydicom.dcmread(first).PixelData == repeating_scp.again.PixelData  # the later copy
