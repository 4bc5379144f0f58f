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


# -- issue #8 item 10/11/16: unreadable files, values out of range, [stack] as the client default --


def test_non_utf8_file_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "kit.toml"
    path.write_bytes(b'[pacs]\nhost = "caf\xe9.example.org"\n')
    with pytest.raises(ConfigError) as exc:
        load_settings(path, env={})
    assert exc.value.key == str(path) and "not UTF-8" in str(exc.value)
    folder = tmp_path / "a-folder"
    folder.mkdir()
    with pytest.raises(ConfigError, match="is not a file"):
        load_settings(folder, env={})


def test_non_utf8_secret_file_names_the_key(tmp_path: Path) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError) as exc:
        load_settings(write(tmp_path, f'[fhir]\nclient_secret_file = "{secret}"\n'), env={})
    assert exc.value.key == "fhir.client_secret_file"


@pytest.mark.parametrize(("text", "env", "key", "says"), [
    ("[pacs]\nport = 70000\n", {}, "pacs.port", "outside 1-65535"),
    ("[pacs]\nport = 0\n", {}, "pacs.port", "outside 1-65535"),
    ("[hl7]\nport = -1\n", {}, "hl7.port", "outside"),
    ("[stack]\npacs_port = 65536\n", {}, "stack.pacs_port", "outside 0-65535"),
    ('[pacs]\ncalled_aet = "ABCDEFGHIJKLMNOPQ"\n', {}, "pacs.called_aet", "longer than 16"),
    ('[pacs]\naet = ""\n', {}, "pacs.aet", "empty"),
    ('[stack]\nallowed_aets = ["OK", "BAD\\\\AE"]\n', {}, "stack.allowed_aets", "backslash"),
    ("[pacs]\ntimeout = -1\n", {}, "pacs.timeout", "positive"),
    ("[fhir]\ntimeout = 0\n", {}, "fhir.timeout", "positive"),
    ('[fhir]\nbase = "fhir.example.org/R4"\n', {}, "fhir.base", "http(s) URL"),
    ('[dicomweb]\nbase = "ftp://pacs/dicom-web"\n', {}, "dicomweb.base", "http(s) URL"),
    ("[hl7]\nmax_message_bytes = 0\n", {}, "hl7.max_message_bytes", "positive"),
    ("", {"KIT_PACS_PORT": "99999"}, "KIT_PACS_PORT", "outside 1-65535"),
    ("", {"KIT_FHIR_BASE": "localhost:8080"}, "KIT_FHIR_BASE", "http(s) URL"),
    ("", {"KIT_HL7_HOST": "a host"}, "KIT_HL7_HOST", "not a host"),
])
def test_values_out_of_range_name_the_key(tmp_path: Path, text: str, env: dict[str, str], key: str,
                                          says: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(write(tmp_path, text), env=env)
    assert exc.value.key == key
    assert says in str(exc.value)


def test_stack_ports_are_the_clients_defaults(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, '[stack]\npacs_port = 4242\nfhir_port = 9090\nmllp_port = 2599\n'
                                      'pacs_aet = "MYSTACK"\n'), env={})
    assert (s.pacs.host, s.pacs.port, s.pacs.called_aet) == ("127.0.0.1", 4242, "MYSTACK")
    assert s.fhir.base == "http://127.0.0.1:9090/fhir/R4"
    assert (s.hl7.host, s.hl7.port) == ("127.0.0.1", 2599)
    # from the environment too
    s = load_settings(write(tmp_path, ""), env={"KIT_STACK_PACS_PORT": "5555"})
    assert s.pacs.port == 5555


def test_client_settings_win_over_the_stack(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, '[stack]\npacs_port = 4242\nfhir_port = 9090\nmllp_port = 2599\n'
                                      '[pacs]\nport = 104\n[fhir]\nbase = "https://ehr.example.org/R4"\n'
                                      '[hl7]\nhost = "engine.example.org"\n'), env={})
    assert s.pacs.port == 104 and s.pacs.called_aet == "KIT"
    assert s.fhir.base == "https://ehr.example.org/R4"
    assert (s.hl7.host, s.hl7.port) == ("engine.example.org", 2575)   # a peer elsewhere: nothing from [stack]
    s = load_settings(write(tmp_path, '[stack]\npacs_port = 4242\n[pacs]\nhost = "pacs.example.org"\n'),
                      env={})
    assert (s.pacs.host, s.pacs.port, s.pacs.called_aet) == ("pacs.example.org", 11112, "KIT")
    s = load_settings(write(tmp_path, '[stack]\nhost = "0.0.0.0"\npacs_port = 0\nfhir_port = 0\n'), env={})
    assert (s.pacs.host, s.pacs.port) == ("127.0.0.1", 11112)        # ephemeral says nothing
    assert s.fhir.base == "http://127.0.0.1:8080/fhir/R4"
    s = load_settings(write(tmp_path, '[stack]\nhost = "::1"\n'), env={})
    assert s.fhir.base == "http://[::1]:8080/fhir/R4"


def test_fhir_trusted_origins_reach_the_client(tmp_path: Path) -> None:
    from kit.config import FhirSettings
    from kit.fhir.client import FhirClient

    path = tmp_path / "kit.toml"
    path.write_text('[fhir]\nbase = "https://fhir.example.org/R4"\n'
                    'trusted_origins = ["https://files.example.org"]\n')
    settings = load_settings(path)
    assert settings.fhir.trusted_origins == ("https://files.example.org",)
    with FhirClient.from_settings(settings) as client:
        assert client.trusts("https://files.example.org/export/1.ndjson")
        assert not client.trusts("https://elsewhere.example.org/export/1.ndjson")
    with FhirClient.from_settings(FhirSettings(base="https://fhir.example.org/R4")) as default:
        assert not default.trusts("https://files.example.org/export/1.ndjson")
