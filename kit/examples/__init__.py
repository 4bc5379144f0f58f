"""The synthetic sample cohort on disk: find it, regenerate it, check it.

Notebooks, the embedded stack, the demo and the tests read their data from
here, offline::

    from kit import examples

    ct = examples.study_dir("MRN1001")            # .../dicom/MRN1001/MRN1001-CT1
    clip = examples.endoscopy_clip("MRN1001")     # .../endoscopy/MRN1001-ES2.mp4
    bundle = examples.fhir_bundle()               # .../fhir/bundle.json
    feed = examples.hl7_feed()                    # .../hl7/feed.hl7

:func:`samples_dir` is the repository's ``data/samples`` when it is present
and complete per its ``MANIFEST.json``; otherwise (a non-editable install) the
samples are generated once into ``$XDG_CACHE_HOME/kit/samples`` (default
``~/.cache/kit/samples``). ``KIT_SAMPLES_DIR`` overrides both.

Every file derives from :mod:`kit.examples.cohort` and is deterministic: two
runs of :func:`regenerate` give byte-identical files (the manifest also
records a hash of each clip's decoded frames, which :func:`check` compares if
a clip's bytes differ, as they may with another PyAV/x264 build).
Generators: :mod:`kit.examples.dicom` (CT, MR), :mod:`kit.examples.endoscopy`
(VL stills, clips), :mod:`kit.examples.phi` (a labelled set of note sentences
with PHI spans, ``phi/notes.jsonl``) and, when installed, ``kit.examples.fhir`` and
``kit.examples.hl7``; each has ``generate(out_dir) -> list[Path]``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kit.errors import InvalidInputError, StoreError
from kit.examples.cohort import COHORT, Lesion, Patient, Study, patient, studies

if TYPE_CHECKING:  # polars is imported by summary(): the DICOM stack reads the cohort without it
    import polars as pl

__all__ = [
    "COHORT",
    "GENERATORS",
    "MANIFEST",
    "SAMPLES_FORMAT",
    "Lesion",
    "Patient",
    "Study",
    "available_generators",
    "check",
    "dicom_dir",
    "endoscopy_clip",
    "fhir_bundle",
    "hl7_feed",
    "load_manifest",
    "patient",
    "regenerate",
    "samples_dir",
    "studies",
    "study_dir",
    "summary",
]

#: Sample generators, in run order (modules of this package with ``generate(out_dir)``).
GENERATORS = ("dicom", "endoscopy", "fhir", "hl7", "phi")
#: Name of the manifest file in the samples root.
MANIFEST = "MANIFEST.json"
#: Bumped whenever a generator's output changes, so stale caches are rebuilt.
SAMPLES_FORMAT = 1

_REPO_SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples"
_CLIP_SUFFIX = ".mp4"


# -- generation ----------------------------------------------------------------------------------

def available_generators() -> list[str]:
    """The generators importable in this installation (fhir and hl7 may not be)."""
    return [name for name in GENERATORS if importlib.util.find_spec(f"kit.examples.{name}") is not None]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _clip_info(path: Path) -> dict[str, Any]:
    """Frame count, size and a hash of the decoded (native YUV) frames of a clip."""
    import av

    h = hashlib.sha256()
    frames = width = height = 0
    try:
        with av.open(str(path)) as container:
            for video_frame in container.decode(video=0):
                h.update(video_frame.to_ndarray().tobytes())
                frames += 1
                width, height = video_frame.width, video_frame.height
    except (av.FFmpegError, OSError) as exc:
        raise InvalidInputError(f"cannot decode clip: {exc}", source=str(path)) from exc
    return {"frames": frames, "width": width, "height": height, "frames_sha256": h.hexdigest()}


def _entry(path: Path) -> dict[str, Any]:
    entry: dict[str, Any] = {"sha256": _sha256(path), "size": path.stat().st_size}
    if path.suffix == _CLIP_SUFFIX:
        entry.update(_clip_info(path))
    return entry


def load_manifest(root: Path | None = None) -> dict[str, Any]:
    """The parsed ``MANIFEST.json`` of a samples folder (default :func:`samples_dir`).

    Keys: ``format``, ``generators`` and ``files`` (relative POSIX path ->
    ``sha256``, ``size``; clips also ``frames``, ``width``, ``height``,
    ``frames_sha256``).
    """
    root = samples_dir() if root is None else Path(root)
    try:
        data: dict[str, Any] = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"no readable {MANIFEST} in {root}: {exc}") from exc
    if not isinstance(data.get("files"), dict):
        raise StoreError(f"{root / MANIFEST} has no 'files' mapping")
    return data


def _default_out() -> Path:
    if os.environ.get("KIT_SAMPLES_DIR"):
        return Path(os.environ["KIT_SAMPLES_DIR"])
    if (_REPO_SAMPLES.parent.parent / "pyproject.toml").is_file():
        return _REPO_SAMPLES
    return _cache_dir()


def regenerate(out_dir: Path | None = None, *,
               generators: list[str] | None = None) -> dict[str, list[Path]]:
    """Run every available generator into ``out_dir`` and write its ``MANIFEST.json``.

    Parameters
    ----------
    out_dir : Path or None
        Samples root; default ``KIT_SAMPLES_DIR``, else the repository's
        ``data/samples`` (editable install), else the user cache.
    generators : list of str or None
        Which generators to run (default: all that are importable).

    Returns
    -------
    dict
        Generator name -> files written. Files listed in a previous manifest
        that were not written again are removed.
    """
    out = Path(out_dir) if out_dir is not None else _default_out()
    out.mkdir(parents=True, exist_ok=True)
    previous: dict[str, Any] = {}
    if (out / MANIFEST).is_file():
        try:
            previous = load_manifest(out)["files"]
        except StoreError:
            previous = {}
    names = available_generators() if generators is None else list(generators)
    written: dict[str, list[Path]] = {}
    for name in names:
        module = importlib.import_module(f"kit.examples.{name}")
        generate: Callable[[Path], list[Path]] = module.generate
        written[name] = [Path(p) for p in generate(out)]
    files: dict[str, Any] = {}
    for paths in written.values():
        for p in paths:
            files[p.resolve().relative_to(out.resolve()).as_posix()] = _entry(p)
    for rel in previous:
        if rel not in files and (out / rel).is_file():
            (out / rel).unlink()
    manifest = {"format": SAMPLES_FORMAT, "generators": names, "files": dict(sorted(files.items()))}
    tmp = out / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, out / MANIFEST)
    return written


def check(root: Path | None = None) -> list[str]:
    """Verify a samples folder against its manifest.

    Returns
    -------
    list of str
        One line per problem (``missing: rel``, ``size: rel``, ``content: rel``,
        ``frames: rel``); empty when every file matches. A clip whose bytes
        differ passes if its decoded frames match.
    """
    root = samples_dir() if root is None else Path(root)
    problems: list[str] = []
    for rel, want in load_manifest(root)["files"].items():
        path = root / rel
        if not path.is_file():
            problems.append(f"missing: {rel}")
        elif path.stat().st_size != want["size"] and not rel.endswith(_CLIP_SUFFIX):
            problems.append(f"size: {rel} ({path.stat().st_size} bytes, manifest {want['size']})")
        elif _sha256(path) != want["sha256"]:
            if rel.endswith(_CLIP_SUFFIX) and "frames_sha256" in want:
                got = _clip_info(path)
                if any(got[k] != want.get(k) for k in ("frames", "width", "height", "frames_sha256")):
                    problems.append(f"frames: {rel} ({got['frames']} frames {got['width']}x"
                                    f"{got['height']}, manifest {want.get('frames')})")
            else:
                problems.append(f"content: {rel} (sha256 differs)")
    return problems


# -- finding the samples -------------------------------------------------------------------------

def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kit" / "samples"


def _complete(root: Path, *, current: bool) -> bool:
    """Every manifest file present with its size; ``current`` also wants this format and generators."""
    try:
        data = json.loads((root / MANIFEST).read_text())
        files: dict[str, Any] = data["files"]
        if current and (data.get("format") != SAMPLES_FORMAT
                        or not set(available_generators()) <= set(data.get("generators", []))):
            return False
        return bool(files) and all((root / rel).is_file() and (root / rel).stat().st_size == e["size"]
                                   for rel, e in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _build_cache(target: Path) -> Path:
    """Generate into a temporary sibling, then move it into place (safe against concurrent builds)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".samples-{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        regenerate(tmp)
        old = target.parent / f".samples-{os.getpid()}.old"
        if target.exists():
            os.replace(target, old)
        try:
            os.replace(tmp, target)
        except OSError:
            if not _complete(target, current=True):  # lost a race to a broken build: surface it
                raise
        shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        raise StoreError(f"cannot write the sample cohort to {target}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def samples_dir() -> Path:
    """The folder holding the sample cohort (generated on first use if needed).

    Order: ``$KIT_SAMPLES_DIR`` (generated there if incomplete); the
    repository's ``data/samples`` if complete per its manifest; the user
    cache ``$XDG_CACHE_HOME/kit/samples`` (generated once, rebuilt when the
    sample format or the set of generators changes).
    """
    override = os.environ.get("KIT_SAMPLES_DIR")
    if override:
        root = Path(override)
        if not _complete(root, current=False):
            regenerate(root)
        return root
    if _complete(_REPO_SAMPLES, current=False):
        return _REPO_SAMPLES
    cache = _cache_dir()
    if _complete(cache, current=True):
        return cache
    return _build_cache(cache)


def dicom_dir() -> Path:
    """``<samples>/dicom``: one folder per MRN, then study key, series number, instance files."""
    return samples_dir() / "dicom"


def _study(mrn: str, modality: str) -> Study:
    try:
        p = patient(mrn)
    except KeyError as exc:
        raise InvalidInputError(f"no patient {mrn!r} in the sample cohort") from exc
    for s in p.studies:
        if s.modality == modality and not s.scheduled:
            return s
    raise InvalidInputError(f"patient {mrn} has no performed {modality} study in the sample cohort")


def study_dir(mrn: str, modality: str = "CT") -> Path:
    """Folder of the first performed ``modality`` study of patient ``mrn``.

    ``sorted(study_dir("MRN1001").rglob("*.dcm"))`` lists its images.
    """
    path = dicom_dir() / mrn / _study(mrn, modality).key
    if not path.is_dir():
        raise StoreError(f"sample study folder {path} is missing: run `kit samples --regenerate`")
    return path


def endoscopy_clip(mrn: str | None = None) -> Path:
    """The MP4 clip of patient ``mrn``'s endoscopy (default: the cohort's first).

    Its JSON sidecar (same name, ``.json``) names the study.
    """
    study = _study(mrn, "ES") if mrn else studies(modality="ES")[0]
    path = samples_dir() / "endoscopy" / f"{study.key}.mp4"
    if not path.is_file():
        raise StoreError(f"sample clip {path} is missing: run `kit samples --regenerate`")
    return path


def _generated(rel: str, generator: str) -> Path:
    path = samples_dir() / rel
    if not path.is_file():
        hint = ("run `kit samples --regenerate`" if generator in available_generators()
                else f"kit.examples.{generator} is not installed")
        raise StoreError(f"sample file {path} is missing: {hint}")
    return path


def fhir_bundle() -> Path:
    """``<samples>/fhir/bundle.json``: the cohort as one FHIR R4 transaction Bundle."""
    return _generated("fhir/bundle.json", "fhir")


def hl7_feed() -> Path:
    """``<samples>/hl7/feed.hl7``: the cohort's HL7 v2 messages."""
    return _generated("hl7/feed.hl7", "hl7")


# -- summary -------------------------------------------------------------------------------------

_MRN = re.compile(r"MRN\d+")
_KEY = re.compile(r"(MRN\d+-[A-Z]+\d+)")


def _kind(rel: str) -> str:
    parts = rel.split("/")
    if parts[0] == "dicom" and len(parts) > 2:
        return "dicom " + re.sub(r"\d+$", "", parts[2].rsplit("-", 1)[-1])
    if parts[0] == "endoscopy":
        return "clip" if rel.endswith(_CLIP_SUFFIX) else "clip sidecar"
    return parts[0]


def summary(root: Path | None = None) -> pl.DataFrame:
    """One row per kind of sample file, from the manifest.

    Columns: ``kind`` (``dicom CT``, ``dicom MR``, ``dicom ES``, ``clip``,
    ``clip sidecar``, ``fhir``, ``hl7``), ``files``, ``size_bytes``,
    ``patients`` and ``studies`` (distinct MRNs / study keys in the paths;
    null for kinds whose paths name none).
    """
    import polars as pl

    files = load_manifest(root)["files"]
    rows: dict[str, dict[str, Any]] = {}
    for rel, entry in files.items():
        row = rows.setdefault(_kind(rel), {"files": 0, "size_bytes": 0, "mrns": set(), "keys": set()})
        row["files"] += 1
        row["size_bytes"] += int(entry["size"])
        row["mrns"].update(_MRN.findall(rel))
        row["keys"].update(_KEY.findall(rel))
    return pl.DataFrame(
        [{"kind": k, "files": r["files"], "size_bytes": r["size_bytes"],
          "patients": len(r["mrns"]) or None, "studies": len(r["keys"]) or None}
         for k, r in sorted(rows.items())],
        schema={"kind": pl.String, "files": pl.Int64, "size_bytes": pl.Int64,
                "patients": pl.Int64, "studies": pl.Int64})
