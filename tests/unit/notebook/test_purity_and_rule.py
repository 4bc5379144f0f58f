"""The new pure modules stay pure; the one settings rule of the notebooks and the CLI (kit.config)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kit.config import configured_settings, describe_source, load_settings
from kit.errors import ConfigError
from tests.unit.core.test_purity import FORBIDDEN, KIT, _closure

PURE = ["choose", "fhir/capability"]


@pytest.mark.parametrize("module", PURE)
def test_pure_module_has_no_network_imports(module: str) -> None:
    bad = {name for name in _closure(KIT / f"{module}.py")
           if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)}
    assert not bad, f"kit/{module}.py reaches {sorted(bad)}"


def test_rule_parameter_then_kit_config_then_local_file_then_embedded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert configured_settings(env={}) is None                      # nothing: the embedded stack
    assert describe_source(None) == describe_source(load_settings(env={})) == "embedded stack"
    (tmp_path / "kit.toml").write_text('[pacs]\nport = 4001\n')
    local = configured_settings(env={})
    assert local is not None and local.configured and local.pacs.port == 4001
    assert local.source == str(tmp_path / "kit.toml")                # absolute, said as such
    assert describe_source(local) == f"configured systems ({tmp_path / 'kit.toml'})"
    named = tmp_path / "named.toml"
    named.write_text('[pacs]\nport = 4002\n')
    by_env = configured_settings(env={"KIT_CONFIG": str(named)})
    assert by_env is not None and by_env.pacs.port == 4002          # KIT_CONFIG before ./kit.toml
    param = tmp_path / "param.toml"
    param.write_text('[pacs]\nport = 4003\n')
    by_param = configured_settings(param, env={"KIT_CONFIG": str(named)})
    assert by_param is not None and by_param.pacs.port == 4003      # the parameter first
    with pytest.raises(ConfigError, match="does not exist"):
        configured_settings(tmp_path / "missing.toml", env={})
