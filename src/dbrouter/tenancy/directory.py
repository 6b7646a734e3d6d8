"""Which tenants exist: validating ids, static tenants, and a cached async catalog.

A tenant id is checked against the configured pattern and the reserved names before it
is used for anything; only then is it looked up. Unknown ids are remembered for a while,
so a flood of them does not reach the catalog.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol, runtime_checkable

from ..errors import ConfigurationError, TenantResolutionError, UnknownTenantError
from ..events import EventBus, TenantLookedUp
from ..settings import NO_OVERRIDES, TenancySettings, TenantSettings
from ..singleflight import SingleFlight

__all__ = ["Answers", "ListingTenantCatalog", "TenantCatalog", "TenantDirectory", "is_reserved"]

TenantCatalog = Callable[[str], Awaitable[TenantSettings | None]]
"""An async function that looks a tenant id up (in a ``tenants`` table, a service...) and
returns its settings, or None when there is no such tenant.

A catalog that can also enumerate its tenants (for ``dbrouter tenants list`` and fleet
migrations) is an object with an async ``list_tenants()`` method besides ``__call__``: see
`ListingTenantCatalog`."""


@runtime_checkable
class ListingTenantCatalog(Protocol):
    """A tenant catalog that lists its tenants as well as looking them up."""

    async def __call__(self, tenant: str) -> TenantSettings | None:
        """The settings of *tenant*, or None when there is no such tenant."""
        ...

    async def list_tenants(self) -> Iterable[str]:
        """Every tenant id the catalog knows."""
        ...


_RESERVED = frozenset({"public", "information_schema", "postgres", "template0", "template1"})
_SHOWN_LENGTH = 40
# The characters an id may hold whatever id_pattern allows: it ends up in names and URLs.
_SAFE = re.compile(r"[a-z0-9_-]+")


class Answers:
    """What was found out about tenants nobody declared, each answer for *ttl* seconds;
    at most *maxsize* answers, the oldest dropped first.

    A plain dict ordered by age: every answer lives as long, so the oldest expire first.
    Reading an answer is a dictionary lookup and a clock reading (it is on the path of
    every request), and a tenant costs the memory of its id and its expiry time: the
    found tenants share one settings value.
    """

    __slots__ = ("_entries", "_maxsize", "_ttl")

    def __init__(self, maxsize: int, ttl: float) -> None:
        self._maxsize = maxsize
        self._ttl = ttl
        self._entries: dict[str, tuple[float, TenantSettings | None]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, tenant: str) -> tuple[bool, TenantSettings | None]:
        """Whether an answer about *tenant* is known, and the answer (None: no such
        tenant)."""
        entry = self._entries.get(tenant)
        if entry is None:
            return False, None
        expires, answer = entry
        if time.monotonic() >= expires:
            del self._entries[tenant]
            return False, None
        return True, answer

    def put(self, tenant: str, answer: TenantSettings | None) -> None:
        """Remember *answer* about *tenant* for the next ttl seconds."""
        entries = self._entries
        now = time.monotonic()
        entries.pop(tenant, None)  # to the young end
        entries[tenant] = (now + self._ttl, answer)
        # Drop the expired and, past the bound, the oldest: both at the old end.
        while entries:
            oldest = next(iter(entries))
            if len(entries) <= self._maxsize and entries[oldest][0] > now:
                break
            del entries[oldest]

    def pop(self, tenant: str) -> bool:
        """Forget the answer about *tenant*; whether it was a tenant found (and still
        fresh)."""
        entry = self._entries.pop(tenant, None)
        return entry is not None and entry[1] is not None and time.monotonic() < entry[0]


def is_reserved(tenant: str) -> bool:
    """Names that belong to PostgreSQL itself and can never be a tenant."""
    return tenant in _RESERVED or tenant.startswith("pg_")


class TenantDirectory:
    """Validates tenant ids and finds the settings of a tenant.

    Tenants come from, in order: static entries (configuration and `add`), the catalog
    (when one is given; answers cached for ``lookup_ttl`` seconds, found and not found
    alike), and otherwise *fallback* — the strategy's own way to tell whether a tenant
    exists (the URL template, an existing schema).
    """

    def __init__(
        self,
        tenancy: TenancySettings,
        *,
        catalog: TenantCatalog | None = None,
        catalog_size: int = 10_000,
        events: EventBus | None = None,
    ) -> None:
        self._events = events
        self._pattern = re.compile(tenancy.id_pattern)
        self._max_length = tenancy.max_id_length()
        self._static: dict[str, TenantSettings] = dict(tenancy.tenants)
        # The declared tenants whose id passes `validate` (configuration does not check
        # reserved names or lengths): `known` may serve them without checking again.
        self._valid_static = {
            tenant: settings for tenant, settings in self._static.items() if self.is_valid(tenant)
        }
        self._catalog = catalog
        self._answers = Answers(catalog_size, tenancy.lookup_ttl)
        self._pending: SingleFlight[str, TenantSettings | None] = SingleFlight()

    def known(self, raw: str) -> TenantSettings | None:
        """The settings of *raw* when it is the id of a tenant declared or found lately,
        else None (then `validate` and `lookup` it).

        Such an id passed `validate` when it was declared or found, so it is not checked
        again: this is the path of most requests.
        """
        settings = self._valid_static.get(raw)
        if settings is not None:
            return settings
        return self._answers.get(raw)[1]

    def is_valid(self, raw: object) -> bool:
        """Whether *raw* passes `validate`."""
        try:
            self.validate(raw)
        except TenantResolutionError:
            return False
        return True

    async def list_tenants(self, fallback: Callable[[], Awaitable[Iterable[str]]]) -> set[str]:
        """The declared tenants, and the catalog's (when there is one) or *fallback*'s."""
        found = set(self._static)
        catalog = self._catalog
        if catalog is None:
            found.update(await fallback())
        elif isinstance(catalog, ListingTenantCatalog):
            found.update(await catalog.list_tenants())
        else:
            raise ConfigurationError(
                "the tenant catalog cannot list its tenants; give it an async "
                "list_tenants() method (see dbrouter.tenancy.ListingTenantCatalog)"
            )
        return found

    def validate(self, raw: object) -> str:
        """*raw* as a tenant id, or `TenantResolutionError` saying why it is not one."""
        if raw is None:
            raise TenantResolutionError("no tenant id in the request", missing=True)
        if (
            not isinstance(raw, str)
            or not self._pattern.fullmatch(raw)
            or not _SAFE.fullmatch(raw)
        ):
            raise TenantResolutionError(
                f"malformed tenant id {_shown(raw)}: it must match {self._pattern.pattern}"
            )
        if len(raw) > self._max_length:
            raise TenantResolutionError(
                f"tenant id {_shown(raw)} is too long: its database or schema name would "
                f"pass PostgreSQL's 63 bytes (at most {self._max_length} characters here)"
            )
        if is_reserved(raw):
            raise TenantResolutionError(f"tenant id {raw!r} is a reserved name")
        return raw

    @property
    def static_ids(self) -> list[str]:
        """The ids of the tenants declared in configuration or added at runtime."""
        return sorted(self._static)

    def declared(self, tenant: str) -> TenantSettings | None:
        """The settings *tenant* is declared with (configuration or `add`), else None."""
        return self._static.get(tenant)

    @property
    def has_catalog(self) -> bool:
        """Whether tenants come from a catalog."""
        return self._catalog is not None

    def found(self, tenant: str) -> None:
        """Remember that *tenant*'s storage exists (it was just created): its next lookup
        asks nobody."""
        if tenant not in self._static:
            self._answers.put(tenant, NO_OVERRIDES)

    def add(self, tenant: str, settings: TenantSettings) -> None:
        """Declare *tenant* (or replace its settings)."""
        self._static[self.validate(tenant)] = settings
        self._valid_static[tenant] = settings
        self._answers.pop(tenant)

    def remove(self, tenant: str) -> bool:
        """Forget *tenant*: its declaration and any cached answer; whether either existed."""
        declared = self._static.pop(tenant, None) is not None
        self._valid_static.pop(tenant, None)
        answered = self._answers.pop(tenant)
        return declared or answered

    def forget(self, tenant: str, *, unknown: bool) -> None:
        """Drop the cached answer for *tenant*; with *unknown*, remember it as not found."""
        if unknown:
            self._answers.put(tenant, None)
        else:
            self._answers.pop(tenant)

    async def lookup(
        self, tenant: str, fallback: Callable[[str], Awaitable[TenantSettings | None]]
    ) -> TenantSettings:
        """The settings of the already validated *tenant*, or `UnknownTenantError`."""
        found = self._static.get(tenant)
        if found is not None:
            return found
        known, answer = self._answers.get(tenant)
        if not known:
            answer = await self._ask_once(tenant, fallback)
        if answer is None:
            raise UnknownTenantError(tenant)
        return answer

    async def _ask_once(
        self, tenant: str, fallback: Callable[[str], Awaitable[TenantSettings | None]]
    ) -> TenantSettings | None:
        # Concurrent first requests for one tenant share a single lookup.
        ask = self._catalog or fallback

        async def look_up() -> TenantSettings | None:
            answer = await ask(tenant)
            self._answers.put(tenant, answer)
            events = self._events
            if events is not None and events.wants(TenantLookedUp):
                events.emit(TenantLookedUp(tenant, answer is not None))
            return answer

        return await self._pending.run(tenant, look_up)


def _shown(raw: object) -> str:
    text = raw if isinstance(raw, str) else type(raw).__name__
    return repr(text[:_SHOWN_LENGTH] + ("..." if len(text) > _SHOWN_LENGTH else ""))
