"""The command line's contract, for EVERY subcommand, as real subprocesses.

Exit 0 on success, 1 on failure with exactly one line on stderr, 2 on misuse
with click's usage block; never a traceback. The subcommands are found by
walking the click group tree, so a new command is covered (and fails here
until it has a base invocation in :data:`BASE`). The bad inputs are derived
from each option's type (every PORT option gets the bad ports, every -o FILE
the bad output paths, ...) plus cases every command gets (broken kit.toml,
bad KIT_* value, unknown option).

What stderr may hold:

- exit 1: exactly one non-empty line, starting ``kit: error: `` (an
  ``kit: internal error`` line is a bug and fails the test);
- exit 2: click's usage block: a ``Usage: kit ...`` line, optionally the
  ``Try 'kit ... -h' for help.`` line, blank lines, and exactly one line
  starting ``Error: ``; nothing else. stdout is empty.

No ``Traceback`` on stdout or stderr in any case. The cases run in a thread
pool (each is an independent subprocess), the whole file in well under 90 s.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import click
import pytest

from kit import examples
from kit.cli import cli
from kit.cli.common import (
    AE_TITLE,
    DATE_RANGE,
    DICOM_URL,
    EPHEMERAL_PORT,
    HOST,
    HTTP_URL,
    MLLP_URL,
    PORT,
    SECONDS,
    UID,
    OutputDir,
    OutputFile,
)
from tests.conftest import free_port

KIT = [sys.executable, "-m", "kit.cli"]
STUDY = "1.2.826.0.1.3680043.8.498.22392439809703793720631504221462815849"
UNRESOLVABLE = "no-such-host.invalid"
#: a hang guard, not a speed target: each case is well under this
CASE_TIMEOUT = 60.0
#: a refused connection must fail fast; in a pool of subprocesses on a busy 2-core box this is
#: only a hang guard (test_cli_items checks the 2 s retry budget one command at a time)
DEAD_PORT_GUARD = 15.0

#: A valid invocation of each command: positionals and options. Each bad-input case replaces
#: one of them (or adds one). {tmp}, {dicom}, {hl7}, {json}, {ndjson} and {dead} are filled in.
BASE: dict[str, tuple[list[str], dict[str, str]]] = {
    "serve": ([], {"--data-dir": "{tmp}/stack", "--pacs-port": "0", "--fhir-port": "0",
                   "--mllp-port": "0", "--dicomweb-port": "0",
                   "--video-port": "0"}),
    "demo": ([], {"--work-dir": "{tmp}/demo"}),
    "status": ([], {}),
    "samples": ([], {}),
    "index": (["{dicom}"], {}),
    "deid": (["{dicom}", "{tmp}/deid"], {}),
    "pacs echo": ([], {"--port": "{dead}"}),
    "pacs find": ([], {"--port": "{dead}"}),
    "pacs get": ([], {"--study": STUDY, "--out-dir": "{tmp}/get", "--port": "{dead}"}),
    "pacs move": ([], {"--study": STUDY, "--out-dir": "{tmp}/move", "--port": "{dead}"}),
    "pacs store": (["{dicom}"], {"--port": "{dead}"}),
    "pacs worklist": ([], {"--port": "{dead}"}),
    "fhir metadata": ([], {"--base": "http://127.0.0.1:{dead}/fhir/R4"}),
    "fhir read": (["Patient", "p1"], {"--base": "http://127.0.0.1:{dead}/fhir/R4"}),
    "fhir search": (["Patient"], {"--base": "http://127.0.0.1:{dead}/fhir/R4"}),
    "fhir create": (["{json}"], {"--base": "http://127.0.0.1:{dead}/fhir/R4"}),
    "fhir export": ([], {"--out-dir": "{tmp}/export", "--base": "http://127.0.0.1:{dead}/fhir/R4"}),
    "hl7 listen": ([], {"--store": "{tmp}/feed.db", "--port": "0"}),
    "hl7 send": (["{hl7}"], {"--port": "{dead}"}),
    "hl7 parse": (["{hl7}"], {}),
    "fhir frames": (["{ndjson}"], {"--out-dir": "{tmp}/frames"}),
    "hl7 stats": ([], {"--store": "{store}"}),
    "endoscopy worklist": ([], {"--port": "{dead}"}),
    "endoscopy capture": (["{clip}"], {"--accession": "ACC100102", "--port": "{dead}"}),
    # --token-file: any text file of 16+ characters is a token
    "medix serve": ([], {"--workspace": "{tmp}/medix", "--port": "0", "--token-file": "{json}"}),
    "api serve": ([], {"--workspace": "{tmp}/api", "--port": "0"}),
    "api keys create": ([], {"--role": "read", "--workspace": "{tmp}/api"}),
    "endoscopy frames": (["http://127.0.0.1:{dead}/live.ts"], {"--count": "2", "--timeout": "5"}),
    "cohort pull": ([str(Path(__file__).parents[1] / "cohort_pull" / "contract-cohort.csv")],
                    {"--out-dir": "{tmp}/cohort", "--port": "{dead}"}),
    "cohort export": ([], {"--out-dir": "{tmp}/dataset", "--port": "{dead}"}),
    "cohort verify": (["{tmp}"], {}),
    "audit": ([], {"--log": "{store}"}),
    "monitor serve": ([], {"--workspace": "{tmp}/monitor", "--port": "0", "--interval": "5"}),
    "monitor status": ([], {"--timeout": "2"}),
}

#: an option given without a value
FLAG = "<flag>"


@dataclass
class Case:
    command: str
    label: str
    positionals: list[str]
    options: dict[str, str]
    expect: int
    before: list[str] = field(default_factory=list)   # global options, before the command
    env: dict[str, str] = field(default_factory=dict)

    def argv(self) -> list[str]:
        opts = [x for k, v in self.options.items() for x in ((k,) if v is FLAG else (k, v))]
        return [*self.before, *self.command.split(), *self.positionals, *opts]


def leaf_commands() -> dict[str, click.Command]:
    """Every runnable subcommand, by its space-separated path (walks the lazy group tree)."""
    out: dict[str, click.Command] = {}

    def walk(group: click.Group, prefix: tuple[str, ...]) -> None:
        ctx = click.Context(group)
        for name in group.list_commands(ctx):
            cmd = group.get_command(ctx, name)
            assert cmd is not None, name
            if isinstance(cmd, click.Group):
                walk(cmd, (*prefix, name))
            else:
                out[" ".join((*prefix, name))] = cmd

    walk(cli, ())
    return out


def _long(opt: click.Option) -> str:
    return max(opt.opts, key=len)


#: bad values per option type -> (label, value, expected exit)
BAD_VALUES: list[tuple[click.ParamType, list[tuple[str, str, int]]]] = [
    (PORT, [("port 70000", "70000", 2), ("port 0", "0", 2), ("port -1", "-1", 2),
            ("port abc", "abc", 2)]),
    (EPHEMERAL_PORT, [("port 70000", "70000", 2), ("port -1", "-1", 2)]),
    (AE_TITLE, [("AE 17 chars", "ABCDEFGHIJKLMNOPQ", 2), ("AE empty", "", 2),
                ("AE backslash", "A\\B", 2), ("AE control char", "A\x01B", 2)]),
    (DATE_RANGE, [("date 20260230", "20260230", 2), ("date month 13", "2026-13-01", 2),
                  ("date range reversed", "20260301-20260101", 2)]),
    (SECONDS, [("timeout -1", "-1", 2), ("timeout 0", "0", 2), ("timeout nan", "nan", 2)]),
    (HTTP_URL, [("base ftp", "ftp://example.org/fhir", 2), ("base not a URL", "not-a-url", 2),
                ("base no host", "http://", 2)]),
    (UID, [("UID letters", "1.2.abc", 2), ("UID leading zero", "1.02.3", 2),
           ("UID 65 chars", "1." + "2" * 63, 2)]),
    (HOST, [("host empty", "", 2), ("host with space", "a b", 2)]),
    (DICOM_URL, [("url http", "http://127.0.0.1:104", 2), ("url no port", "dicom://KIT@127.0.0.1", 2),
                 ("url AE 17", "dicom://ABCDEFGHIJKLMNOPQ@127.0.0.1:104", 2)]),
    (MLLP_URL, [("url no port", "mllp://127.0.0.1", 2), ("url dicom", "dicom://A@127.0.0.1:1", 2)]),
]


def cases_for(command: str, cmd: click.Command, dead: int, busy: int) -> list[Case]:
    """Every bad-input case of one command."""
    positionals, options = BASE[command]

    def case(label: str, expect: int, *, opt: str | None = None, value: str = "",
             pos: int | None = None, before: list[str] | None = None,
             env: dict[str, str] | None = None) -> Case:
        opts, args = dict(options), list(positionals)
        if opt == "--url":  # the URL names host and port: drop the base's --port
            opts.pop("--port", None)
        if opt is not None:
            opts[opt] = value
        if pos is not None:
            args[pos] = value
        return Case(command, label, args, opts, expect, before or [], env or {})

    out = [
        case("non-UTF-8 kit.toml", 1, before=["--config", "{garbage}"]),
        case("missing kit.toml", 1, before=["--config", "{tmp}/no-such-kit.toml"]),
        case("kit.toml with an impossible port", 1, before=["--config", "{badtoml}"]),
        case("bad KIT_ value", 1, env={"KIT_PACS_PORT": "70000"}),
        case("unknown option", 2, opt="--no-such-option", value=FLAG),
    ]
    pos_index = 0
    seen: set[click.ParamType] = set()  # a second option of a type gets its first bad value only
    for param in cmd.params:
        if isinstance(param, click.Argument):
            index = pos_index
            pos_index += 1
            if isinstance(param.type, click.Path) and param.type.exists:
                out.append(case(f"{param.name}: missing file", 2, pos=index, value="{tmp}/no/such/file"))
                out.append(case(f"{param.name}: garbage file", 1, pos=index, value="{garbage}"))
            if isinstance(param.type, OutputDir):
                out.append(case(f"{param.name}: missing parent", 2, pos=index,
                                value="{tmp}/no/such/dir/out"))
            continue
        if not isinstance(param, click.Option) or param.is_flag:
            continue
        name = _long(param)
        for ptype, bad in BAD_VALUES:
            if param.type is ptype:
                out += [case(f"{name} {label}", expect, opt=name, value=value)
                        for label, value, expect in (bad[:1] if ptype in seen else bad)]
                seen.add(ptype)
        if isinstance(param.type, OutputFile):
            out.append(case(f"{name} unknown extension", 2, opt=name, value="{tmp}/out.xlsx"))
            out.append(case(f"{name} missing parent", 2, opt=name, value="{tmp}/no/such/dir/out.csv"))
        elif isinstance(param.type, OutputDir):
            out.append(case(f"{name} missing parent", 2, opt=name, value="{tmp}/no/such/dir/out"))
        elif isinstance(param.type, click.Path) and param.type.exists:
            out.append(case(f"{name} missing file", 2, opt=name, value="{tmp}/no/such/file"))
            out.append(case(f"{name} garbage file", 1, opt=name, value="{garbage}"))
        elif isinstance(param.type, click.types.IntRange) and param.type.min is not None:
            out.append(case(f"{name} below {param.type.min}", 2, opt=name,
                            value=str(param.type.min - 1)))
        # the network: a name that does not resolve, a port nobody listens on, a port in use
        if param.type is HOST:
            out.append(case(f"{name} unresolvable", 1, opt=name, value=UNRESOLVABLE))
        elif param.type is HTTP_URL:
            out.append(case(f"{name} unresolvable", 1, opt=name, value=f"http://{UNRESOLVABLE}/r4"))
            out.append(case(f"{name} dead port", 1, opt=name, value=f"http://127.0.0.1:{dead}/r4"))
        elif param.type is DICOM_URL:
            out.append(case(f"{name} unresolvable", 1, opt=name, value=f"dicom://KIT@{UNRESOLVABLE}:104"))
            out.append(case(f"{name} dead port", 1, opt=name, value=f"dicom://KIT@127.0.0.1:{dead}"))
        elif param.type is MLLP_URL:
            out.append(case(f"{name} unresolvable", 1, opt=name, value=f"mllp://{UNRESOLVABLE}:2575"))
            out.append(case(f"{name} dead port", 1, opt=name, value=f"mllp://127.0.0.1:{dead}"))
        elif param.type is PORT:
            out.append(case(f"{name} dead port", 1, opt=name, value=str(dead)))
        elif param.type is EPHEMERAL_PORT and command != "pacs move":
            out.append(case(f"{name} in use", 1, opt=name, value=str(busy)))
    if command == "pacs move":  # its storage SCP cannot bind: a local failure, before any network
        out.append(case("--store-port in use", 1, opt="--store-port", value=str(busy)))
    if any(isinstance(p, click.Option) and p.type in (DICOM_URL, MLLP_URL) for p in cmd.params):
        out.append(Case(command, "--url with --port", list(positionals),
                        {**options, "--url": "dicom://KIT@127.0.0.1:104" if command.startswith("pacs")
                         else "mllp://127.0.0.1:2575", "--port": "104"}, 2))
    return out


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    tmp = tmp_path_factory.mktemp("contract")
    garbage = tmp / "garbage.bin"
    garbage.write_bytes(b"\xff\xfe\x00not text, not DICOM, not HL7\x80" * 8)
    bad_toml = tmp / "bad-port.toml"
    bad_toml.write_text("[pacs]\nport = 70000\n", encoding="utf-8")
    resource = tmp / "patient.json"
    resource.write_text('{"resourceType": "Patient", "name": [{"family": "Test"}]}', encoding="utf-8")
    ndjson = tmp / "Patient.ndjson"
    ndjson.write_text('{"resourceType": "Patient", "id": "p1"}\n', encoding="utf-8")
    from kit.hl7.store import MessageStore

    with MessageStore(tmp / "store.db"):
        pass
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        yield {"tmp": str(tmp), "garbage": str(garbage), "badtoml": str(bad_toml), "json": str(resource),
               "store": str(tmp / "store.db"), "dicom": str(examples.dicom_dir() / "MRN1002"),
               "hl7": str(examples.hl7_feed()), "dead": str(free_port()), "busy": str(busy.getsockname()[1]),
               "clip": str(examples.endoscopy_clip()), "ndjson": str(ndjson)}
    finally:
        busy.close()


def _fill(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), text)


def _run(case: Case, values: dict[str, str]) -> tuple[Case, subprocess.CompletedProcess[str] | str, float]:
    argv = [_fill(a, values) for a in case.argv()]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIT_")}
    env.update({"KIT_DEID_KEY": "contract-test-key", "NO_COLOR": "1", **case.env})
    start = time.monotonic()
    try:
        proc = subprocess.run([*KIT, *argv], cwd=values["tmp"], env=env, capture_output=True, text=True,
                              timeout=CASE_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return case, f"no exit within {CASE_TIMEOUT:g}s (a server that started instead of failing?)", \
            CASE_TIMEOUT
    return case, proc, time.monotonic() - start


USAGE_LINE = re.compile(r"^Usage: kit( |$)")
TRY_LINE = re.compile(r"^Try 'kit[^']*' for help\.$")


def contract_problem(expect: int, proc: subprocess.CompletedProcess[str]) -> str | None:
    """Why ``proc`` breaks the contract for an expected exit code, or None."""
    both = proc.stdout + proc.stderr
    if "Traceback" in both:
        return "a traceback"
    if proc.returncode != expect:
        return f"exit {proc.returncode}, expected {expect}"
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    if expect == 1:
        if len(lines) != 1:
            return f"{len(lines)} lines on stderr, expected 1"
        if not lines[0].startswith("kit: error: "):
            return "stderr line does not start with 'kit: error: '"
    elif expect == 2:
        if proc.stdout:
            return "misuse printed to stdout"
        if not lines or not USAGE_LINE.match(lines[0]):
            return "no 'Usage: kit ...' line first"
        rest = [line for line in lines[1:] if not TRY_LINE.match(line)]
        if len(rest) != 1 or not rest[0].startswith("Error: "):
            return f"expected exactly one 'Error: ' line after the usage block, got {rest}"
    return None


def test_every_command_has_a_base_invocation() -> None:
    commands = leaf_commands()
    assert len(commands) >= 20
    missing = sorted(set(commands) - set(BASE))
    assert not missing, f"add a base invocation to BASE for: {missing}"
    assert not set(BASE) - set(commands), "BASE names commands that no longer exist"


def test_contract_holds_for_every_command_and_bad_input(workspace: dict[str, str]) -> None:
    commands = leaf_commands()
    dead, busy = int(workspace["dead"]), int(workspace["busy"])
    cases = [c for name, cmd in sorted(commands.items()) if name in BASE
             for c in cases_for(name, cmd, dead, busy)]
    labels = {c.label for c in cases}
    # the table covers what issue #8 lists, for some command at least
    for wanted in ("port 70000", "AE 17 chars", "date 20260230", "timeout -1", "base ftp",
                   "unresolvable", "dead port", "missing file", "non-UTF-8 kit.toml",
                   "unknown extension", "missing parent", "UID letters", "in use"):
        assert any(wanted in label for label in labels), wanted
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda c: _run(c, workspace), cases))
    took = time.monotonic() - started
    failures = []
    slow = []
    for case, proc, seconds in results:
        argv = " ".join(_fill(a, workspace) for a in case.argv())
        if isinstance(proc, str):
            failures.append(f"kit {argv}  [{case.label}]: {proc}")
            continue
        problem = contract_problem(case.expect, proc)
        if problem:
            failures.append(f"kit {argv}  [{case.label}]: {problem}\n    stderr: {proc.stderr[-600:]!r}")
        if "dead port" in case.label and seconds > DEAD_PORT_GUARD:
            slow.append(f"kit {argv}: {seconds:.1f}s")
    if os.environ.get("CONTRACT_TIMES"):
        print(f"\n{len(cases)} cases in {took:.1f}s; slowest:")
        for case, _, seconds in sorted(results, key=lambda r: -r[2])[:25]:
            print(f"{seconds:6.2f}s  {case.command}  {case.label}")
    assert not failures, f"{len(failures)} of {len(cases)} cases break the contract:\n" + "\n".join(failures)
    assert not (Path(workspace["tmp"]) / "no").exists(), "a missing parent folder was created"
    assert not slow, "refused connections that took over 5 s: " + "; ".join(slow)
    assert took < 300, f"{len(cases)} cases took {took:.0f}s"


@pytest.mark.parametrize(("expect", "stderr", "ok"), [
    (1, "kit: error: PeerUnreachableError: x\n", True),
    (1, "kit: error: a\nkit: error: b\n", False),
    (1, "kit: internal error: KeyError: 'x'\n", False),
    (2, "Usage: kit pacs echo [OPTIONS]\nTry 'kit pacs echo -h' for help.\n\nError: bad\n", True),
    (2, "Usage: kit pacs echo [OPTIONS]\n\nError: bad\nmore\n", False),
    (2, "Error: bad\n", False),
])
def test_the_checker_itself_can_fail(expect: int, stderr: str, ok: bool) -> None:
    proc = subprocess.CompletedProcess(["kit"], expect, "", stderr)
    assert (contract_problem(expect, proc) is None) is ok
