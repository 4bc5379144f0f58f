"""kit._checks: the value rules shared by the settings and the command line."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit import _checks

CHECKS = [_checks.port, _checks.ae_title, _checks.positive_seconds, _checks.positive_int,
          _checks.host_name, _checks.http_url, _checks.dicom_uid, _checks.dicom_url, _checks.mllp_url]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_any_text_gives_a_value_or_a_value_error(text: str) -> None:
    for check in CHECKS:
        try:
            check(text)
        except ValueError as exc:
            assert str(exc) and "\n" not in str(exc)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=-10**6, max_value=10**6))
def test_port_accepts_exactly_the_tcp_range(number: int) -> None:
    for ephemeral, low in ((False, 1), (True, 0)):
        if low <= number <= 65535:
            assert _checks.port(str(number), ephemeral=ephemeral) == number
        else:
            with pytest.raises(ValueError):
                _checks.port(str(number), ephemeral=ephemeral)


AET = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="\\"),
              min_size=1, max_size=16)


@settings(max_examples=200, deadline=None)
@given(AET, st.sampled_from(["127.0.0.1", "pacs.example.org", "::1"]), st.integers(1, 65535))
def test_dicom_url_round_trips_what_kit_serve_prints(aet: str, host: str, number: int) -> None:
    shown = f"[{host}]" if ":" in host else host
    assert _checks.dicom_url(f"dicom://{aet}@{shown}:{number}") == (aet, host, number)
    assert _checks.mllp_url(f"mllp://{shown}:{number}") == (host, number)


@pytest.mark.parametrize("bad", ["", "   ", "A" * 17, "A\\B", "A\x00B", "caf\u00e9"])
def test_bad_ae_titles(bad: str) -> None:
    with pytest.raises(ValueError):
        _checks.ae_title(bad)


@pytest.mark.parametrize(("value", "ok"), [
    ("1.2.840.10008.1.1", True), ("0.0", True), ("1", True), ("1." + "2" * 62, True),
    ("1." + "2" * 63, False), ("1.02", False), ("1..2", False), ("1.2.", False), ("1.2.a", False),
    ("", False),
])
def test_uids(value: str, ok: bool) -> None:
    if ok:
        assert _checks.dicom_uid(value) == value
    else:
        with pytest.raises(ValueError):
            _checks.dicom_uid(value)


@pytest.mark.parametrize(("value", "ok"), [
    ("http://127.0.0.1:8080/fhir/R4/", True), ("https://ehr.example.org/R4", True),
    ("ftp://x/y", False), ("127.0.0.1:8080/fhir", False), ("http://", False), ("http://h:99999/", False),
])
def test_http_urls(value: str, ok: bool) -> None:
    if ok:
        assert _checks.http_url(value) == value.rstrip("/")
    else:
        with pytest.raises(ValueError):
            _checks.http_url(value)


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf", "-inf", "soon"])
def test_bad_seconds(value: str) -> None:
    with pytest.raises(ValueError):
        _checks.positive_seconds(value)


@pytest.mark.parametrize("value", ["dicom://KIT@host", "dicom://KIT@host:1/path", "http://KIT@h:1",
                                   "dicom://KIT@h:70000", "dicom://A\\B@h:1", "dicom://KIT@[::1",
                                   "dicom://KIT@h:", "dicom://KIT@h:1#x"])
def test_bad_dicom_urls(value: str) -> None:
    with pytest.raises(ValueError):
        _checks.dicom_url(value)
