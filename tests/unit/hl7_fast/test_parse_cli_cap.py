"""``kit hl7 parse --max-message-bytes``: the archive reader's cap on one message, from the command
line, on both paths (printed table and --out-dir). A longer message stops the parse with exit 1 and
one stderr line naming the file, the message's byte offset and the option; the default is the
library's (kit.hl7.archive.DEFAULT_MAX_MESSAGE_BYTES), and --help says what it does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import kit.hl7.archive as archive
from kit.cli import cli
from kit.hl7.frames import read_file

from .test_archive_cap import _file, _message

BIG = 5000


@pytest.fixture
def hostile(tmp_path: Path) -> tuple[Path, int]:
    """Good messages with one of BIG bytes among them; (path, its byte offset)."""
    return _file(tmp_path, _message(BIG))


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["hl7", "parse", *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("out_dir", [False, True])
def test_a_message_over_the_cap_fails_naming_the_file_and_offset(
        tmp_path: Path, hostile: tuple[Path, int], out_dir: bool) -> None:
    path, offset = hostile
    extra = ["--out-dir", str(tmp_path / "tables")] if out_dir else []
    code, _, err = _run(str(path), "--max-message-bytes", str(BIG - 1), *extra)
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kit: error: InvalidInputError:"), err
    assert str(path) in err and f"byte offset {offset:,}" in err and f"{BIG - 1:,} bytes" in err
    assert "--max-message-bytes" in err
    if out_dir:
        assert not list((tmp_path / "tables").glob("*.parquet"))  # nothing half written


@pytest.mark.parametrize("out_dir", [False, True])
def test_at_the_cap_or_by_default_the_file_is_parsed_whole(
        tmp_path: Path, hostile: tuple[Path, int], out_dir: bool) -> None:
    path, _ = hostile
    whole = read_file(path)
    for cap in ([], ["--max-message-bytes", str(BIG)]):
        target = tmp_path / f"tables{len(cap)}"
        extra = ["--out-dir", str(target)] if out_dir else ["--table", "messages", "--json"]
        code, out, err = _run(str(path), *cap, *extra)
        assert code == 0, err
        if out_dir:
            assert (target / "messages.parquet").is_file()
        else:
            assert [r["control_id"] for r in json.loads(out)] == whole["messages"]["control_id"].to_list()


@pytest.mark.parametrize("out_dir", [False, True])
def test_the_default_is_the_archive_readers_cap(tmp_path: Path, hostile: tuple[Path, int], out_dir: bool,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the option, kit.hl7.archive.DEFAULT_MAX_MESSAGE_BYTES applies (lowered here to BIG - 1)."""
    assert archive.DEFAULT_MAX_MESSAGE_BYTES == 64 * 2 ** 20
    monkeypatch.setattr(archive, "DEFAULT_MAX_MESSAGE_BYTES", BIG - 1)
    path, offset = hostile
    code, _, err = _run(str(path), *(["--out-dir", str(tmp_path / "t")] if out_dir else []))
    assert code == 1 and f"byte offset {offset:,}" in err and f"{BIG - 1:,} bytes" in err


def test_help_explains_the_cap() -> None:
    code, out, _ = _run("--help")
    assert code == 0
    text = " ".join(out.split())
    assert "--max-message-bytes" in text and "byte offset" in text and "64 MiB" in text


@pytest.mark.parametrize("value", ["0", "-5", "many"])
def test_a_bad_cap_is_misuse(hostile: tuple[Path, int], value: str) -> None:
    code, _, err = _run(str(hostile[0]), "--max-message-bytes", value)
    assert code == 2 and "--max-message-bytes" in err


def test_the_cap_holds_on_dask_too(tmp_path: Path, hostile: tuple[Path, int]) -> None:
    """Each Dask worker reads its file chunk by chunk under the same cap: exit 1 naming file and offset."""
    path, offset = hostile
    code, _, err = _run(str(path), "--max-message-bytes", "4000", "--dask", "local",
                        "--out-dir", str(tmp_path / "d"))
    assert code == 1 and str(path) in err and f"byte offset {offset:,}" in err and "4,000 bytes" in err


def test_the_dataset_job_takes_the_archive_readers_cap_by_default(
        tmp_path: Path, hostile: tuple[Path, int], monkeypatch: pytest.MonkeyPatch) -> None:
    from kit.errors import InvalidInputError
    from kit.scale.frames import hl7_dataset

    monkeypatch.setattr(archive, "DEFAULT_MAX_MESSAGE_BYTES", BIG - 1)
    path, offset = hostile
    with pytest.raises(InvalidInputError, match=f"byte offset {offset:,}"):
        hl7_dataset([path], tmp_path / "d")
    monkeypatch.setattr(archive, "DEFAULT_MAX_MESSAGE_BYTES", BIG + 1)
    whole = hl7_dataset([path], tmp_path / "e")
    assert whole.rows["messages"] >= 2
