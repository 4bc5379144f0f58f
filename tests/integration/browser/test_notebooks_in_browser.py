"""Every notebook, opened in JupyterLab in Debian's chromium: runs, shows its widgets, answers.

For each notebook: open it, run every cell through JupyterLab's Run menu commands, in two goes
("Run All Above Selected Cell" with the last code cell selected, then "Run Selected Cell and All
Below": the last cell is the clean-up that stops the notebook's stack, and the widgets must be
tried while it runs), wait for the kernel to go idle each time, and check. (A notebook with a
"watch" step runs its first go in two: up to the watched cell, until the browser shows its widget,
then the rest above the clean-up with "Run Selected Cells".)

- no error output (no error outputs in the notebook, no stderr output with a Traceback) and
  every code cell ran,
- every widget output rendered as a widget in the DOM (not "Loading widget...", not an
  "Error displaying widget", not the text fallback),
- the interactions below change what is shown (driven through the widgets' DOM, before the
  clean-up).

The notebook the README's open line names is opened exactly as that line opens it (the page
``jupyter lab <notebook>`` writes for a browser); the others by their JupyterLab URL, each in a
fresh workspace. Screenshots land in the test's temporary folder.

The per-notebook interactions are data (``INTERACTIONS``), so the selectors can follow the
widgets: ``cell`` is a piece of the source of the cell whose widget output is meant (the first
such cell with a widget output), selectors are CSS inside that output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.integration.browser.conftest import Lab, readme_open_line

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@dataclass(frozen=True)
class Step:
    """One thing a user does to a widget, and what must change on screen.

    do: "slide" (one step of a slider by keyboard), "select" (another option, or the one whose
    label contains ``arg``), "click" (the button named ``arg``), "tick_only" (tick exactly the
    checkboxes named in ``arg``, comma-separated), "watch" (nothing: ``watch`` is sampled while
    the notebook runs and must show at least ``arg`` different values), "colour" (nothing: the
    image ``watch`` must show at least ``arg`` coloured pixels, e.g. a mask over a greyscale CT).
    watch/prop: the element (CSS inside the output; ":scope" is the output itself) and what of
    it must change: "src", "text" or "value"; watch_cell: watch another cell's widget (e.g. a
    viewer that follows a browser). expect: a (JavaScript) regex the new value must match.
    """

    cell: str
    do: str
    control: str = ""
    arg: str = ""
    watch: str | None = None
    prop: str = "text"
    expect: str = ""
    watch_cell: str = ""


INTERACTIONS: dict[str, tuple[Step, ...]] = {
    "00_quickstart.ipynb": (
        Step("ImageViewer(", "slide", ".widget-slider", watch="img", prop="src"),),
    "01_pacs_ingest.ipynb": (
        Step("StudyBrowser(", "select", ".widget-dropdown select", watch=":scope"),
        # the viewer follows the browser: the study picked above is shown in the viewer's cell
        Step("StudyBrowser(", "select", ".widget-dropdown select", watch="img", prop="src",
             watch_cell="ImageViewer("),),
    "02_ehr_fhir.ipynb": (
        Step("PatientTimeline(", "select", ".widget-dropdown select", watch=":scope"),),
    "03_hl7_feeds.ipynb": (
        Step("StoreCounter(", "watch", arg="3", watch="input", prop="value"),),
    "04_endoscopy.ipynb": (
        # play/pause: the live stream plays in the viewer, the frame shown changes
        Step("FrameViewer(", "click", arg="play", watch="img", prop="src"),),
    "05_analyze_and_report_back.ipynb": (
        Step("MaskOverlay(", "colour", arg="20", watch="img"),
        Step("MaskOverlay(", "slide", ".widget-slider", watch="img", prop="src"),
        Step("ResultReview(", "tick_only", ".widget-checkbox", arg="oru"),
        Step("ResultReview(", "click", arg="Send", watch=":scope",
             expect=r"sent: 1 verified[\s\S]*\toru\tverified"),
    ),
    # the dashboard follows the monitor live: the alert raised when MLLP goes down, then resolved
    "06_services_and_monitoring.ipynb": (
        Step("MonitorDashboard(", "watch", arg="2", watch=":scope", prop="text"),),
    # the exported dataset's de-identified images: another study picked, the viewer follows
    "07_research_dataset.ipynb": (
        Step("StudyBrowser(", "select", ".widget-dropdown select", watch="img", prop="src",
             watch_cell="ImageViewer("),),
}

NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
OPEN_TIMEOUT_MS = 90_000
RUN_TIMEOUT_MS = 150_000  # one notebook, Run All to idle
STEP_TIMEOUT_MS = 60_000
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"

# --- JavaScript run in the page (JupyterLab exposes its application as window.jupyterapp) ---
JS_READY = """() => { const app = window.jupyterapp; const w = app && app.shell.currentWidget;
  if (!w || !w.sessionContext || !w.content || !w.context.isReady) return false;
  const k = w.sessionContext.session && w.sessionContext.session.kernel;
  return !!k && k.status === 'idle' && k.connectionStatus === 'connected'; }"""
JS_PATH = "() => window.jupyterapp.shell.currentWidget.context.path"
# Run every cell in two goes around the interactions: all cells above the last code cell (the
# clean-up, which stops the notebook's stack), then that cell and the rest. ``at`` (not null)
# stops the first go above that cell instead; part "selected" then runs the cells from ``at``
# up to the last code cell (Run Selected Cells). Returns the last code cell's index.
JS_RUN = """([part, at]) => { const nb = window.jupyterapp.shell.currentWidget.content; let last = -1;
  nb.widgets.forEach((c, i) => {
    if (c.model.type === 'code' && c.model.sharedModel.getSource().trim()) last = i; });
  nb.activeCellIndex = at === null ? last : at; window.__kitRun = 'running';
  if (part === 'selected') { nb.deselectAll(); nb.extendContiguousSelectionTo(last - 1); }
  window.jupyterapp.commands.execute({above: 'notebook:run-all-above', rest: 'notebook:run-all-below',
                                      selected: 'notebook:run-cell'}[part])
    .then(ok => { window.__kitRun = ok ? 'done' : 'failed'; }, e => { window.__kitRun = 'error: ' + e; });
  return last; }"""
# The index of the first cell whose source holds `needle`.
JS_CELL = """(needle) => window.jupyterapp.shell.currentWidget.content.widgets
  .findIndex(c => c.model.sharedModel.getSource().includes(needle))"""
JS_RUN_FINISHED = """() => { if (window.__kitRun === 'running') return false;
  const k = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
  return k.status === 'idle'; }"""
# Errors by the notebook model: error outputs, tracebacks on stderr, code cells never run.
JS_ERRORS = """(upto) => { const errs = [];
  window.jupyterapp.shell.currentWidget.content.widgets.forEach((cell, i) => {
    if (cell.model.type !== 'code') return;
    const src = cell.model.sharedModel.getSource();
    if (src.trim() && cell.model.executionCount === null && (upto < 0 || i < upto))
      errs.push(`cell ${i} never ran: ${src.slice(0, 80)}`);
    for (const o of cell.model.outputs.toJSON()) {
      if (o.output_type === 'error') errs.push(`cell ${i}: ${o.ename}: ${o.evalue}`);
      const text = Array.isArray(o.text) ? o.text.join('') : (o.text || '');
      if (o.output_type === 'stream' && o.name === 'stderr' && /Traceback/.test(text))
        errs.push(`cell ${i} stderr: ${text.slice(-400)}`);
    } });
  for (const el of document.querySelectorAll(
      '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'))
    if (/Traceback/.test(el.innerText)) errs.push('shown: ' + el.innerText.slice(-400));
  return errs; }"""
# A cell's widget outputs as DOM elements: its output area holds one child per model output.
_WIDGET_OUTPUTS = """const widgetOutputs = (cell, mime) => {
  if (cell.model.type !== 'code') return [];
  const shown = [...cell.outputArea.node.children].filter(c => c.classList.contains('jp-OutputArea-child'));
  return cell.model.outputs.toJSON().map((o, k) => (o.data && o.data[mime]) ? k : -1).filter(k => k >= 0)
    .map(k => shown[k] ? shown[k].querySelector('.jp-OutputArea-output') : null); };"""
# Every widget output in the model, and how it rendered in the DOM.
JS_WIDGETS = "(mime) => { " + _WIDGET_OUTPUTS + """
  const found = [];
  window.jupyterapp.shell.currentWidget.content.widgets.forEach((cell, i) => {
    for (const o of widgetOutputs(cell, mime)) found.push(o === null
      ? {cell: i, widget: false, text: '(not shown)'}
      : {cell: i, text: o.innerText.slice(0, 200),
      widget: !!o.querySelector('[class*="widget-"]') || [...o.querySelectorAll('.jupyter-widgets')]
        .some(e => e.childElementCount > 0 || e.tagName === 'IMG')}); });
  return found; }"""
# Mark the first widget output of the first cell whose source holds `needle`; the cell's index.
JS_MARK_OUTPUT = "([needle, mime]) => { " + _WIDGET_OUTPUTS + """
  const cells = window.jupyterapp.shell.currentWidget.content.widgets;
  const i = cells.findIndex(c => c.model.sharedModel.getSource().includes(needle)
    && widgetOutputs(c, mime)[0]);
  if (i >= 0) widgetOutputs(cells[i], mime)[0].setAttribute('data-kit-output', String(i));
  return i; }"""
# While the notebook runs: sample `prop` of `selector` in the widget of the cell holding `needle`.
JS_SAMPLE = "([needle, selector, prop, mime]) => { " + _WIDGET_OUTPUTS + """
  window.__kitSeen = [];
  window.__kitSampler = setInterval(() => {
    const w = window.jupyterapp.shell.currentWidget; if (!w) return;
    for (const cell of w.content.widgets) {
      if (!cell.model.sharedModel.getSource().includes(needle)) continue;
      const out = widgetOutputs(cell, mime)[0];
      const el = out && (selector === ':scope' ? out : out.querySelector(selector));
      if (!el) continue;
      const v = prop === 'src' ? el.getAttribute('src') : prop === 'value' ? el.value : el.innerText;
      if (window.__kitSeen[window.__kitSeen.length - 1] !== v) window.__kitSeen.push(v);
      return; } }, 15); }"""
# Pixels of an <img> whose red, green and blue differ by more than 40: colour over grey.
JS_COLOURED = """async (img) => {
  await Promise.race([img.decode(), new Promise((_, no) => setTimeout(() => no('not decoded'), 10000))]);
  const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight; const g = c.getContext('2d');
  g.drawImage(img, 0, 0); const d = g.getImageData(0, 0, c.width, c.height).data; let n = 0;
  for (let k = 0; k < d.length; k += 4)
    if (Math.max(d[k], d[k + 1], d[k + 2]) - Math.min(d[k], d[k + 1], d[k + 2]) > 40) n += 1;
  return n; }"""
JS_SAMPLED = "() => { clearInterval(window.__kitSampler); return window.__kitSeen || []; }"


def test_every_notebook_has_an_interaction() -> None:
    """A notebook without an entry in INTERACTIONS would be opened but never touched."""
    assert NOTEBOOKS, "no notebooks found"
    assert sorted(INTERACTIONS) == NOTEBOOKS, "INTERACTIONS must name exactly the notebooks in notebooks/"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_renders_and_answers(name: str, browser: Any, lab: Lab, tmp_path: Path) -> None:
    readme_notebook = Path(readme_open_line().notebook).name
    steps = INTERACTIONS.get(name)
    assert steps, f"add {name}'s interaction to INTERACTIONS"
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(STEP_TIMEOUT_MS)
    try:
        if name == readme_notebook:  # as `jupyter lab <notebook>` opens it for a browser
            page.goto(lab.open_url)
            page.wait_for_url(lab.url + "**", timeout=OPEN_TIMEOUT_MS)
        else:
            page.goto(lab.notebook_url(name, workspace=f"kit-{Path(name).stem}"))
        _wait(page, JS_READY, None, OPEN_TIMEOUT_MS, f"{name}: notebook open with an idle kernel", lab)
        assert Path(page.evaluate(JS_PATH)).name == name

        watched = [s for s in steps if s.do == "watch"]
        assert len(watched) <= 1, "one sampler per page: one watch step per notebook"
        rest: list[Any] = ["above", None]  # every cell above the clean-up
        for step in watched:
            page.evaluate(JS_SAMPLE, [step.cell, step.watch, step.prop, WIDGET_MIME])
            # run up to the watched cell and wait until the browser shows its widget, then the
            # rest: a browser slow to draw (a loaded machine) must not miss what changes next
            cell = page.evaluate(JS_CELL, step.cell)
            assert cell >= 0, f"{name}: no cell holds {step.cell!r}"
            last = page.evaluate(JS_RUN, ["above", cell + 1])
            assert cell < last, f"{name}: the watched cell {step.cell!r} is the clean-up"
            _wait(page, JS_RUN_FINISHED, None, RUN_TIMEOUT_MS, f"{name}: cells run up to {step.cell}", lab)
            _wait(page, "() => window.__kitSeen.length > 0", None, STEP_TIMEOUT_MS,
                  f"{name}: {step.cell} shown", lab)
            rest = ["selected", cell + 1] if cell + 1 < last else []
        if rest:
            last = page.evaluate(JS_RUN, rest)
            _wait(page, JS_RUN_FINISHED, None, RUN_TIMEOUT_MS, f"{name}: cells run, kernel idle", lab)
        page.screenshot(path=tmp_path / f"{Path(name).stem}-ran.png")

        errors = page.evaluate(JS_ERRORS, last)
        assert not errors, f"{name}: errors after running the cells:\n" + "\n".join(errors)
        _wait(page, f"(mime) => ({JS_WIDGETS})(mime).every(w => w.widget)", WIDGET_MIME,
              STEP_TIMEOUT_MS, None, lab)  # views render just after their outputs arrive
        widgets = page.evaluate(JS_WIDGETS, WIDGET_MIME)
        assert widgets, f"{name}: no widget output at all"
        broken = [w for w in widgets
                  if not w["widget"] or re.search(r"Loading widget|Error displaying widget", w["text"])]
        assert not broken, f"{name}: widgets that did not render: {broken}"

        for n, step in enumerate(steps):
            _interact(page, step, name, tmp_path / f"{Path(name).stem}-{n}-{step.do}.png")

        page.evaluate(JS_RUN, ["rest", None])  # the clean-up
        _wait(page, JS_RUN_FINISHED, None, RUN_TIMEOUT_MS, f"{name}: clean-up run, kernel idle", lab)
        errors = page.evaluate(JS_ERRORS, -1)
        assert not errors, f"{name}: errors in the clean-up:\n" + "\n".join(errors)
    finally:
        page.close()
        context.close()
        lab.shutdown_sessions()  # each notebook's kernel (and the stack it started) goes now


def _wait(page: Any, js: str, arg: Any, timeout_ms: int, what: str | None, lab: Lab) -> None:
    """Wait until ``js`` is true in the page; fail saying ``what`` (None: the caller checks)."""
    try:
        page.wait_for_function(js, arg=arg, timeout=timeout_ms, polling=200)
    except Exception as exc:  # playwright's TimeoutError (playwright may not be importable here)
        if what is not None:
            log = lab.log.read_text(encoding="utf-8", errors="replace")[-2000:]
            raise AssertionError(f"not within {timeout_ms / 1000:g}s: {what}\n"
                                 f"JupyterLab log:\n{log}") from exc


def _interact(page: Any, step: Step, name: str, shot: Path) -> None:
    if step.do == "watch":
        seen = page.evaluate(JS_SAMPLED)
        assert len(set(seen)) >= int(step.arg), (
            f"{name}: {step.cell} showed {seen} while the notebook ran; want {step.arg} different values")
        return
    out = _widget_output(page, step.cell, name)
    shown = _widget_output(page, step.watch_cell, name) if step.watch_cell else out
    target = None if step.watch is None else \
        shown if step.watch == ":scope" else shown.locator(step.watch).first
    before = None if target is None else _prop(target, step.prop)
    if step.do == "slide":
        handle = out.locator(step.control).first.locator(".noUi-handle").first
        now, low = handle.get_attribute("aria-valuenow"), handle.get_attribute("aria-valuemin")
        handle.focus()
        handle.press("ArrowLeft" if float(now or 0) > float(low or 0) else "ArrowRight")
    elif step.do == "select":
        select = out.locator(step.control).first
        labels = select.locator("option").all_inner_texts()
        assert len(labels) > 1, f"{name}: {step.cell} offers one option only: {labels}"
        if step.arg:
            select.select_option(label=next(lbl for lbl in labels if step.arg in lbl))
        else:
            current = select.evaluate("el => el.selectedIndex")
            select.select_option(index=(current + 1) % len(labels))
    elif step.do == "click":
        out.get_by_role("button", name=step.arg).click()
    elif step.do == "colour":
        assert target is not None
        coloured = target.evaluate(JS_COLOURED)
        out.screenshot(path=shot)
        assert coloured >= int(step.arg), f"{name}: {step.cell} shows {coloured} coloured pixels"
        return
    elif step.do == "tick_only":
        wanted = {t.strip() for t in step.arg.split(",")}
        boxes = out.locator(step.control)
        assert boxes.count() > 0, f"{name}: no {step.control} in {step.cell}"
        for k in range(boxes.count()):
            box = boxes.nth(k)
            box.locator("input[type=checkbox]").set_checked(box.inner_text().strip() in wanted)
    else:
        raise AssertionError(f"unknown step {step.do!r}")
    if target is not None:
        try:  # the watched part changes (and, with `expect`, ends up matching it)
            page.wait_for_function(
                "([el, prop, before, expect]) => { const now = prop === 'src' ? el.getAttribute('src') :"
                " prop === 'value' ? el.value : el.innerText;"
                " return now !== before && (!expect || new RegExp(expect).test(now)); }",
                arg=[target.element_handle(), step.prop, before, step.expect],
                timeout=STEP_TIMEOUT_MS, polling=100)
        except Exception as exc:  # playwright's TimeoutError: say what is shown instead
            raise AssertionError(f"{name}: {step.do} in {step.cell} changed nothing (or not to "
                                 f"{step.expect!r}); shown: {_prop(target, step.prop)!r}") from exc
        finally:
            out.screenshot(path=shot)
    else:
        out.screenshot(path=shot)


def _widget_output(page: Any, needle: str, name: str) -> Any:
    index = page.evaluate(JS_MARK_OUTPUT, [needle, WIDGET_MIME])
    assert index >= 0, f"{name}: no cell with a widget output whose source holds {needle!r}"
    out = page.locator(f'[data-kit-output="{index}"]')
    out.scroll_into_view_if_needed()
    return out


def _prop(locator: Any, prop: str) -> str | None:
    value = locator.evaluate("(el, prop) => prop === 'src' ? el.getAttribute('src') : "
                             "prop === 'value' ? el.value : el.innerText", prop)
    return None if value is None else str(value)
