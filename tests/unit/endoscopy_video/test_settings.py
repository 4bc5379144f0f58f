"""[endoscopy] stream_url: the default source of `kit endoscopy frames`, following [stack] video_port."""

from __future__ import annotations

from pathlib import Path

import pytest

from kit.config import load_settings
from kit.errors import ConfigError


def _load(tmp_path: Path, toml: str, **env: str) -> object:
    path = tmp_path / "kit.toml"
    path.write_text(toml, encoding="utf-8")
    return load_settings(path, env=env)


def test_default_is_the_embedded_stream() -> None:
    settings = load_settings(env={"KIT_CONFIG": ""})
    assert settings.endoscopy.stream_url == "http://127.0.0.1:8090/live.ts"
    assert settings.endoscopy.timeout == 10.0


@pytest.mark.parametrize(("toml", "env", "url"), [
    ("[stack]\nvideo_port = 9000\n", {}, "http://127.0.0.1:9000/live.ts"),
    ('[stack]\nhost = "0.0.0.0"\nvideo_port = 9000\n', {}, "http://127.0.0.1:9000/live.ts"),
    ('[stack]\nhost = "::1"\nvideo_port = 9000\n', {}, "http://[::1]:9000/live.ts"),
    ("[stack]\nvideo_port = 0\n", {}, "http://127.0.0.1:8090/live.ts"),   # ephemeral says nothing
    ('[stack]\nvideo_port = 9000\n[endoscopy]\nstream_url = "rtsp://gw.example.org/room3"\n', {},
     "rtsp://gw.example.org/room3"),
    ("[stack]\nvideo_port = 9000\n", {"KIT_ENDOSCOPY_STREAM_URL": "/dev/video0"}, "/dev/video0"),
])
def test_stream_url_follows_the_stack_unless_set(tmp_path: Path, toml: str, env: dict[str, str],
                                                 url: str) -> None:
    assert _load(tmp_path, toml, **env).endoscopy.stream_url == url  # type: ignore[attr-defined]


@pytest.mark.parametrize(("toml", "key"), [
    ("[endoscopy]\ntimeout = -1\n", "endoscopy.timeout"),
    ("[endoscopy]\ntimeout = \"soon\"\n", "endoscopy.timeout"),
    ("[endoscopy]\nstream = \"x\"\n", "endoscopy.stream"),
])
def test_bad_endoscopy_settings_name_the_key(tmp_path: Path, toml: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, toml)
    assert info.value.key == key
