"""Issue #8 items 10-17: the command line keeps its contract. One test (or more) per item.

Everything runs ``kit`` as a subprocess; the network cases talk to a real
``kit serve`` started by this module on ephemeral ports, set under ``[stack]``
in a kit.toml in the working folder (which also checks that those ports
become the clients' defaults, item 16).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest

from kit import examples
from kit.examples import cohort
from tests.conftest import free_port, stop_pid

KIT = [sys.executable, "-m", "kit.cli"]
ADDRESS = re.compile(r"^(pacs|fhir|mllp|dicomweb|video)\s+(\S+)$")
CT = cohort.studies(modality="CT")[0]          # MRN1001's CT, 16 instances in the embedded PACS
MRN1001_ID = "cb95ebb3-449d-530e-b015-646eeef135ce"   # its Patient id in the sample bundle


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIT_")}
    env.update({"PYTHONUNBUFFERED": "1", **extra})
    return env


def kit(*args: str, cwd: Path, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KIT, *args], cwd=cwd, env=env or clean_env(), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a failure (exit 1), checked for the contract."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kit: error: "), proc.stderr
    return lines[0]


def usage_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The ``Error:`` line of a misuse (exit 2 with the usage line)."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and proc.stdout == "", proc.stderr
    assert proc.stderr.startswith("Usage: kit "), proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


@dataclass
class Served:
    """A running `kit serve` and the folder whose kit.toml points the clients at it."""

    cwd: Path
    home: Path
    addresses: dict[str, str]
    store_port: int

    def env(self, **extra: str) -> dict[str, str]:
        return clean_env(HOME=str(self.home), **extra)

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return kit(*args, cwd=self.cwd, env=self.env(), timeout=timeout)


def start_serve(cwd: Path, env: dict[str, str], *args: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    proc = subprocess.Popen([*KIT, "serve", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    addresses: dict[str, str] = {}
    assert proc.stdout is not None
    from kit.stack import SERVICES

    wanted = args.count("--only") or len(SERVICES)  # kit serve prints one line per service it runs
    deadline = time.monotonic() + 120
    while len(addresses) < wanted and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        match = ADDRESS.match(line.strip())
        if match:
            addresses[match.group(1)] = match.group(2)
    if len(addresses) < wanted:
        stop_pid(proc)  # type: ignore[arg-type]
        pytest.fail(f"kit serve printed {addresses}: {proc.stderr.read() if proc.stderr else ''}")
    return proc, addresses


def stack_toml(pacs: int, fhir: int, mllp: int, store: int) -> str:
    return (f"[stack]\npacs_port = {pacs}\nfhir_port = {fhir}\nmllp_port = {mllp}\n"
            f"dicomweb_port = {free_port()}\nvideo_port = {free_port()}\n"
            f'move_destinations = {{ KITSCU = "127.0.0.1:{store}" }}\n'
            f"[pacs]\nstore_port = {store}\n")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`kit serve` on free ports named in ./kit.toml [stack]; HOME is a temporary folder, so the
    stack keeps its data in HOME/.cache/kit/stack."""
    cwd = tmp_path_factory.mktemp("served")
    home = cwd / "home"
    home.mkdir()
    store = free_port()
    (cwd / "kit.toml").write_text(stack_toml(free_port(), free_port(), free_port(), store), encoding="utf-8")
    (cwd / "data").symlink_to(examples.samples_dir().parent)   # the help examples name data/samples/...
    env = clean_env(HOME=str(home))
    env.pop("XDG_CACHE_HOME", None)
    proc, addresses = start_serve(cwd, env)
    try:
        yield Served(cwd, home, addresses, store)
    finally:
        stop_pid(proc)  # type: ignore[arg-type]


# -- item 10: unresolvable hosts, non-UTF-8 config, the right setting named; no traceback ever --------


def test_10_unresolvable_pacs_host_is_peer_unreachable(tmp_path: Path) -> None:
    line = one_error_line(kit("pacs", "echo", "--host", "no-such-host.invalid", cwd=tmp_path))
    assert "PeerUnreachableError" in line and "cannot resolve host 'no-such-host.invalid'" in line


def test_10_non_utf8_config_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "kit.toml"
    bad.write_bytes(b'[pacs]\nhost = "caf\xe9"\n')        # Latin-1, not UTF-8
    for args in (("--config", str(bad), "pacs", "echo"), ("pacs", "echo"), ("index", ".")):
        line = one_error_line(kit(*args, cwd=tmp_path))
        assert "ConfigError" in line and "not UTF-8" in line and "kit.toml" in line


def test_10_listen_on_unresolvable_host_names_the_host_not_the_port(tmp_path: Path) -> None:
    line = one_error_line(kit("hl7", "listen", "--host", "no-such-host.invalid", "--port", "0",
                              "--store", str(tmp_path / "s.db"), cwd=tmp_path))
    assert "--host" in line and "hl7.port" not in line


def _boom(tmp_path: Path, exc: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`kit boom` where boom raises ``exc``: a bug no real peer can provoke, so a command is added."""
    code = ("import click, sys\n"
            "from kit.cli import cli, main\n"
            "class Panic(BaseException): pass\n"   # like pyo3's PanicException
            "@cli.command()\n"
            f"def boom():\n    raise {exc}\n"
            "sys.exit(main(sys.argv[1:]))\n")
    return subprocess.run([sys.executable, "-c", code, *args, "boom"], cwd=tmp_path, env=clean_env(),
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("exc", ["KeyError('x')", "RuntimeError('first\\nsecond')", "Panic('rust')"])
def test_10_any_other_exception_is_one_internal_error_line(tmp_path: Path, exc: str) -> None:
    proc = _boom(tmp_path, exc)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kit: internal error: "), proc.stderr
    assert "run with -v" in lines[0] and "second" not in lines[0]
    verbose = _boom(tmp_path, exc, "-v")
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr
    assert verbose.stderr.strip().splitlines()[-1].startswith("kit: internal error: ")


# -- item 11: out-of-range values are misuse ---------------------------------------------------------


@pytest.mark.parametrize(("args", "says"), [
    (("pacs", "echo", "--port", "70000"), "outside 1-65535"),
    (("pacs", "echo", "--port", "0"), "outside 1-65535"),
    (("hl7", "send", "FEED", "--port", "0"), "outside 1-65535"),
    (("serve", "--pacs-port", "65536"), "outside 0-65535"),
    (("pacs", "echo", "--aet", "A" * 17), "longer than 16"),
    (("pacs", "echo", "--called-aet", ""), "must not be empty"),
    (("pacs", "echo", "--aet", "KIT\\SCU"), "'\\\\'"),
    (("pacs", "echo", "--aet", "KIT\tSCU"), "'\\t'"),
    (("pacs", "find", "--study-date", "20260230"), "not a valid date"),
    (("pacs", "worklist", "--date", "20261301-"), "not a valid date"),
    (("pacs", "echo", "--timeout", "-1"), "positive"),
    (("fhir", "metadata", "--timeout", "0"), "positive"),
    (("hl7", "listen", "--store", "s.db", "--idle-timeout", "-5"), "positive"),
    (("hl7", "listen", "--store", "s.db", "--max-segments", "0"), "x>=1"),
    (("hl7", "listen", "--store", "s.db", "--max-buffered-bytes", "1000"), "at least the largest message"),
    (("fhir", "metadata", "--base", "fhir.example.org/R4"), "not an http(s) URL"),
    (("pacs", "find", "--web", "--base", "ftp://pacs/dicom-web"), "not an http(s) URL"),
    (("pacs", "echo", "--url", "dicom://KIT@127.0.0.1"), "has no port"),
    (("hl7", "send", "FEED", "--url", "mllp://127.0.0.1:99999"), "port 99999 is outside"),
    (("hl7", "send", "FEED", "--url", "http://127.0.0.1:2575"), "not a mllp:// address"),
])
def test_11_out_of_range_values_are_misuse(tmp_path: Path, args: tuple[str, ...], says: str) -> None:
    args = tuple(str(examples.hl7_feed()) if a == "FEED" else a for a in args)
    assert says in usage_error(kit(*args, cwd=tmp_path))


def test_11_out_of_range_settings_name_the_key(tmp_path: Path) -> None:
    (tmp_path / "kit.toml").write_text('[pacs]\ncalled_aet = "ABCDEFGHIJKLMNOPQRS"\n', encoding="utf-8")
    assert "pacs.called_aet" in one_error_line(kit("pacs", "echo", cwd=tmp_path))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = clean_env(KIT_FHIR_BASE="not-a-url")
    assert "KIT_FHIR_BASE" in one_error_line(kit("fhir", "metadata", cwd=elsewhere, env=env))


# -- item 12: nothing found is not success where something specific was asked -----------------------


def test_12_get_of_an_unknown_study_fails(served: Served, tmp_path: Path) -> None:
    line = one_error_line(served.run("pacs", "get", "--study", "1.2.3.4.5.6.7", "--out-dir",
                                     str(tmp_path / "g")))
    assert "RetrieveError" in line and "no instances of study 1.2.3.4.5.6.7" in line
    assert "--study" in usage_error(served.run("pacs", "get", "--study", "1.2.3.x", "--out-dir",
                                               str(tmp_path / "g")))


def test_12_index_of_a_folder_without_dicom_fails_with_the_reasons(tmp_path: Path) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (folder / name).write_text("not DICOM")
    line = one_error_line(kit("index", str(folder), cwd=tmp_path))
    assert f"no DICOM found in {folder}" in line and "3 file(s) skipped" in line and "a.txt" in line
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no files" in one_error_line(kit("index", str(empty), cwd=tmp_path))


def test_12_deid_failure_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("not DICOM")
    env = clean_env(KIT_DEID_KEY="a-long-enough-key")
    line = one_error_line(kit("deid", str(tmp_path / "x.txt"), str(tmp_path / "out"), cwd=tmp_path, env=env))
    assert "could be de-identified" in line


# -- item 13: a refused connection fails fast; --retries -----------------------------------------------


def test_13_refused_connection_fails_fast_and_retries_are_a_flag(tmp_path: Path) -> None:
    dead = free_port()
    cases = [
        (("hl7", "send", str(examples.hl7_feed()), "--port", str(dead)), "gave up after 3 attempt(s)"),
        (("hl7", "send", str(examples.hl7_feed()), "--port", str(dead), "--retries", "0"),
         "gave up after 1 attempt(s)"),
        (("fhir", "metadata", "--base", f"http://127.0.0.1:{dead}/fhir/R4"), "PeerUnreachableError"),
        (("fhir", "search", "Patient", "--base", f"http://127.0.0.1:{dead}/fhir/R4", "--retries", "0"),
         "PeerUnreachableError"),
    ]
    for args, says in cases:
        started = time.monotonic()
        line = one_error_line(kit(*args, cwd=tmp_path))
        took = time.monotonic() - started
        assert says in line, line
        assert took < 5, f"kit {' '.join(args)} took {took:.1f}s"   # a generous hang guard (default ~1.5 s)
    assert "--retries" in usage_error(kit("hl7", "send", str(examples.hl7_feed()), "--retries", "-1",
                                          cwd=tmp_path))


# -- item 14: -o is a FILE by extension; folders are --out-dir; parents are never created -------------


def test_14_hl7_parse_o_writes_one_table_file(tmp_path: Path) -> None:
    out = tmp_path / "results.parquet"
    proc = kit("hl7", "parse", str(examples.hl7_feed()), "-o", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()
    assert pl.read_parquet(out).height > 0 and "value_numeric" in pl.read_parquet(out).columns
    orders = tmp_path / "orders.csv"
    proc = kit("hl7", "parse", str(examples.hl7_feed()), "--table", "orders", "-o", str(orders), cwd=tmp_path)
    assert proc.returncode == 0 and "placer_order_number" in pl.read_csv(orders).columns
    proc = kit("hl7", "parse", str(examples.hl7_feed()), "--out-dir", str(tmp_path / "tables"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in (tmp_path / "tables").iterdir()} >= {"results.parquet", "orders.parquet",
                                                                  "messages.parquet"}
    assert "--table" in usage_error(kit("hl7", "parse", str(examples.hl7_feed()), "--table", "nope",
                                        cwd=tmp_path))


def test_14_missing_parent_folder_is_an_error_and_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such"
    for args in (("hl7", "parse", str(examples.hl7_feed()), "-o", str(missing / "out.csv")),
                 ("hl7", "parse", str(examples.hl7_feed()), "--out-dir", str(missing / "tables")),
                 ("index", str(examples.dicom_dir() / "MRN1002"), "-o", str(missing / "i.parquet")),
                 ("samples", "-o", str(missing / "s.json"))):
        assert "does not exist" in usage_error(kit(*args, cwd=tmp_path))
    assert not (tmp_path / "no").exists()
    assert "unknown output format '.xlsx'" in usage_error(
        kit("hl7", "parse", str(examples.hl7_feed()), "-o", str(tmp_path / "out.xlsx"), cwd=tmp_path))


def test_14_pacs_get_takes_out_dir_and_o_is_the_file_list(served: Served, tmp_path: Path) -> None:
    listing = tmp_path / "received.csv"
    proc = served.run("pacs", "get", "--study", CT.study_uid, "--out-dir", str(tmp_path / "ct"),
                      "-o", str(listing))
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "ct").glob("*.dcm"))) == pl.read_csv(listing).height == 16


# -- item 15: identifiers whole, _include kept, 0xA801 explained ---------------------------------------


def test_15_find_prints_uids_whole(served: Served) -> None:
    proc = served.run("pacs", "find", "--level", "image", "--patient-id", "MRN1001")
    assert proc.returncode == 0, proc.stderr
    uids = {u for s in cohort.studies() if s.mrn == "MRN1001" for u in [s.study_uid]}
    assert all(len(u) == 64 for u in uids) and all(u in proc.stdout for u in uids)
    printed = set(re.findall(r"1\.2\.826\.0\.1\.3680043\.8\.498\.[\d.]+", proc.stdout))
    assert printed and all(len(u) > 40 for u in printed)
    assert "…" not in proc.stdout


def test_15_search_keeps_included_resources(served: Served) -> None:
    proc = served.run("fhir", "search", "ImagingStudy", "_include=ImagingStudy:subject", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    modes = {(r["resource_type"], r["search_mode"]) for r in rows}
    assert modes == {("ImagingStudy", "match"), ("Patient", "include")}
    patients = [r for r in rows if r["resource_type"] == "Patient"]
    assert sorted(r["patient_id"] for r in patients) == sorted(p.mrn for p in cohort.COHORT)
    assert sum(r["search_mode"] == "match" for r in rows) == len(cohort.studies())


def test_15_unknown_move_destination_says_what_to_register(served: Served, tmp_path: Path) -> None:
    port = free_port()
    line = one_error_line(served.run("pacs", "move", "--study", CT.study_uid, "--out-dir",
                                     str(tmp_path / "m"), "--move-aet", "NOTKNOWN",
                                     "--store-port", str(port)))
    assert "0xA801" in line and "does not know the move destination 'NOTKNOWN'" in line
    assert f"register AE title NOTKNOWN, host 127.0.0.1, port {port}" in line
    ok = served.run("pacs", "move", "--study", CT.study_uid, "--out-dir", str(tmp_path / "m2"))
    assert ok.returncode == 0 and "received 16 instance(s)" in ok.stderr, ok.stderr


# -- item 16: the addresses kit serve prints are accepted; [stack] ports are the defaults ------------


def test_16_clients_take_the_printed_addresses(served: Served, tmp_path: Path) -> None:
    elsewhere = tmp_path / "no-config"        # no kit.toml: only the printed address says where
    elsewhere.mkdir()
    env = served.env()
    pacs = kit("pacs", "echo", "--url", served.addresses["pacs"], cwd=elsewhere, env=env)
    assert pacs.returncode == 0 and "answered C-ECHO" in pacs.stdout, pacs.stderr
    fhir = kit("fhir", "metadata", "--base", served.addresses["fhir"], cwd=elsewhere, env=env)
    assert fhir.returncode == 0 and "Patient" in fhir.stdout, fhir.stderr
    mllp = kit("hl7", "send", str(examples.hl7_feed()), "--url", served.addresses["mllp"], "--json",
               cwd=elsewhere, env=env)
    assert mllp.returncode == 0, mllp.stderr
    assert {r["ack_code"] for r in json.loads(mllp.stdout)} == {"AA"}


def test_16_stack_ports_in_kit_toml_are_the_client_defaults(served: Served) -> None:
    for args in (("pacs", "echo"), ("fhir", "metadata"), ("status",)):
        proc = served.run(*args)
        assert proc.returncode == 0, (args, proc.stderr)
    assert served.addresses["pacs"] in served.run("pacs", "echo").stdout


# -- item 17: every subcommand's --help example works as written against kit serve -------------------


def help_examples() -> dict[str, list[str]]:
    """Each leaf command's example lines (the block after 'Examples:' in its --help)."""
    import click

    from tests.integration.cli.test_contract import leaf_commands

    out: dict[str, list[str]] = {}
    for name, cmd in leaf_commands().items():
        ctx = click.Context(cmd, info_name=f"kit {name}")
        text = cmd.get_help(ctx)
        block = text.split("Examples:", 1)[1] if "Examples:" in text else ""
        lines = []
        for line in block.splitlines()[1:]:
            if not line.strip():
                break
            lines.append(line.strip())
        out[name] = lines
    return out


LONG_RUNNING = {"serve", "hl7 listen", "api serve", "medix serve", "monitor serve"}
#: the addresses of a default `kit serve`, as examples show them; replaced by the module's stack's
DEFAULT_ADDRESSES = {"pacs": "dicom://KIT@127.0.0.1:11112", "fhir": "http://127.0.0.1:8080/fhir/R4",
                     "mllp": "mllp://127.0.0.1:2575", "dicomweb": "http://127.0.0.1:8042/dicom-web",
                     "video": "http://127.0.0.1:8090/live.ts"}


def _argv(line: str, home: Path) -> tuple[list[str], dict[str, str]]:
    import shlex

    words = shlex.split(line, comments=True)
    env: dict[str, str] = {}
    while words and re.match(r"^[A-Z_]+=", words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    assert words[0] == "kit", line
    argv = [str(home) + w[1:] if w.startswith("~/") else w for w in words[1:]]
    return argv, env


def _run_long(argv: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.Popen([*KIT, *argv], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None
    try:
        first = proc.stdout.readline()
        assert re.match(r"^(pacs|fhir|mllp|api|medix|monitor)\s+\S+://", first), (
            argv, first, proc.stderr.read() if proc.stderr else "")
    finally:
        stop_pid(proc)  # type: ignore[arg-type]
    assert proc.returncode == 0, (argv, proc.returncode)
    return first


def test_17_every_help_example_works_against_kit_serve(served: Served, tmp_path: Path) -> None:
    found = help_examples()
    missing = sorted(name for name, lines in found.items() if not lines)
    assert not missing, f"no Examples: in the --help of {missing}"
    work = served.cwd / "examples"
    work.mkdir()
    (work / "kit.toml").write_text((served.cwd / "kit.toml").read_text())
    (work / "data").symlink_to(examples.samples_dir().parent)
    # the examples that start a server get their own ports and HOME (the module's stack holds its own)
    own = tmp_path / "own"
    (own / "home").mkdir(parents=True)
    (own / "kit.toml").write_text(stack_toml(free_port(), free_port(), free_port(), free_port()))
    # what the --help says a command needs first: a key, a token file, a cohort list, the audit log
    from cryptography.fernet import Fernet

    needs = {"KIT_API_FERNET_KEY": Fernet.generate_key().decode(),
             "KIT_AUDIT_PATH": str(served.home / ".cache" / "kit" / "stack" / "audit.db")}
    for folder in (work, own):
        (folder / "token.txt").write_text("help-example-token-0123456789\n")
        (folder / "cohort.csv").write_text("accession_number\nACC100101\n")
    swap = {address: served.addresses[service] for service, address in DEFAULT_ADDRESSES.items()}
    failures = []
    ran = 0

    def run_servers(lines: list[str]) -> None:
        """The examples that start a server, one after the other (their own folder, HOME, ports)."""
        home = own / "home"
        for line in lines:
            argv, extra = _argv(line, served.home)
            env = {**clean_env(HOME=str(home)), **needs, **extra}
            _run_long([str(home) + a[1:] if a.startswith("~/") else a for a in argv], own, env)

    # beside the others, which share nothing with them: a third less time on two cores
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        servers = pool.submit(run_servers, [line for name in sorted(found) if name in LONG_RUNNING
                                            for line in found[name]])
        for name in sorted(found):
            ran += len(found[name])
            if name in LONG_RUNNING:
                continue
            for line in found[name]:
                argv, extra = _argv(line, served.home)
                argv = [swap.get(a, a) for a in argv]
                proc = kit(*argv, cwd=work, env={**served.env(), **needs, **extra}, timeout=300)
                if proc.returncode != 0 or not (proc.stdout.strip() or proc.stderr.strip()):
                    failures.append(f"{line}\n    exit {proc.returncode}: {proc.stderr.strip()[-400:]}")
        servers.result()
    assert not failures, "help examples that do not work as written:\n" + "\n".join(failures)
    assert ran >= 2 * len(found) - 5


def test_17_help_examples_use_real_sample_ids() -> None:
    text = "\n".join(line for lines in help_examples().values() for line in lines)
    assert MRN1001_ID in text and CT.study_uid in text
    assert "Patient p1" not in text and "patient=p1" not in text
