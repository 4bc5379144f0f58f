"""Settings: file discovery, KIT_* overrides, typed errors naming the key, secrets kept secret."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import pytest

from kit.config import Secret, load_settings
from kit.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "kit.toml"
    path.write_text(text)
    return path


def test_defaults_point_at_the_embedded_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings(env={})
    assert s.source == "defaults"
    assert (s.pacs.host, s.pacs.port, s.pacs.called_aet) == ("127.0.0.1", 11112, "KIT")
    assert s.fhir.base.startswith("http://127.0.0.1:")


def test_file_then_env_override(tmp_path: Path) -> None:
    path = write(tmp_path, '[pacs]\nhost = "pacs.example.org"\nport = 104\ncalled_aet = "ORTHANC"\n'
                           '[stack]\nallowed_aets = ["A", "B"]\n')
    s = load_settings(path, env={"KIT_PACS_PORT": "4242", "KIT_FHIR_VENDOR": "epic"})
    assert s.pacs.host == "pacs.example.org"
    assert s.pacs.port == 4242
    assert s.pacs.called_aet == "ORTHANC"
    assert s.fhir.vendor == "epic"
    assert s.stack.allowed_aets == ("A", "B")
    assert s.source == str(path)


def test_kit_config_env_and_cwd_discovery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "[hl7]\nport = 3000\n")
    assert load_settings(env={"KIT_CONFIG": str(path)}).hl7.port == 3000
    monkeypatch.chdir(tmp_path)
    assert load_settings(env={}).hl7.port == 3000
    with pytest.raises(ConfigError) as exc:
        load_settings(env={"KIT_CONFIG": str(tmp_path / "missing.toml")})
    assert exc.value.key == "KIT_CONFIG"


@pytest.mark.parametrize(("text", "env", "key"), [
    ('[pacs]\nport = "abc"\n', {}, "pacs.port"),
    ("[pacs]\nprot = 1\n", {}, "pacs.prot"),
    ("[nope]\nx = 1\n", {}, "nope"),
    ("", {"KIT_PACS_TLS": "maybe"}, "KIT_PACS_TLS"),
    ('[fhir]\nauth = "magic"\n', {}, "fhir.auth"),
    ("[pacs\n", {}, None),
])
def test_wrong_settings_name_the_key(tmp_path: Path, text: str, env: dict[str, str], key: str | None) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_settings(path, env=env)
    assert exc.value.key == (key or str(path))
    assert (key or "TOML") in str(exc.value)


def test_secrets_come_from_env_or_files_never_from_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(write(tmp_path, '[fhir]\nclient_secret = "hunter2"\n'), env={})
    assert exc.value.key == "fhir.client_secret"
    assert "hunter2" not in str(exc.value)

    secret_file = tmp_path / "secret.txt"
    secret_file.write_text("from-file\n")
    s = load_settings(write(tmp_path, f'[fhir]\nclient_secret_file = "{secret_file}"\n'),
                      env={"KIT_FHIR_TOKEN": "from-env"})
    assert s.fhir.client_secret is not None and s.fhir.client_secret.reveal() == "from-file"
    assert s.fhir.token is not None and s.fhir.token.reveal() == "from-env"


def test_secret_is_never_shown(caplog: pytest.LogCaptureFixture) -> None:
    s = load_settings(env={"KIT_FHIR_TOKEN": "s3cr3t-value", "KIT_CONFIG": ""})
    logging.getLogger("kit.test").warning("settings: %s %r", s, s.fhir.token)
    assert "s3cr3t-value" not in repr(s)
    assert "s3cr3t-value" not in str(s.fhir)
    assert "s3cr3t-value" not in caplog.text
    with pytest.raises(TypeError):
        pickle.dumps(Secret("x"))


def test_missing_secret_file_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(write(tmp_path, '[fhir]\nprivate_key_file = "/nonexistent/key.pem"\n'), env={})
    assert exc.value.key == "fhir.private_key_file"
