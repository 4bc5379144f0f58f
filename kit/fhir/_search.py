"""The search methods of :class:`kit.fhir.client.FhirClient` (a mixin: the paging itself is
:func:`kit.fhir._paging.page_entries`; the HTTP, the client's)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from kit._truncate import check_limit, warn_truncated
from kit.errors import InvalidInputError
from kit.fhir._paging import MAX_PAGES, MAX_RESOURCES, Params, SearchEntry, SearchMode, page_entries
from kit.fhir._paging import check_type as _check_type
from kit.fhir._paging import normalise_params as _normalise_params

if TYPE_CHECKING:
    from collections.abc import Sequence

    import httpx
    import polars as pl

    from kit.fhir.vendors import VendorProfile

__all__ = ["Searching", "check_bound"]

log = logging.getLogger("kit.fhir.client")


def check_bound(name: str, value: int) -> int:
    """``value`` if it is a positive int, else :class:`~kit.errors.InvalidInputError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidInputError(f"{name} must be a positive int, got {value!r}")
    return value


class Searching:
    """Search across pages: :meth:`search_entries` and the three shapes built on it.

    The client's ``max_pages`` and ``max_resources`` bound every search (a server that pages
    without end: :class:`~kit.fhir._paging.PagingLimitError`).
    """

    max_pages: int = MAX_PAGES
    max_resources: int = MAX_RESOURCES
    # what the client brings (kit.fhir.client.FhirClient)
    base: str
    profile: VendorProfile
    rewrite_next_links: bool

    if TYPE_CHECKING:
        def send(self, method: str, url: str, *,
                 params: Sequence[tuple[str, str]] | None = None) -> httpx.Response: ...

        def resource_of(self, response: httpx.Response,
                        resource_type: str | None = None) -> dict[str, Any]: ...

        def url(self, *parts: str) -> str: ...

    def search_entries(self, resource_type: str, params: Params | None = None, /, *,
                       limit: int | None = None, max_results: int | None = None,
                       **kwargs: Any) -> Iterator[SearchEntry]:
        """Search, following every ``next`` link; yield each entry with its search mode.

        Parameters
        ----------
        resource_type : str
            E.g. ``"Patient"``.
        params : mapping or sequence of pairs, optional
            Search parameters. A list value repeats the parameter (AND); join
            values with commas for OR. Dates and aware datetimes are formatted.
        limit : int, optional
            Stop paging after this many ``match`` entries (the rest of that
            page's ``include`` entries still come); when that cut the result, a
            :class:`~kit.errors.TruncatedResultWarning` is issued and logged.
        max_results : int, optional
            The former name of ``limit``.
        **kwargs
            More parameters (``_count=50``, ``_include="ImagingStudy:subject"``).

        Yields
        ------
        SearchEntry
            ``match`` and ``include`` entries (includes repeated across pages once).
            ``outcome`` warnings are logged; an ``outcome`` with an error or fatal
            issue raises :class:`~kit.errors.OperationOutcomeError`.

        Raises
        ------
        IncompleteResultError
            The server counts more matches (``Bundle.total``) than it sent, gives
            no ``next`` link and does not page with ``_offset`` either: never a
            silently partial result.
        PagingLimitError
            The search went on past the client's ``max_pages`` pages or
            ``max_resources`` entries, with no ``limit`` to stop it sooner.
        """
        _check_type(resource_type)
        if limit is not None and max_results is not None and limit != max_results:
            raise InvalidInputError("give limit or max_results (the same thing), not both")
        limit = check_limit(limit if limit is not None else max_results)
        query = _normalise_params(params, kwargs)
        names = {n.split(":")[0] for n, _ in query}
        for required in self.profile.required_search_params:
            if required not in names:
                raise InvalidInputError(f"{self.profile.display_name} needs the search parameter "
                                        f"{required!r} on every search")
        query = [(n, self._cap_count(v)) if n == "_count" else (n, v) for n, v in query]
        if limit == 0:
            return

        def get_bundle(url: str, params: list[tuple[str, str]] | None) -> dict[str, Any]:
            return self.resource_of(self.send("GET", url, params=params), "Bundle")

        left_out = yield from page_entries(get_bundle, resource_type, query, url=self.url(resource_type),
                                           base=self.base, limit=limit,
                                           rewrite_next_links=self.rewrite_next_links,
                                           max_pages=self.max_pages, max_resources=self.max_resources)
        if left_out is not None and limit is not None:
            warn_truncated(f"FHIR search {resource_type}", limit, left_out)

    def search(self, resource_type: str, params: Params | None = None, /, *,
               limit: int | None = None, max_results: int | None = None,
               **kwargs: Any) -> Iterator[dict[str, Any]]:
        """Search, following every ``next`` link; yield the resources (matches and includes).

        See :meth:`search_entries` for the parameters and to tell matches from
        ``_include``/``_revinclude`` resources.
        """
        for entry in self.search_entries(resource_type, params, limit=limit, max_results=max_results,
                                         **kwargs):
            yield entry.resource

    def search_frame(self, resource_type: str, params: Params | None = None, /, *,
                     limit: int | None = None, max_results: int | None = None,
                     **kwargs: Any) -> pl.DataFrame:
        """Search across all pages and return the matching resources as a DataFrame.

        Columns are those of :func:`kit.fhir.frames.to_frame` for
        ``resource_type`` (``patient_id``, ``study_instance_uid``, ...);
        included resources are left out (see :meth:`search_frames`).
        """
        from kit.fhir.frames import to_frame

        resources = [e.resource for e in self.search_entries(
            resource_type, params, limit=limit, max_results=max_results, **kwargs)
            if e.mode is SearchMode.MATCH]
        return to_frame(resources, resource_type)

    def search_frames(self, resource_type: str, params: Params | None = None, /, *,
                      limit: int | None = None, max_results: int | None = None,
                      **kwargs: Any) -> dict[str, pl.DataFrame]:
        """Like :meth:`search_frame` but one frame per resource type, includes too."""
        from kit.fhir.frames import to_frame

        by_type: dict[str, list[dict[str, Any]]] = {resource_type: []}
        for e in self.search_entries(resource_type, params, limit=limit, max_results=max_results,
                                     **kwargs):
            by_type.setdefault(e.resource["resourceType"], []).append(e.resource)
        return {t: to_frame(rs, t) for t, rs in by_type.items()}

    def _cap_count(self, value: str) -> str:
        try:
            count = int(value)
        except ValueError:
            raise InvalidInputError(f"_count must be an integer, got {value!r}") from None
        if count > self.profile.max_count:
            log.info("_count %d capped to %d for %s", count, self.profile.max_count, self.profile.name)
            count = self.profile.max_count
        return str(count)
