"""Fixtures of the dataset-export tests: the embedded stack holding the sample cohort in all three
systems (PACS and FHIR preloaded, the HL7 feed sent over MLLP into its store), and one export of it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kit.cohort.export import export_dataset
from kit.cohort.manifest import Manifest
from kit.config import Settings
from kit.deid.pseudonyms import Pseudonymiser
from kit.examples import hl7_feed
from kit.hl7.message import split_messages
from kit.hl7.mllp import MLLPSender, RetryPolicy
from kit.stack import Stack

KEY = "export-test-key-0123456789"
OTHER_KEY = "another-export-key-9876543210"


@dataclass
class Sources:
    stack: Stack
    settings: Settings
    hl7_store: Path


@dataclass
class Exported:
    out: Path
    manifest: Manifest
    pseudonymiser: Pseudonymiser


@pytest.fixture(scope="package")
def sources() -> Iterator[Sources]:
    with Stack.ephemeral(services=("pacs", "fhir", "mllp")) as stack:
        with MLLPSender("127.0.0.1", stack.port("mllp"), timeout=10,
                        retry=RetryPolicy(max_attempts=3)) as sender:
            sent = sender.send_many(list(split_messages(hl7_feed().read_bytes())))
        assert sent.height == 63 and sent["ack_code"].to_list() == ["AA"] * 63
        yield Sources(stack, stack.client_settings(), stack.data_dir / "mllp.db")


@pytest.fixture(scope="package")
def exported(sources: Sources, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """Everything the stack holds (no cohort), exported with KEY."""
    out = tmp_path_factory.mktemp("export") / "dataset"
    pseudo = Pseudonymiser(KEY)
    manifest = export_dataset(sources.settings, pseudo, out, hl7_store=sources.hl7_store, progress=False,
                              echo=lambda _: None)
    return Exported(out, manifest, pseudo)


@pytest.fixture
def copy(exported: Exported, tmp_path: Path) -> Path:
    """A copy of the export this test may change."""
    target = tmp_path / "dataset"
    shutil.copytree(exported.out, target, symlinks=True)
    return target
