"""Transactions and batches larger than a server takes: split into chunks, references kept.

Servers cap the entries of one transaction (HAPI's default, a hospital's 50).
:func:`transaction_in_chunks` posts transactions of at most ``size`` entries:
entries that others reference by ``urn:uuid:``/``urn:oid:`` ``fullUrl`` go
first (a stable topological order), and after each chunk the later chunks'
references to it are rewritten to the ``Type/id`` the server assigned (read
from ``entry.response.location``). Each chunk is all-or-nothing; the whole is
not: a failed chunk raises, saying how many entries earlier chunks committed.

:func:`size_hint` adds what to try (``--chunk N`` / ``--batch``) to a server's
refusal of a Bundle for its size. Written by hand: no FHIR client library splits
transactions.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kit.errors import FhirError, InvalidInputError, KitError

if TYPE_CHECKING:
    from kit.fhir.client import FhirClient

__all__ = ["batch_in_chunks", "order_entries", "rewrite_references", "size_hint",
           "transaction_in_chunks"]

_SIZE_WORDS = re.compile(r"too many|than allowed|exceed|maximum|max(imum)? (number|size)|limit",
                         re.IGNORECASE)
_NUMBER = re.compile(r"\b(\d{1,6})\b")
_URN = ("urn:uuid:", "urn:oid:")


def _urns(value: Any, out: set[str]) -> set[str]:
    if isinstance(value, str):
        if value.startswith(_URN):
            out.add(value)
    elif isinstance(value, Mapping):
        for v in value.values():
            _urns(v, out)
    elif isinstance(value, list):
        for v in value:
            _urns(v, out)
    return out


def order_entries(entries: Sequence[Mapping[str, Any]]) -> list[int]:
    """Indexes of ``entries`` with every referenced ``urn:`` entry before those referring to it.

    Stable (otherwise the Bundle's order). A cycle of ``urn:`` references cannot be split
    and raises :class:`~kit.errors.InvalidInputError`.
    """
    by_url = {str(e["fullUrl"]): n for n, e in enumerate(entries)
              if isinstance(e.get("fullUrl"), str) and str(e["fullUrl"]).startswith(_URN)}
    needs = [{by_url[u] for u in _urns(e.get("resource"), set()) if u in by_url} - {n}
             for n, e in enumerate(entries)]
    users: dict[int, list[int]] = {}
    for n, deps in enumerate(needs):
        for d in deps:
            users.setdefault(d, []).append(n)
    waiting = [len(d) for d in needs]
    ready = [n for n, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        n = heapq.heappop(ready)
        order.append(n)
        for u in users.get(n, ()):
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) < len(entries):
        stuck = [str(entries[n].get("fullUrl")) for n, w in enumerate(waiting) if w][:3]
        raise InvalidInputError(f"entries refer to each other in a cycle ({', '.join(stuck)}): "
                                "they cannot be split across transactions")
    return order


def rewrite_references(value: Any, mapping: Mapping[str, str]) -> Any:
    """``value`` with every string equal to a key of ``mapping`` replaced by its value."""
    if isinstance(value, str):
        return mapping.get(value, value)
    if isinstance(value, Mapping):
        return {k: rewrite_references(v, mapping) for k, v in value.items()}
    if isinstance(value, list):
        return [rewrite_references(v, mapping) for v in value]
    return value


def size_hint(exc: KitError, entries: int, kind: str = "transaction") -> KitError:
    """``exc`` with what to try appended when it is a refusal of a Bundle for its size."""
    status = getattr(exc, "status_code", None)
    text = str(exc)
    if entries < 2 or status not in (400, 403, 413, 422) or (
            status != 413 and not _SIZE_WORDS.search(text)):
        return exc
    numbers = [int(n) for n in _NUMBER.findall(text) if 0 < int(n) < entries and int(n) != status]
    size = max(numbers) if numbers else max(1, entries // 2)
    hint = (f"the server refused a {kind} of {entries} entries for its size: try --chunk {size} "
            f"(FhirClient.transaction(..., chunk={size}))")
    hint += " or --batch" if kind == "transaction" else ""
    exc.args = (f"{exc.args[0] if exc.args else text}; {hint}", *exc.args[1:])
    return exc


def _type_id(location: Any) -> str | None:
    """``Type/id`` of a response location (``[base/]Type/id[/_history/v]``)."""
    if not isinstance(location, str):
        return None
    parts = location.split("?")[0].strip("/").split("/")
    if "_history" in parts:
        parts = parts[:parts.index("_history")]
    return "/".join(parts[-2:]) if len(parts) >= 2 else None


def _chunks(order: list[int], size: int) -> list[list[int]]:
    if size < 1:
        raise InvalidInputError(f"chunk must be >= 1, got {size}")
    return [order[i:i + size] for i in range(0, len(order), size)]


def transaction_in_chunks(client: FhirClient, entries: Sequence[Mapping[str, Any]], size: int, *,
                          validate: bool = False) -> dict[str, Any]:
    """Post ``entries`` as transactions of at most ``size`` entries; one transaction-response.

    The response's entries are in the order of ``entries``. ``urn:`` references
    across chunks are rewritten to the ``Type/id`` the server assigned.
    """
    parts = _chunks(order_entries(entries), size)
    assigned: dict[str, str] = {}
    responses: dict[int, Any] = {}
    done = 0
    for number, part in enumerate(parts, 1):
        items = [rewrite_references(dict(entries[n]), assigned) for n in part]
        # an entry's own fullUrl stays as it is: the server resolves it within the chunk
        for item, n in zip(items, part, strict=True):
            if "fullUrl" in entries[n]:
                item["fullUrl"] = entries[n]["fullUrl"]
        try:
            result = client.transaction(items, validate=validate)
        except KitError as exc:
            if done:
                exc.args = (f"transaction chunk {number} of {len(parts)} failed ({done} entries were "
                            f"committed by earlier chunks): {exc.args[0] if exc.args else exc}",
                            *exc.args[1:])
            raise
        answered = result.get("entry") or []
        if len(answered) != len(items):
            raise FhirError(f"transaction chunk {number}: {len(items)} entries sent, "
                            f"{len(answered)} answered", peer=client.base)
        for n, answer in zip(part, answered, strict=True):
            responses[n] = answer
            url = entries[n].get("fullUrl")
            if isinstance(url, str) and url.startswith(_URN):
                where = _type_id((answer.get("response") or {}).get("location"))
                if where is None:
                    raise FhirError(f"transaction chunk {number}: no response.location for {url}, "
                                    "so later references to it cannot be resolved", peer=client.base)
                assigned[url] = where
        done += len(part)
    return {"resourceType": "Bundle", "type": "transaction-response",
            "entry": [responses[n] for n in range(len(entries))]}


def batch_in_chunks(client: FhirClient, entries: Sequence[Mapping[str, Any]], size: int, *,
                    check: bool = True) -> dict[str, Any]:
    """Post ``entries`` as batches of at most ``size`` entries; one batch-response in their order."""
    answered: list[Any] = []
    for part in _chunks(list(range(len(entries))), size):
        answered.extend(client.batch([entries[n] for n in part], check=check).get("entry") or [])
    return {"resourceType": "Bundle", "type": "batch-response", "entry": answered}
