"""What the latency-critical paths import stays small (issue 9, target 6).

``kit --help`` lists the commands without importing a single command module or
the settings; ``import kit`` does not read the settings module; the DIMSE
client's import chain (``kit pacs echo``) loads no polars. Each check runs in a
fresh interpreter and looks at ``sys.modules`` afterwards: structural, not timed.
The same paths against a real PACS are checked in tests/integration/startup.
"""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest

#: the kit modules `kit --help` may load: the package, the error tree, the CLI entry point
HELP_KIT_MODULES = ["kit", "kit._redact", "kit.cli", "kit.errors"]


def loaded_after(code: str, *modules: str) -> dict[str, bool]:
    """Run ``code`` in a fresh interpreter; which of ``modules`` are in ``sys.modules`` afterwards."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps({{m: m in sys.modules for m in {modules!r}}}))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, bool] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


HELP = """
import contextlib, io
from kit.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main(["--help"])
    except SystemExit as exc:
        assert exc.code in (0, None), exc.code
"""


def test_kit_help_imports_no_command_module_and_no_settings() -> None:
    from kit.cli import COMMANDS

    modules = sorted({target.split(":")[0] for target in COMMANDS.values()}
                     | {"kit.cli.common", "kit.config", "polars", "pydicom", "pynetdicom"})
    loaded = loaded_after(HELP, *modules)
    assert [m for m, yes in loaded.items() if yes] == []


def test_kit_help_loads_only_the_entry_point_of_kit() -> None:
    done = subprocess.run([sys.executable, "-c", HELP + "\nimport sys\n"
                           "print(sorted(m for m in sys.modules if m == 'kit' or m.startswith('kit.')))"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert eval(done.stdout.strip().splitlines()[-1]) == HELP_KIT_MODULES  # noqa: S307 - our own repr


@pytest.mark.parametrize("width", [40, 60, 80, 120, 200])
def test_help_lists_the_commands_exactly_as_click_would(width: int) -> None:
    """SUMMARIES (what `kit --help` shows without importing) say what the commands' own help says."""
    from kit.cli import SUMMARIES, cli

    def listing(method: object) -> str:
        ctx = click.Context(cli, terminal_width=width, max_content_width=width)
        formatter = ctx.make_formatter()
        method(cli, ctx, formatter)  # type: ignore[operator]
        return formatter.getvalue()

    lazy, stock = listing(type(cli).format_commands), listing(click.Group.format_commands)
    assert stock.count("\n") > 10  # every command was listed
    assert lazy == stock, "update SUMMARIES in kit/cli/__init__.py to the commands' first help paragraph"
    assert sorted(SUMMARIES) == sorted(cli.list_commands(click.Context(cli)))


def test_a_summary_is_the_first_paragraph_of_the_commands_help() -> None:
    from kit.cli import COMMANDS, SUMMARIES, cli

    for name in COMMANDS:
        cmd = cli.get_command(click.Context(cli), name)
        assert cmd is not None and cmd.help is not None
        first = " ".join(cmd.help.split("\n\n")[0].split())
        assert SUMMARIES[name] == first, name


def test_whole_help_text_is_unchanged_by_the_lazy_listing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The full `kit --help` equals the text of a plain click group holding every real command."""
    from kit.cli import COMMANDS, cli

    # click caches a command's help option from the first context that asks for it: in a whole
    # test run another test may have asked first, so both sides start uncached, with kit's settings
    monkeypatch.setattr(cli, "_help_option", None)
    ctx = click.Context(cli, info_name="kit", terminal_width=80, **cli.context_settings)
    lazy = cli.get_help(ctx)
    eager = click.Group(name=cli.name, commands={n: cli.get_command(ctx, n) for n in COMMANDS},  # type: ignore[misc]
                        params=[p for p in cli.params if p is not cli._help_option], help=cli.help,
                        context_settings=cli.context_settings)
    stock = eager.get_help(click.Context(eager, info_name="kit", terminal_width=80, **eager.context_settings))
    assert lazy == stock and "-h, --help" in lazy


def test_import_kit_does_not_load_the_settings_yet_exports_them() -> None:
    loaded = loaded_after("import kit", "kit.config", "tomllib", "kit._config_services")
    assert loaded == {"kit.config": False, "tomllib": False, "kit._config_services": False}
    loaded = loaded_after(
        "import kit\nfrom kit import Settings, load_settings, KitError\n"
        "import kit.config\nassert kit.Settings is kit.config.Settings is Settings\n"
        "assert kit.load_settings is load_settings\nassert isinstance(load_settings(None), Settings)",
        "kit.config")
    assert loaded == {"kit.config": True}
    # the submodule is reachable as an attribute, as it was when kit imported it eagerly
    loaded = loaded_after("import kit\nassert kit.config.Settings.__name__ == 'Settings'", "kit.config")
    assert loaded == {"kit.config": True}


def test_unknown_attribute_of_kit_is_an_attribute_error() -> None:
    import kit

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        kit.nope  # type: ignore[attr-defined]  # noqa: B018
    assert not hasattr(kit, "nope")


#: modules on the DIMSE client's path, imported and used without a frame
ECHO_PATH = """
import kit.cli, kit.cli.pacs, kit.cli.common
import kit.dicom.dimse, kit.dicom.store, kit.dicom.query, kit.dicom.scp, kit.examples
from kit.config import load_settings
from kit.dicom.dimse import PacsClient
client = PacsClient.from_settings(load_settings(None).pacs)
from kit.dicom.query import ATTRIBUTES, QueryLevel, find_identifier
find_identifier(QueryLevel.STUDY, patient_id="MRN1001")
"""


def test_the_dimse_client_path_loads_no_polars() -> None:
    assert loaded_after(ECHO_PATH, "polars", "kit.dicom._frames") == {
        "polars": False, "kit.dicom._frames": False}


def test_the_public_names_still_resolve_and_bring_polars_with_them() -> None:
    import polars as pl

    from kit.dicom import dimse
    from kit.dicom.dimse import RECEIVED_SCHEMA, STORED_SCHEMA
    from kit.dicom.query import ATTRIBUTES

    assert RECEIVED_SCHEMA is dimse.RECEIVED_SCHEMA
    assert RECEIVED_SCHEMA == {"sop_instance_uid": pl.String(), "sop_class_uid": pl.String(),
                               "transfer_syntax_uid": pl.String(), "study_instance_uid": pl.String(),
                               "path": pl.String(), "size_bytes": pl.Int64()}
    assert STORED_SCHEMA == {"sop_instance_uid": pl.String(), "sop_class_uid": pl.String(),
                             "transfer_syntax_uid": pl.String(), "path": pl.String(), "status": pl.Int32()}
    assert ATTRIBUTES["study_date"].dtype == pl.Date()
    assert ATTRIBUTES["modalities_in_study"].dtype == pl.List(pl.String)
    assert ATTRIBUTES["number_of_study_related_instances"].dtype == pl.Int32()
    assert ATTRIBUTES["patient_name"].dtype == pl.String()
    with pytest.raises(AttributeError, match="no attribute 'NOPE'"):
        dimse.NOPE  # noqa: B018
    assert loaded_after("from kit.dicom.dimse import RECEIVED_SCHEMA", "polars") == {"polars": True}


def test_frames_built_on_the_lazy_path_are_typed_as_before() -> None:
    """A frame-building call in a fresh process (polars loaded on demand) gives the typed frame."""
    code = """
from kit.dicom.query import empty_frame
from kit.dicom.dimse import RetrieveError
import kit.examples
df = empty_frame("study")
assert str(df.schema["study_date"]) == "Date", df.schema
err = RetrieveError("x", status=0xA700)
assert err.received.columns[0] == "sop_instance_uid" and err.received.height == 0
"""
    assert loaded_after(code, "polars") == {"polars": True}


#: what `kit pacs echo` runs on its clean path: the command module, the settings, the fast echo
ECHO_FAST_PATH = """
import kit.cli, kit.cli.pacs, kit.cli.common, kit.dicom._echo_fast, kit.dicom._echo_pdu
from kit.config import load_settings
from kit.dicom._echo_fast import _covered
from kit.dicom._echo_pdu import associate_rq, echo_rq
settings = load_settings(None).pacs
assert _covered(settings)
associate_rq(settings.called_aet, settings.aet, 4 * 1024 * 1024), echo_rq()
"""


def test_the_echo_fast_path_loads_no_dicom_library() -> None:
    assert loaded_after(ECHO_FAST_PATH, "pynetdicom", "pydicom", "numpy", "polars", "kit.dicom.dimse") == {
        "pynetdicom": False, "pydicom": False, "numpy": False, "polars": False, "kit.dicom.dimse": False}
