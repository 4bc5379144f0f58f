"""Run a job's partitions on Dask (or in this process) and write a partitioned parquet dataset.

A job is a list of partitions; each partition is one call of a module-level
function of :mod:`kit.scale` with plain arguments (paths, key bytes, options),
so the worker needs nothing but the installed package. The function writes its
own part file(s) (``part-00000.parquet``, ... one per partition, names fixed by
the partition's position, written atomically: a retried task rewrites the
same file) and returns a small summary to the client.

Failures come back typed:

- a :class:`~kit.errors.KitError` raised inside a partition is carried back as
  plain data (:class:`Fault`) and raised again on the client as the same class
  with the same message and attributes (the one the local path raises); when
  several partitions fail, the first in input order is raised;
- a worker that dies while running a partition is replaced and the partition
  rescheduled by the scheduler (``distributed.scheduler.allowed-failures``
  times); after that, or on any other failure of the cluster, a
  :class:`~kit.errors.ServiceFailedError`;
- a cluster with no worker for ``timeout`` seconds: a
  :class:`~kit.errors.ServiceFailedError` instead of a wait without end.

On any failure the part files the job wrote are removed: a failed job leaves no
dataset that looks complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kit._progress import counter
from kit.errors import KitError, ServiceFailedError

if TYPE_CHECKING:
    import polars as pl
    from distributed import Client

__all__ = ["Fault", "check_workers_kit", "guarded", "kit_version", "part_name", "prepare_dataset",
           "remove_parts", "run_partitions", "scratch_dir", "write_part"]

_PART = re.compile(r"^part-\d{5,}\.parquet$")
#: seconds between checks on the cluster while partitions run
_POLL = 0.5


@dataclasses.dataclass(frozen=True)
class Fault:
    """A :class:`~kit.errors.KitError` raised in a partition, as plain data.

    Attributes
    ----------
    error_type : str
        The class name in :mod:`kit.errors`.
    args : tuple
        The exception's ``args`` (its message, secrets already masked).
    attributes : dict
        Its attributes (``source``, ``key``, ``service``, ...).
    """

    error_type: str
    args: tuple[Any, ...]
    attributes: dict[str, Any]

    @classmethod
    def of(cls, exc: KitError) -> Fault:
        """Capture ``exc`` (its class must be one of :mod:`kit.errors`)."""
        attrs = {k: v for k, v in vars(exc).items() if not k.startswith("__")}
        return cls(type(exc).__name__, tuple(str(a) for a in exc.args), attrs)

    def error(self) -> KitError:
        """The same error again (same class, message and attributes)."""
        import kit.errors as errors

        cls = getattr(errors, self.error_type, None)
        if not (isinstance(cls, type) and issubclass(cls, KitError)):
            return ServiceFailedError(f"a Dask task failed: {self.error_type}: "
                                      f"{' '.join(self.args)}", service="dask")
        exc = cls.__new__(cls)  # not cls(...): the constructors take different arguments
        Exception.__init__(exc, *self.args)
        for name, value in self.attributes.items():
            setattr(exc, name, value)
        return exc


def guarded(fn: Callable[..., Any], *args: Any) -> Any:
    """Call ``fn(*args)`` (on a worker); a KitError comes back as a :class:`Fault`, anything
    else as a :class:`Fault` of a :class:`~kit.errors.ServiceFailedError` naming it."""
    try:
        return fn(*args)
    except KitError as exc:
        return Fault.of(exc)
    except Exception as exc:  # noqa: BLE001 - a bug or a library error on the worker: typed, not raw
        return Fault.of(ServiceFailedError(f"a Dask task failed: {type(exc).__name__}: {exc}",
                                           service="dask"))


def part_name(index: int, total: int) -> str:
    """``part-00000.parquet``: the name of partition ``index`` of ``total``, all of equal width,
    so that sorting the names sorts the partitions."""
    width = max(5, len(str(max(total - 1, 0))))
    return f"part-{index:0{width}d}.parquet"


def scratch_dir(folder: str | os.PathLike[str]) -> Path:
    """Where the part files of ``folder`` are written before their rename: a hidden sibling
    (polars and pyarrow read every file below a dataset folder, so not inside it)."""
    path = Path(folder).absolute()
    return path.parent / f".{path.name}.kit-parts"


def write_part(frame: pl.DataFrame, folder: str, index: int, total: int) -> str:
    """Write ``frame`` as partition ``index`` of ``total`` into ``folder``, atomically; its path.

    The file is written in :func:`scratch_dir` and renamed into ``folder``, so a
    reader never sees half a part, and a retried partition replaces its part whole.
    """
    name = part_name(index, total)
    target = Path(folder) / name
    scratch = scratch_dir(folder)
    scratch.mkdir(parents=True, exist_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=scratch, prefix=f"{name}.", suffix=".tmp")
    os.close(fd)
    try:
        frame.write_parquet(tmp)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return str(target)


def remove_parts(folder: str | os.PathLike[str]) -> None:
    """Remove the part files of an earlier run from ``folder``, and its scratch folder."""
    path = Path(folder)
    scratch = scratch_dir(path)
    if scratch.is_dir():
        shutil.rmtree(scratch, ignore_errors=True)
    if not path.is_dir():
        return
    for entry in path.iterdir():
        if entry.is_file() and _PART.match(entry.name):
            entry.unlink(missing_ok=True)


def _folders(out: Path) -> list[Path]:
    """``out`` and its table sub-folders (not hidden ones)."""
    subs = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")] if out.is_dir() else []
    return [out, *sorted(subs)]


def prepare_dataset(folder: str | os.PathLike[str]) -> Path:
    """Create ``folder`` and remove the part files of an earlier run from it and its sub-folders.

    Only kit's own part names (``part-NNNNN.parquet``) and scratch folders are
    removed; other files stay.
    """
    from kit.errors import InvalidInputError

    out = Path(folder).absolute()
    try:
        out.mkdir(parents=True, exist_ok=True)
        for path in _folders(out):
            remove_parts(path)
    except OSError as exc:
        raise InvalidInputError(f"cannot prepare the output folder: {exc}", source=str(out)) from exc
    return out


def _finish(out: Path, *, failed: bool) -> None:
    """Remove the scratch folders (and, when the job failed, every part it wrote)."""
    with contextlib.suppress(OSError):
        for path in _folders(out):
            if failed:
                remove_parts(path)
            else:
                shutil.rmtree(scratch_dir(path), ignore_errors=True)


def run_partitions(client: Client | None, fn: Callable[..., Any], partitions: Sequence[tuple[Any, ...]],
                   *, out_dir: Path, timeout: float = 30.0, progress: bool = False,
                   desc: str = "partitions") -> list[Any]:
    """Run ``fn(*args)`` for every ``args`` in ``partitions``; their results, in order.

    Parameters
    ----------
    client : distributed.Client or None
        The cluster; ``None`` runs the partitions one after the other in this process.
    fn : callable
        A module-level function of kit (pickled by reference).
    partitions : sequence of tuples
        The plain arguments of each call.
    out_dir : Path
        The dataset folder: its part files are removed if the job fails.
    timeout : float
        Seconds the cluster may have no worker before the job fails.
    progress : bool
        A progress bar on stderr (when it is a terminal).

    Raises
    ------
    KitError
        The first failing partition's error (in input order), as the local path raises it.
    ServiceFailedError
        A worker died too often on a partition, or the cluster lost every worker for ``timeout``.
    """
    bar = _bar(len(partitions), progress, desc)
    try:
        if client is None:
            results = []
            for args in partitions:
                results.append(guarded(fn, *args))
                bar(1)
                if isinstance(results[-1], Fault):
                    raise results[-1].error()
        else:
            results = _on_cluster(client, fn, partitions, timeout, bar)
    except BaseException:
        _finish(out_dir, failed=True)
        raise
    finally:
        bar(-1)
    _finish(out_dir, failed=False)
    return results


def _on_cluster(client: Client, fn: Callable[..., Any], partitions: Sequence[tuple[Any, ...]],
                timeout: float, bar: Callable[[int], None]) -> list[Any]:
    from distributed import wait

    check_workers_kit(client)
    tag = f"kit-{getattr(fn, '__name__', 'job')}-{uuid.uuid4().hex[:12]}"
    futures = [client.submit(guarded, fn, *args, key=f"{tag}-{i}", pure=False)
               for i, args in enumerate(partitions)]
    position = {f.key: i for i, f in enumerate(futures)}
    results: list[Any] = [None] * len(futures)
    finished = [False] * len(futures)
    first_fault: int | None = None
    pending = set(futures)
    alone_since: float | None = None
    try:
        while pending:
            if first_fault is not None and all(finished[:first_fault]):
                break  # every partition before the first failure is in: that failure is the one
            try:
                done, pending_now = wait(list(pending), timeout=_POLL, return_when="FIRST_COMPLETED")
            except TimeoutError:
                alone_since = _check_workers(client, alone_since, timeout)
                continue
            except Exception as exc:  # noqa: BLE001 - the scheduler went away
                raise ServiceFailedError(f"lost the Dask scheduler: {type(exc).__name__}: {exc}",
                                         service="dask") from exc
            alone_since = None
            pending = set(pending_now)
            for fut in done:
                i = position[fut.key]
                results[i] = _result(fut)
                finished[i] = True
                bar(1)
                if isinstance(results[i], Fault) and (first_fault is None or i < first_fault):
                    first_fault = i
        if first_fault is not None:
            raise results[first_fault].error()
        return results
    finally:
        client.cancel(list(pending))


def kit_version() -> str:
    """The version of kit installed here (run on the workers by :func:`check_workers_kit`)."""
    import kit

    return kit.__version__


def check_workers_kit(client: Client) -> None:
    """Check that every worker runs the same kit version as this process.

    Raises
    ------
    ConfigError
        A worker has another version of kit (its rows could differ from the local path's).
    ServiceFailedError
        A worker cannot run kit at all (not installed there: ``pip install "kit[scale]"``).
    """
    import kit
    from kit.errors import ConfigError

    try:
        found = client.run(kit_version)
    except Exception as exc:  # noqa: BLE001 - an import error on a worker, or the cluster went away
        raise ServiceFailedError(f"the Dask workers cannot run kit (pip install \"kit[scale]\" on them): "
                                 f"{type(exc).__name__}: {exc}", service="dask") from exc
    other = {w: v for w, v in found.items() if v != kit.__version__}
    if other:
        worker, version = sorted(other.items())[0]
        raise ConfigError("dask.scheduler", f"worker {worker} runs kit {version}, this process kit "
                                            f"{kit.__version__}: install the same version on every worker")


def _result(fut: Any) -> Any:
    try:
        return fut.result()
    except KitError:
        raise
    except Exception as exc:  # noqa: BLE001 - KilledWorker, CancelledError, comm errors: all typed
        name = type(exc).__name__
        what = ("a Dask worker died while running a partition (too often: the partition may kill its "
                "worker, e.g. by running out of memory)" if name == "KilledWorker"
                else f"a Dask task did not finish: {name}")
        raise ServiceFailedError(f"{what}: {exc}", service="dask") from exc


def _check_workers(client: Client, alone_since: float | None, timeout: float) -> float | None:
    """Fail when the cluster has had no worker for ``timeout`` seconds."""
    try:
        workers = client.nthreads()
    except Exception as exc:  # noqa: BLE001 - the scheduler went away
        raise ServiceFailedError(f"lost the Dask scheduler: {type(exc).__name__}: {exc}",
                                 service="dask") from exc
    if workers:
        return None
    now = time.monotonic()
    if alone_since is None:
        return now
    if now - alone_since > timeout:
        raise ServiceFailedError(f"the Dask cluster has had no worker for {timeout:g} s", service="dask")
    return alone_since


def _bar(total: int, show: bool, desc: str) -> Callable[[int], None]:
    return counter(total, show, desc=desc, unit="part")
