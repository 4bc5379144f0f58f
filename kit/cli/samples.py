"""``kit samples``: show, regenerate or verify the synthetic sample cohort."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click

from kit.cli.common import OUT_DIR, emit_frame, handle_errors, output_options

__all__ = ["samples"]


@click.command("samples")
@click.option("--out-dir", "--out", "out_dir", type=OUT_DIR, default=None,
              help="Samples folder (default: $KIT_SAMPLES_DIR, the repository's data/samples, "
                   "else ~/.cache/kit/samples).")
@click.option("--regenerate", is_flag=True,
              help="Write every sample file again (deterministic) and rewrite MANIFEST.json.")
@click.option("--check", "check_", is_flag=True,
              help="Verify the files against MANIFEST.json; exit 1 listing those that differ.")
@output_options
@handle_errors
def samples(out_dir: str | None, regenerate: bool, check_: bool, output: str | None, as_json: bool) -> None:
    """Summarise the sample cohort: files, sizes, patients and studies per kind.

    \b
    Examples:
      kit samples                    # where the samples are, and what they hold
      kit samples --check            # verify against MANIFEST.json
      kit samples --out-dir samples --regenerate --json    # rebuild them (same bytes every time)
    """
    from kit import examples

    out = Path(out_dir) if out_dir is not None else None
    if regenerate:
        click.echo(f"regenerating samples into {out or 'the default folder'} ...", err=True)
        written = examples.regenerate(out)
        click.echo("wrote " + ", ".join(f"{len(v)} {k}" for k, v in written.items()) + " files", err=True)
    root = out if out is not None else examples.samples_dir()
    if check_:
        problems = examples.check(root)
        if problems:
            click.echo(f"kit: error: {len(problems)} sample files differ from {root / examples.MANIFEST}",
                       err=True)
            for line in problems:
                click.echo(f"  {line}", err=True)
            sys.exit(1)
        click.echo(f"ok: every file matches {root / examples.MANIFEST}", err=True)
    frame = examples.summary(root)
    rels = list(examples.load_manifest(root)["files"])
    patients = {m for r in rels for m in re.findall(r"MRN\d+", r)}
    studies = {k for r in rels for k in re.findall(r"MRN\d+-[A-Z]+\d+", r)}
    size = int(frame["size_bytes"].sum()) if frame.height else 0
    click.echo(f"samples: {root} ({len(patients)} patients, {len(studies)} studies, "
               f"{len(rels)} files, {size / 1e6:.1f} MB)", err=True)
    emit_frame(frame, output, as_json, label="kinds")
