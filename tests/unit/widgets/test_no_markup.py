"""No hand-written SVG or HTML in the package: charts are plotly's, tables itables' (DESIGN principle 11)."""

from __future__ import annotations

import re
from pathlib import Path

import kit

ROOT = Path(kit.__file__).parent
TAGS = "svg|circle|rect|path|line|text|g|table|thead|tbody|tr|td|th|span|div|p|b|i|br|ul|li|style|html|body"
#: markup being built: a closing tag, an opening tag with attributes, or a character reference
BUILT = re.compile(rf"</({TAGS})>|<({TAGS})\s+[\w:-]+\s*=|&#\d+;|&(lt|gt|amp|quot|nbsp);", re.IGNORECASE)


def _sources() -> list[Path]:
    found = sorted(p for p in ROOT.rglob("*") if p.is_file() and p.suffix in {".py", ".html", ".svg", ".j2",
                                                                             ".jinja", ".css", ".js"})
    assert len(found) > 50, "the package's sources were not found"
    return found


def test_no_svg_anywhere_in_the_package() -> None:
    with_svg = [str(p.relative_to(ROOT)) for p in _sources() if "<svg" in p.read_text(errors="replace")]
    assert with_svg == []


def test_no_markup_built_by_hand() -> None:
    hits = []
    for path in _sources():
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if BUILT.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert hits == []


def test_widgets_show_no_html_widget_and_escape_nothing() -> None:
    # an ipywidgets HTML widget is where hand-written markup goes; html.escape is its tell-tale
    for path in (ROOT / "widgets").glob("*.py"):
        text = path.read_text()
        assert not re.search(r"\b(w|widgets|ipywidgets)\.HTML(Math)?\(", text), path.name
        assert "html.escape" not in text or path.name == "charts.py", path.name  # plotly's hover text


def test_the_pattern_finds_what_the_old_renderers_wrote() -> None:
    # the renderers this replaced: kit/fhir/timeline.py's SVG and kit/widgets/dicom.py's table
    old = ['out.append(f\'<circle cx="{x:.1f}" cy="{y}" r="5" fill="{c}">\')',
           "return f\"<table class='kit-table'><thead><tr>{head}</tr></thead></table>\"",
           "f\"<span style='color:rgb{c}'>&#9632;</span> {label}\"",
           "self._summary.value = f\"<b>{label}</b>: {n} events\""]
    assert all(BUILT.search(line) for line in old)
    # what is not markup: docstrings naming a placeholder
    assert not BUILT.search("one <table>.parquet each") and not BUILT.search("``hl7.<table>`` per table")
