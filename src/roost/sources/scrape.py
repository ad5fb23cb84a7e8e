"""The scrape source (being built: settings only so far)."""

from __future__ import annotations

from dataclasses import dataclass

from roost.sources.base import Source


@dataclass(frozen=True, slots=True)
class ScrapeSettings:
    """`[[source.scrape]]`."""

    name: str = ""


class ScrapeSource(Source):
    kind = "scrape"

    async def run(self) -> None:
        raise NotImplementedError("the scrape source is not built yet")
