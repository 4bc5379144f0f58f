"""Interactive tables for the widgets: itables' ``ITable`` widget (DataTables) over polars frames.

Every table a widget shows goes through :func:`data_table`, so all of them
behave alike: sortable by any column, a search box, a Copy/CSV button, text
that can be selected and copied, identifiers whole (no wrapping or ellipsis,
the table scrolls sideways instead) and every row kept (itables' downsampling
of large frames is switched off). Nothing is written as HTML here: itables
renders the frame. itables is imported when a table is built, not at
``import kit``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import polars as pl

if TYPE_CHECKING:
    from itables.widget import ITable

__all__ = ["TABLE_OPTIONS", "data_table", "displayable", "set_table"]

#: The DataTables options every kit table uses (see https://itables.org/options).
TABLE_OPTIONS: Final[dict[str, Any]] = {
    "maxBytes": 0,  # never downsample: a table shows every row and column it is given
    "classes": "display nowrap compact",  # nowrap: a UID stays on one line, whole
    "scrollX": True,
    "buttons": ["copyHtml5", "csvHtml5"],
    "layout": {"topStart": "buttons", "topEnd": "search", "bottomStart": "info", "bottomEnd": "paging"},
    "lengthMenu": [10, 25, 100, -1],
    "showIndex": False,
    "allow_html": False,  # cells are text, escaped by itables
}


def displayable(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with nested and binary columns as text, so every cell shows as written.

    Lists become their items joined by ``", "``, structs their JSON, binary its
    hex; other columns are kept as they are (identifiers stay strings).
    """
    exprs = []
    for name, dtype in frame.schema.items():
        col = pl.col(name)
        if isinstance(dtype, pl.List | pl.Array):
            inner = col.cast(pl.List(dtype.inner)) if isinstance(dtype, pl.Array) else col
            exprs.append(inner.list.eval(pl.element().cast(pl.String)).list.join(", ").alias(name))
        elif isinstance(dtype, pl.Struct):
            exprs.append(col.struct.json_encode().alias(name))
        elif isinstance(dtype, pl.Binary):
            exprs.append(col.bin.encode("hex").alias(name))
        elif isinstance(dtype, pl.Object | pl.Null):
            exprs.append(col.cast(pl.String).alias(name) if isinstance(dtype, pl.Null)
                         else col.map_elements(str, return_dtype=pl.String).alias(name))
    return frame.with_columns(exprs) if exprs else frame


def data_table(frame: pl.DataFrame, *, caption: str | None = None, select: bool = False) -> ITable:
    """An interactive table widget over ``frame`` (see the module docstring).

    Parameters
    ----------
    frame : polars.DataFrame
        What to show; its ``df`` attribute keeps the frame shown.
    caption : str, optional
        Shown under the table.
    select : bool
        Let the user pick one row (``selected_rows`` then holds its index).

    Returns
    -------
    itables.widget.ITable
    """
    from itables.widget import ITable

    options = dict(TABLE_OPTIONS)
    if select:
        options["select"] = {"style": "single"}
    return ITable(displayable(frame), caption=caption, **options)


def set_table(table: ITable, frame: pl.DataFrame) -> None:
    """Show ``frame`` in ``table`` (a :func:`data_table`), keeping its options; clears the selection."""
    table.update(displayable(frame), selected_rows=[])
