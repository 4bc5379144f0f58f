"""ipywidgets for the endoscopy suite: pick a procedure, watch the live video with detections, capture.

Only display and wiring: the worklist is :func:`kit.endoscopy.procedures.worklist`'s
frame, the frames come from a :class:`~kit.endoscopy.source.FrameSource`, the
boxes from the caller's ``detector(frame) -> list[Detection]`` (e.g.
:data:`kit.endoscopy.demo_detector.demo_detector`), storing is
:func:`kit.endoscopy.store.capture_procedure`. The boxes are drawn into the
frame's pixels with Pillow's ``ImageDraw`` and the frame shown as a JPEG in an
``ipywidgets.Image``; tables are itables (:func:`kit.widgets.tables.data_table`).
Everything a button does is also a method, so notebooks under nbval and tests
drive the widgets without a browser::

    picker = ProcedurePicker(procedures.worklist(pacs))
    viewer = FrameViewer(FrameSource(settings.endoscopy.stream_url), detector=demo_detector, pacs=pacs)
    picker.link(viewer)               # the viewer stores into the picked procedure
    viewer.play(); ...; viewer.pause()
    viewer.step(); viewer.capture_still(); viewer.record(2.0)
    capture = viewer.store()          # stills and clip to the PACS, found again
    viewer.stop()                     # pause and close the source
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

import ipywidgets as w
import numpy as np
import polars as pl

from kit.endoscopy.capture import MAX_CLIP_FRAMES, Procedure
from kit.endoscopy.detections import Detection
from kit.endoscopy.frame import Frame
from kit.errors import InvalidInputError, KitError, PeerTimeoutError
from kit.widgets.progress import ProgressBar
from kit.widgets.tables import data_table, set_table

if TYPE_CHECKING:
    from kit.dicom.dimse import PacsClient
    from kit.endoscopy.source import FrameSource
    from kit.endoscopy.store import Capture
    from kit.endoscopy.vendors import VendorProfile

__all__ = ["Detector", "FrameViewer", "ProcedurePicker", "draw_detections"]

#: ``detector(frame) -> list[Detection]``: the researcher's model (or the demo detector).
Detector = Callable[[Frame], Sequence[Detection]]

_PICKER_COLUMNS: Final = ("accession_number", "patient_id", "patient_name",
                          "scheduled_procedure_step_start_date", "scheduled_procedure_step_start_time",
                          "scheduled_station_ae_title", "requested_procedure_description",
                          "study_instance_uid")
_STORED_COLUMNS: Final = ("kind", "number_of_frames", "frame_index", "found", "sop_instance_uid",
                          "series_instance_uid", "transfer_syntax_uid")
_BOX_COLOUR: Final = (255, 235, 0)
#: Frames kept for the stills (each a full image in memory).
MAX_STILLS: Final = 100


def draw_detections(frame: Frame, detections: Sequence[Detection]) -> np.ndarray:
    """A copy of ``frame``'s pixels with each detection's box and label (and score) drawn on it."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(frame.image)
    draw = ImageDraw.Draw(image)
    for det in detections:
        if det.box is None:
            continue
        x0, y0, x1, y1 = det.box
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=_BOX_COLOUR, width=2)
        text = det.label if det.score is None else f"{det.label} {det.score:.2f}"
        draw.text((x0 + 2, max(0.0, y0 - 12)), text, fill=_BOX_COLOUR)
    return np.asarray(image)


def _jpeg(pixels: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


class ProcedurePicker(w.VBox):
    """Pick one scheduled endoscopy from a worklist frame: a dropdown and an itables table in step.

    Parameters
    ----------
    worklist : polars.DataFrame
        :func:`kit.endoscopy.procedures.worklist` output (``accession_number``,
        ``patient_id``, ``study_instance_uid`` required; one row per procedure step).

    Attributes
    ----------
    accession : str
        The picked procedure's accession number (settable).
    row : dict
        The picked worklist row.
    procedure : Procedure
        The picked row as a :class:`~kit.endoscopy.capture.Procedure` (what a capture stores into).
    """

    def __init__(self, worklist: pl.DataFrame) -> None:
        missing = {"accession_number", "patient_id", "study_instance_uid"} - set(worklist.columns)
        if missing:
            raise InvalidInputError(f"ProcedurePicker needs worklist columns {sorted(missing)}")
        rows = worklist.filter(pl.col("accession_number").is_not_null()).unique(
            "accession_number", keep="first", maintain_order=True)
        if rows.is_empty():
            raise InvalidInputError("ProcedurePicker needs at least one worklist item with an accession "
                                    "number")
        self._frame = rows
        self._accessions = [str(a) for a in rows["accession_number"]]
        labels = [" | ".join(str(r[c]) for c in ("accession_number", "patient_id", "patient_name",
                                                 "scheduled_procedure_step_start_date",
                                                 "requested_procedure_description") if r.get(c) is not None)
                  for r in rows.iter_rows(named=True)]
        self._callbacks: list[Callable[[Procedure], Any]] = []
        self._syncing = False
        self._dropdown = w.Dropdown(options=list(zip(labels, self._accessions, strict=True)),
                                    description="Procedure", layout=w.Layout(width="95%"))
        self._table = data_table(rows.select([c for c in _PICKER_COLUMNS if c in rows.columns]), select=True)
        self._table.selected_rows = [0]
        super().__init__([self._dropdown, self._table])
        self._dropdown.observe(self._on_pick, names="value")
        self._table.observe(self._on_row, names="selected_rows")

    @property
    def accession(self) -> str:
        return str(self._dropdown.value)

    @accession.setter
    def accession(self, value: str) -> None:
        if value not in self._accessions:
            raise InvalidInputError(f"no worklist item with accession number {value!r}; the worklist has "
                                    f"{', '.join(self._accessions[:10])}", source="worklist")
        self._dropdown.value = value

    @property
    def row(self) -> dict[str, Any]:
        return self._frame.row(self._accessions.index(self.accession), named=True)

    @property
    def procedure(self) -> Procedure:
        return Procedure.from_row(self.row)

    @property
    def table(self) -> pl.DataFrame:
        """The worklist rows offered, as the table shows them."""
        return self._frame

    def __repr__(self) -> str:
        r = self.row
        return (f"ProcedurePicker({len(self._accessions)} procedures, picked {self.accession}: "
                f"{r['patient_id']} {r.get('requested_procedure_description') or ''})".replace(" )", ")"))

    def on_select(self, callback: Callable[[Procedure], Any]) -> None:
        """Call ``callback(procedure)`` whenever another procedure is picked."""
        self._callbacks.append(callback)

    def link(self, viewer: FrameViewer) -> FrameViewer:
        """Make ``viewer`` store into the picked procedure, now and after every pick; return it."""
        viewer.procedure = self.procedure
        self.on_select(lambda procedure: setattr(viewer, "procedure", procedure))
        return viewer

    def _on_pick(self, _change: dict[str, Any]) -> None:
        if not self._syncing:
            self._syncing = True
            try:
                self._table.selected_rows = [self._accessions.index(self.accession)]
            finally:
                self._syncing = False
        procedure = self.procedure
        for callback in self._callbacks:
            callback(procedure)

    def _on_row(self, change: dict[str, Any]) -> None:
        rows = list(change["new"] or [])
        if self._syncing or len(rows) != 1 or not 0 <= rows[0] < len(self._accessions):
            return
        self._syncing = True
        try:
            self._dropdown.value = self._accessions[rows[0]]   # notifies through _on_pick
        finally:
            self._syncing = False


class FrameViewer(w.VBox):
    """Live frames with a detection overlay, play/pause, capture of stills and a clip, and store.

    Parameters
    ----------
    source : FrameSource
        Where the frames come from (a stream, a device or a file); the viewer
        starts it when it first reads and closes it in :meth:`stop`.
    detector : callable, optional
        ``detector(frame) -> list[Detection]``, run on every frame shown; its
        boxes are drawn on the frame.
    pacs : PacsClient, optional
        Where :meth:`store` sends the capture (required to store).
    procedure : Procedure, optional
        What the capture is stored into (:meth:`ProcedurePicker.link` sets it).
    profile : VendorProfile, optional
        The tower's profile for the stored objects (default generic).
    max_fps : float
        Most frames shown per second while playing (the others are read, not drawn).
    quality : int
        JPEG quality of the frames shown.

    Attributes
    ----------
    frame : Frame or None
        The frame shown now.
    detections : list of Detection
        The detector's output on the frame shown.
    stills : list of Frame
        Frames kept by :meth:`capture_still` (at most :data:`MAX_STILLS`).
    clip : list of Frame
        Frames recorded by :meth:`record` or the record button (at most the clip limit).
    captures : list of Capture
        What :meth:`store` stored, in order; :attr:`stored` is them as one table.
    error : str or None
        Why playing or storing stopped, if it failed (also shown in red).
    progress : ProgressBar
        Shown while storing.
    """

    def __init__(self, source: FrameSource, *, detector: Detector | None = None,
                 pacs: PacsClient | None = None, procedure: Procedure | None = None,
                 profile: VendorProfile | None = None, max_fps: float = 10.0, quality: int = 80) -> None:
        if not max_fps > 0 or not 1 <= quality <= 95:
            raise InvalidInputError("FrameViewer: max_fps > 0 and quality 1..95")
        self.source = source
        self.detector = detector
        self.pacs = pacs
        self.procedure = procedure
        self.profile = profile
        self.max_fps = float(max_fps)
        self.quality = int(quality)
        self.frame: Frame | None = None
        self.detections: list[Detection] = []
        self.stills: list[Frame] = []
        self.clip: list[Frame] = []
        self.captures: list[Capture] = []
        self.error: str | None = None
        self.shown = 0
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._record_for: float | None = None   # seconds of stream time the recording lasts
        self._image = w.Image(format="jpeg", layout=w.Layout(max_width="640px"))
        self._play = w.ToggleButton(value=False, description="play", icon="play", tooltip="play / pause")
        self._still = w.Button(description="capture still", icon="camera")
        self._seconds = w.BoundedFloatText(value=2.0, min=0.1, max=60.0, step=0.5, description="clip s",
                                           layout=w.Layout(width="150px"))
        self._record = w.Button(description="record clip", icon="circle")
        self._store = w.Button(description="store", icon="upload", button_style="primary")
        self._stats = w.Label()
        self._status = w.Label(style={"text_color": "#b00020"})
        self._captured = w.Label()
        self.progress = ProgressBar()
        self._table = data_table(pl.DataFrame({c: [] for c in _STORED_COLUMNS}, schema={
            c: pl.String for c in _STORED_COLUMNS}))
        controls = w.HBox([self._play, self._still, self._seconds, self._record, self._store])
        super().__init__([self._image, controls, self._stats, self._captured, self.progress, self._status,
                          self._table])
        self._play.observe(self._on_play, names="value")
        self._still.on_click(lambda _b: self._guard(self.capture_still))
        self._record.on_click(lambda _b: self._guard(self._on_record))
        self._store.on_click(lambda _b: self._guard(self.store))
        self._show_counts()

    # -- state ------------------------------------------------------------------------------------
    @property
    def playing(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def recording(self) -> bool:
        return self._record_for is not None

    @property
    def image(self) -> bytes:
        """The JPEG shown now (empty before the first frame)."""
        return bytes(self._image.value)

    @property
    def status(self) -> str:
        """The statistics line: frame, time, measured fps, dropped, reconnects, detections."""
        return str(self._stats.value)

    @property
    def stored(self) -> pl.DataFrame:
        """Every instance :meth:`store` stored (:data:`kit.endoscopy.store.CAPTURE_SCHEMA`)."""
        from kit.endoscopy.store import CAPTURE_SCHEMA

        frames = [c.frame for c in self.captures]
        return pl.concat(frames) if frames else pl.DataFrame(schema=CAPTURE_SCHEMA)

    def __repr__(self) -> str:
        return (f"FrameViewer({self.source.kind} source, {'playing' if self.playing else 'paused'}, "
                f"stills={len(self.stills)}, clip={len(self.clip)} frames, stored={self.stored.height})")

    # -- what the buttons do --------------------------------------------------------------------
    def play(self) -> None:
        """Show frames in a background thread at most ``max_fps`` a second until :meth:`pause`."""
        self._play.value = True

    def pause(self) -> None:
        """Stop the background thread (waits for it; idempotent); the last frame stays shown."""
        self._play.value = False

    def step(self, timeout: float | None = None) -> Frame:
        """Read the next frame and show it (with its detections); recorded too while recording.

        Raises
        ------
        kit.errors.KitError
            The source failed or ended (:class:`~kit.errors.VideoSourceError` at its end).
        """
        if self.playing:
            raise InvalidInputError("pause the viewer before stepping it by hand", source="viewer")
        frame = self._next(timeout)
        if frame is None:
            from kit.errors import VideoSourceError

            raise VideoSourceError("the video source ended", peer=self.source.url)
        self._collect(frame)
        self.show(frame)
        return frame

    def show(self, frame: Frame) -> None:
        """Show ``frame`` with the detector's boxes drawn on it."""
        found = list(self.detector(frame)) if self.detector is not None else []
        pixels = draw_detections(frame, found) if found else frame.image
        data = _jpeg(pixels, self.quality)
        with self._lock:
            self.frame, self.detections = frame, found
            self.shown += 1
        self._image.value = data
        stats = self.source.stats
        self._stats.value = (f"frame {frame.index} · {frame.timestamp:.2f} s · {stats.fps:.1f} fps measured"
                             f" · {stats.dropped} dropped · {stats.reconnects} reconnects · "
                             f"{len(found)} detection(s)")

    def capture_still(self) -> Frame:
        """Keep the frame shown now as a still (stored by :meth:`store`)."""
        with self._lock:
            frame = self.frame
            if frame is None:
                raise InvalidInputError("no frame shown yet: play or step first", source="viewer")
            if len(self.stills) >= MAX_STILLS:
                raise InvalidInputError(f"at most {MAX_STILLS} stills; store them first", source="viewer")
            if all(f.index != frame.index for f in self.stills):
                self.stills.append(frame)
        self._show_counts()
        return frame

    def record(self, seconds: float) -> list[Frame]:
        """Record the next ``seconds`` of stream time as the clip (replacing any earlier one).

        While playing, the background thread records and this returns at once
        (the clip fills as the frames arrive; :attr:`recording` says when it is
        done). Paused, it reads the frames here, every one, and returns them.
        """
        if not 0 < seconds <= 600:
            raise InvalidInputError(f"seconds: in (0, 600], not {seconds!r}", source="viewer")
        with self._lock:
            self.clip = []
            self._record_for = float(seconds)
        self._show_counts()
        if self.playing:
            return []
        while self.recording:
            self.step()
        return list(self.clip)

    def store(self) -> list[Capture]:
        """Store the stills and the clip into :attr:`procedure` (C-STORE, then found by C-FIND).

        Stills taken while the clip was recorded go in with it (one capture);
        others are stored on their own. The kept frames are cleared once stored.

        Returns
        -------
        list of Capture
            What this call stored (also appended to :attr:`captures` and shown in the table).
        """
        from kit.endoscopy.store import capture_procedure

        if self.pacs is None or self.procedure is None:
            raise InvalidInputError("the viewer needs pacs= and a procedure (ProcedurePicker.link) to store",
                                    source="viewer")
        with self._lock:
            if self.recording:
                raise InvalidInputError("a clip is still being recorded", source="viewer")
            stills, clip = list(self.stills), list(self.clip)
        if not stills and not clip:
            raise InvalidInputError("nothing to store: capture a still or record a clip", source="viewer")
        in_clip = {f.index for f in clip}
        apart = sorted((f for f in stills if f.index not in in_clip), key=lambda f: f.index)
        with_clip = sorted(f.index for f in stills if f.index in in_clip)
        jobs = ([(clip, with_clip, True)] if clip else []) + ([(apart, [f.index for f in apart], False)]
                                                              if apart else [])
        stored: list[Capture] = []
        with self.progress.task("storing", total=len(jobs)) as tick:
            for frames, indices, as_clip in jobs:
                stored.append(capture_procedure(self.pacs, self.procedure, frames, profile=self.profile,
                                                stills=indices, clip=as_clip))
                tick(1)
        with self._lock:
            self.captures += stored
            self.stills, self.clip = [], []
        set_table(self._table, self.stored.select(_STORED_COLUMNS))
        self._show_counts()
        return stored

    def stop(self) -> None:
        """Pause and close the source (idempotent); the widget stays on screen with its last frame."""
        if "_play" not in self.__dict__:   # __init__ failed before the widgets were built
            return
        self.pause()
        self.source.close()

    def close(self) -> None:
        """:meth:`stop`, then close the widget (ipywidgets' ``close``: it leaves the screen)."""
        self.stop()
        super().close()

    # -- wiring -----------------------------------------------------------------------------------
    def _guard(self, action: Callable[[], Any]) -> None:
        """Run a button's action; a failure is shown in the widget, never raised into the event loop."""
        try:
            self._status.value = ""
            action()
        except KitError as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            self._status.value = self.error

    def _show_counts(self) -> None:
        state = " (recording)" if self.recording else ""
        self._captured.value = (f"{len(self.stills)} still(s), clip {len(self.clip)} frame(s){state}, "
                                f"{self.stored.height} instance(s) stored")

    def _on_record(self) -> None:
        if not self.playing:
            self.play()
        self.record(float(self._seconds.value))

    def _next(self, timeout: float | None) -> Frame | None:
        # recording needs every frame; otherwise the newest one keeps the view current
        return self.source.read(timeout) if self.recording else self.source.latest(timeout)

    def _collect(self, frame: Frame) -> None:
        with self._lock:
            if self._record_for is None:
                return
            if self.clip and frame.timestamp - self.clip[0].timestamp >= self._record_for - 1e-6:
                self._record_for = None
            elif len(self.clip) >= MAX_CLIP_FRAMES:
                self._record_for = None
            else:
                self.clip.append(frame)
        if self._record_for is None or len(self.clip) % 10 == 1:
            self._show_counts()

    def _on_play(self, change: dict[str, Any]) -> None:
        self._play.icon, self._play.description = ("pause", "pause") if change["new"] else ("play", "play")
        if change["new"]:
            if not self.playing:
                self.error, self._status.value = None, ""
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="kit-frame-viewer", daemon=True)
                self._thread.start()
            return
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.source.read_timeout + self.source.open_timeout + 5.0)
        self._thread = None

    def _run(self) -> None:
        period = 1.0 / self.max_fps
        due = 0.0
        unshown: Frame | None = None
        try:
            while not self._stop.is_set():
                try:
                    frame = self._next(0.5)
                except PeerTimeoutError:   # a slow stream: the source's own timeouts end a dead one
                    continue
                if frame is None:   # the source ended (a file's end): its last frame stays on screen
                    if unshown is not None:
                        self.show(unshown)
                    break
                self._collect(frame)
                now = time.monotonic()
                if now >= due:
                    self.show(frame)
                    unshown = None
                    due = max(due + period, now)
                else:
                    unshown = frame
                    if not self.recording:
                        self._stop.wait(min(period, due - now))
        except KitError as exc:
            if not self._stop.is_set():
                self.error = f"{type(exc).__name__}: {exc}"
                self._status.value = self.error
        except Exception as exc:  # noqa: BLE001 - a detector's bug: shown, never a silent dead thread
            self.error = f"the detector or display failed: {type(exc).__name__}: {exc}"
            self._status.value = self.error
        finally:
            with self._lock:
                self._record_for = None
            self._show_counts()
            if not self._stop.is_set():   # ended by itself: the button shows it
                self._play.value = False
