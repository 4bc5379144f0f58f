"""MaskOverlay and ResultReview build, update and send without a browser."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import polars as pl
import pytest
from pydicom import Dataset

from kit.dicom.pixels import load_series
from kit.errors import InvalidInputError, NakError, PeerUnreachableError
from kit.examples.cohort import studies
from kit.examples.dicom import ct_datasets
from kit.results import AnalysisResult, analyse_ct
from kit.results.deliver import TARGETS, Delivery, DeliveryReport
from kit.widgets import MaskOverlay, ResultReview


@pytest.fixture(scope="module")
def sources() -> list[Dataset]:
    return list(ct_datasets(studies(modality="CT")[0]))


@pytest.fixture(scope="module")
def result(sources: list[Dataset]) -> AnalysisResult:
    found = analyse_ct(sources)
    assert found.regions, "the sample CT has a lesion"
    return found


class Recorder:
    """A send callback that records its calls and answers with a DeliveryReport (or raises)."""

    def __init__(self, raises: BaseException | None = None) -> None:
        self.calls: list[tuple[AnalysisResult, tuple[str, ...]]] = []
        self.raises = raises

    def __call__(self, result: AnalysisResult, *, targets: Any) -> DeliveryReport:
        self.calls.append((result, tuple(targets)))
        if self.raises is not None:
            raise self.raises
        return DeliveryReport(result.result_id, tuple(
            Delivery(t, "verified", identifier=f"id-{t}", seconds=0.01) for t in targets))


def test_review_shows_the_findings(result: AnalysisResult) -> None:
    review = ResultReview(result)
    measured = review.findings["measurements"].df
    assert measured.equals(result.measurements_frame().select(
        "name", "value", "unit", "finding", "finding_site", "region"))
    assert any("Diameter" in n for n in measured["name"]) and any("Volume" in n for n in measured["name"])
    assert review.findings["regions"].df["region"].to_list() == ["lesion-1"]
    assert review.table.layout.display == "none"  # no verification table before a send
    assert review.conclusion == result.conclusion and review.result is result
    assert review.targets == TARGETS
    assert review._button.disabled  # nothing to send with
    assert review.send() is None and review.error is not None and "callback" in review.error
    assert "not sent" in repr(review)
    with pytest.raises(InvalidInputError):
        ResultReview("not a result")  # type: ignore[arg-type]


def test_editing_the_conclusion_makes_a_new_result(result: AnalysisResult) -> None:
    review = ResultReview(result)
    review.conclusion = "  Nodule in the right upper lobe; follow-up CT in 3 months.  "
    edited = review.result
    assert edited is not result and result.conclusion != edited.conclusion
    assert edited.conclusion == "Nodule in the right upper lobe; follow-up CT in 3 months."
    assert edited == dataclasses.replace(result, conclusion=edited.conclusion)
    assert (edited.result_id, edited.created) == (result.result_id, result.created)
    review.conclusion = ""  # the result has findings: no conclusion is valid
    assert review.result.conclusion is None and review.error is None
    review.conclusion = "bad \x00 text"  # invalid: shown, the last valid result kept
    assert review.result.conclusion is None
    assert review.error is not None and "conclusion" in review.error
    assert "conclusion not taken" in review._status.value


def test_target_selection(result: AnalysisResult) -> None:
    review = ResultReview(result, targets=("oru", "sr"))
    assert review.targets == ("sr", "oru")  # in TARGETS order
    review._boxes["observation"].value = True  # as a click on the checkbox
    assert review.targets == ("sr", "observation", "oru")
    review.targets = ()
    assert review.targets == ()
    with pytest.raises(InvalidInputError):
        review.targets = ("sr", "pdf")
    assert review.targets == ()


def test_send_button_calls_back_with_the_reviewed_result_and_shows_the_table(result: AnalysisResult) -> None:
    send = Recorder()
    review = ResultReview(result, send=send)
    assert not review._button.disabled
    review.conclusion = "Edited before sending."
    review.targets = ("seg", "diagnostic_report")
    review._button.click()
    assert len(send.calls) == 1
    sent, targets = send.calls[0]
    assert sent is review.result and sent.conclusion == "Edited before sending."
    assert targets == ("seg", "diagnostic_report")
    assert isinstance(review.report, DeliveryReport) and review.frame is not None
    assert review.frame.equals(review.report.frame)
    table = review.table.df
    assert table.equals(review.report.frame) and review.table.layout.display is None
    assert set(table["identifier"]) == {"id-seg", "id-diagnostic_report"}
    assert set(table["status"]) == {"verified"}
    assert "2 verified" in review._status.value and review.error is None
    assert (review.progress.value, review.progress.total) == (2, 2) and not review.progress.visible
    assert review.progress.status == "sending to seg, diagnostic_report 2/2: done"
    assert "seg=verified" in repr(review)
    review.targets = ()
    review._button.click()  # nothing ticked: no call, said so
    assert len(send.calls) == 1 and review.error == "no target ticked"


def test_a_frame_returned_by_the_callback_is_shown(result: AnalysisResult) -> None:
    review = ResultReview(result, send=lambda r, *, targets: pl.DataFrame(
        {"target": list(targets), "status": ["sent"] * len(targets)}))
    review.targets = ("oru",)
    frame = review.send()
    assert isinstance(frame, pl.DataFrame) and review.table.df["target"].to_list() == ["oru"]
    assert "1 sent" in review._status.value


@pytest.mark.parametrize("error", [PeerUnreachableError("cannot connect to 127.0.0.1:1"),
                                   NakError("AE: unknown patient", ack_code="AE")])
def test_a_kit_error_from_the_callback_is_shown_not_raised(result: AnalysisResult, error: Exception) -> None:
    review = ResultReview(result, send=Recorder())
    review.send()
    shown = review.table.df
    review._send = Recorder(raises=error)
    review._button.click()  # does not raise
    assert review.error is not None and type(error).__name__ in review.error and str(error) in review.error
    assert type(error).__name__ in review._status.value and review._status.style.text_color == "#b00020"
    assert review.table.df.equals(shown)  # the last good table stays
    assert review.progress.visible and review.progress.status.endswith(f"failed: {type(error).__name__}")


def test_other_exceptions_are_not_swallowed(result: AnalysisResult) -> None:
    review = ResultReview(result, send=Recorder(raises=ZeroDivisionError("a bug")))
    with pytest.raises(ZeroDivisionError):
        review.send()


def test_overlay_draws_the_mask_on_its_slice(sources: list[Dataset], result: AnalysisResult) -> None:
    volume = load_series(sources)
    overlay = MaskOverlay(volume, result, preset="lung")
    region = result.regions[0]
    k = overlay.slice_index
    uid = volume.sop_instance_uids[k]
    assert uid in region.source_instances  # starts on the slice with the most mask
    frame = region.mask[region.source_instances.index(uid)]
    assert (overlay.masks[k] == 0).sum() == frame.sum() > 0
    assert int((overlay.masks >= 0).sum()) == int(region.mask.sum())
    shown = overlay.overlay()
    assert shown.shape == (*volume.array.shape[1:], 3)
    red, green = shown[..., 0].astype(int), shown[..., 1].astype(int)
    assert (red[frame] > green[frame]).all()  # tinted where the mask is
    assert (red[~frame] == green[~frame]).all()  # grey elsewhere
    image = overlay.image
    assert image.startswith(b"\x89PNG")
    overlay.opacity = 0.0
    plain = overlay.overlay()
    assert (plain[..., 0] == plain[..., 1]).all() and overlay.image != image
    off = next(i for i in range(len(volume)) if not (overlay.masks[i] >= 0).any())
    overlay.slice_index = off
    assert "mask 0 px" in overlay._info.value
    assert "lesion-1" in repr(overlay)
    with pytest.raises(InvalidInputError):
        overlay.opacity = 1.5


def test_overlay_rejects_masks_off_the_series(sources: list[Dataset], result: AnalysisResult) -> None:
    region = result.regions[0]
    elsewhere = dataclasses.replace(region, source_instances=tuple(
        f"1.2.3.{n}" for n in range(len(region.source_instances))))
    with pytest.raises(InvalidInputError, match="not in this series"):
        MaskOverlay(load_series(sources), elsewhere)
    small = dataclasses.replace(region, mask=np.zeros((len(region.source_instances), 4, 4), dtype=bool))
    with pytest.raises(InvalidInputError, match="mask"):
        MaskOverlay(load_series(sources), [small])


def test_the_conclusion_is_locked_once_sent(result: AnalysisResult) -> None:
    # After a send the targets hold the text under identifiers derived from result_id: an edit must
    # not silently become a different result with the same identifiers.
    send = Recorder()
    review = ResultReview(result, send=send)
    review.send()
    sent = review.result
    review.conclusion = "Changed after sending."
    assert review.result is sent and review.result.conclusion == sent.conclusion
    assert review._conclusion.disabled and "new AnalysisResult" in (review.error or "")
