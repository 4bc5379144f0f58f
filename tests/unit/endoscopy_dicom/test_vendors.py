"""Vendor profiles: pure data, a source for every value, overridable from kit.toml and KIT_*."""

from __future__ import annotations

from pathlib import Path

import pydicom.uid as puid
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.config import load_settings
from kit.endoscopy import vendors
from kit.endoscopy.vendors import PROFILES, Source, apply_overrides, profile
from kit.errors import ConfigError, InvalidInputError, KitError

VENDORS = ("olympus", "pentax", "fujifilm", "karl_storz", "generic")


def test_every_vendor_the_issue_names_has_a_profile() -> None:
    assert set(VENDORS) <= set(PROFILES)
    for name in VENDORS:
        assert profile(name).name == name
    assert profile("Karl Storz") is PROFILES["karl_storz"]
    with pytest.raises(InvalidInputError, match="known: fujifilm, generic"):
        profile("sony")


@pytest.mark.parametrize("name", VENDORS)
def test_every_value_has_a_source_and_standard_values_are_the_standards(name: str) -> None:
    p = profile(name)
    values = p.values()
    assert set(values) == set(p.sources), "one Source per value"
    for field, source in p.sources.items():
        assert source.kind in ("standard", "documented", "assumption")
        if source.kind == "documented":
            assert source.note, f"{name}.{field}: a documented value names its document"
    # what the DICOM standard fixes is marked standard, and equals pydicom's UIDs
    assert p.sources["modality"].kind == "standard" and p.modality == "ES"
    assert p.still_sop_class == puid.VLEndoscopicImageStorage
    assert p.video_sop_class == puid.VideoEndoscopicImageStorage
    assert p.sources["still_sop_class"].kind == p.sources["video_sop_class"].kind == "standard"
    assert vendors.MPEG4_HP41 == puid.MPEG4HP41 and vendors.JPEG_BASELINE == puid.JPEGBaseline8Bit
    assert vendors.MPEG4_HP42_2D == puid.MPEG4HP422D
    # a vendor's AE title is never presented as known: it is set at installation
    assert p.sources["station_aet"].kind == "assumption"
    assert "station_aet" in p.assumptions()


def test_values_by_kind_partition_the_profile() -> None:
    p = profile("karl_storz")
    kinds = ("standard", "documented", "assumption")
    parts = [set(p.values(k)) for k in kinds]  # type: ignore[arg-type]
    assert set().union(*parts) == set(p.values())
    assert sum(len(x) for x in parts) == len(p.values())
    assert "character_set" in p.values("documented")


def test_overrides_replace_values_and_say_site() -> None:
    base = profile("olympus")
    p = apply_overrides(base, {"station_aet": "ENDO3", "frame_sizes": "1280x720, 640x480",
                               "still_transfer_syntax": puid.ExplicitVRLittleEndian, "frame_rate": "25"})
    assert (p.station_aet, p.frame_sizes, p.frame_rate) == ("ENDO3", ((1280, 720), (640, 480)), 25.0)
    assert p.still_transfer_syntax == puid.ExplicitVRLittleEndian
    assert p.sources["station_aet"] == Source("site", "kit.toml [endoscopy] overrides")
    assert p.sources["video_sop_class"] == base.sources["video_sop_class"]
    assert base.station_aet == "OLYMPUS_ENDO", "the shipped profile is not changed"


@pytest.mark.parametrize(("overrides", "match"), [
    ({"colour": "red"}, "colour: not a profile field"),
    ({"modality": "XC"}, "modality: not a profile field"),
    ({"station_aet": "A" * 17}, "station_aet: not an AE title"),
    ({"still_transfer_syntax": "1.2.840.10008.1.2.4.90"}, "kit writes stills in"),
    ({"video_transfer_syntax": "1.2.840.10008.1.2.4.100"}, "kit writes clips in"),
    ({"frame_sizes": "big"}, "WIDTHxHEIGHT"),
    ({"frame_rate": "0"}, "1-240"),
    ({"stream_url_pattern": "rtsp://camera/1"}, "must contain {host}"),
])
def test_bad_overrides_are_named(overrides: dict[str, str], match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        apply_overrides(profile("generic"), overrides)


def test_stream_url() -> None:
    assert profile("generic").stream_url("10.0.0.5", port=8554) == "rtsp://10.0.0.5:8554/stream1"
    assert profile("olympus").stream_url("10.0.0.5", channel=2) == "rtsp://10.0.0.5:554/ch2"
    with pytest.raises(InvalidInputError, match="needs a port"):
        profile("generic").stream_url("10.0.0.5")


def test_kit_toml_endoscopy_section(tmp_path: Path) -> None:
    path = tmp_path / "kit.toml"
    path.write_text('[endoscopy]\nvendor = "pentax"\n'
                    'overrides = { station_aet = "ENDO3", frame_sizes = "1280x720" }\n')
    s = load_settings(path, env={"KIT_ENDOSCOPY_OVERRIDES": "station_aet=ENDO4,frame_rate=25"})
    assert s.endoscopy.vendor == "pentax"
    p = s.endoscopy.profile()
    assert (p.name, p.station_aet, p.frame_rate) == ("pentax", "ENDO4", 25.0)  # env wins over the file
    assert load_settings(env={}).endoscopy.profile().name == "generic"


@pytest.mark.parametrize(("text", "env", "key"), [
    ('[endoscopy]\nvendor = "sony"\n', {}, "endoscopy.vendor"),
    ('[endoscopy]\noverrides = { colour = "red" }\n', {}, "endoscopy.overrides"),
    ('[endoscopy]\nfps = 30\n', {}, "endoscopy.fps"),
    ("", {"KIT_ENDOSCOPY_VENDOR": "sony"}, "KIT_ENDOSCOPY_VENDOR"),
    ("", {"KIT_ENDOSCOPY_OVERRIDES": "station_aet=" + "A" * 20}, "KIT_ENDOSCOPY_OVERRIDES"),
])
def test_a_bad_endoscopy_setting_is_a_config_error_naming_the_key(tmp_path: Path, text: str,
                                                                  env: dict[str, str], key: str) -> None:
    path = tmp_path / "kit.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, env=env)
    assert info.value.key == key


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from([*vendors.ACCEPTED_OVERRIDES, "nope"]),
                       st.one_of(st.text(max_size=30), st.integers(-5, 5000), st.floats(allow_nan=True),
                                 st.lists(st.text(max_size=10), max_size=3)),
                       max_size=4))
def test_overrides_fuzz_only_kit_errors(overrides: dict[str, object]) -> None:
    """Any override either gives a valid profile (that re-validates) or an InvalidInputError."""
    try:
        p = apply_overrides(profile("generic"), overrides)
    except KitError as exc:
        assert isinstance(exc, InvalidInputError)
        return
    again = vendors.VendorProfile(**{f.name: getattr(p, f.name) for f in p.__dataclass_fields__.values()})
    assert again == p
    assert all(p.sources[k].kind == "site" for k in overrides)
