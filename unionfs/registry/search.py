"""`imgfs search`: repositories of a registry whose name contains a term, with their tags.

The distribution API lists a registry's repositories at `/v2/_catalog` (paginated with
`Link: <…>; rel="next"`) and a repository's tags at `/v2/<name>/tags/list`. Docker Hub
does not offer the catalog; its own search API is not the distribution API.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

from unionfs.errors import BadInput, RegistryError
from unionfs.registry.client import RegistryClient, status_error
from unionfs.registry.connect import RegistryOptions, client_for_domain
from unionfs.registry.hosts import DOCKER_HUB_ENDPOINT

PAGE = 100
_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


@dataclass
class SearchResult:
    name: str
    tags: list[str]


async def search(
    domain: str,
    term: str,
    *,
    limit: int = 25,
    options: RegistryOptions | None = None,
    page: int = PAGE,
) -> list[SearchResult]:
    if limit < 1:
        raise BadInput(f"--limit must be at least 1, not {limit}")
    options = options or RegistryOptions()
    async with client_for_domain(domain, "", options) as client:
        if client.host == DOCKER_HUB_ENDPOINT:
            raise RegistryError(
                "Docker Hub does not list its repositories through the registry API; "
                "search another registry with --registry HOST"
            )
        names = await _matching_repositories(client, term, limit, page)
        results = []
        for name in names:
            tags = await _pages(
                client, f"/v2/{name}/tags/list?n={page}", f"repository:{name}:pull", "tags"
            )
            results.append(SearchResult(f"{domain}/{name}", sorted(tags)))
        return results


async def _matching_repositories(
    client: RegistryClient, term: str, limit: int, page: int
) -> list[str]:
    found: list[str] = []
    async for name in _iterate(
        client, f"/v2/_catalog?n={page}", "registry:catalog:*", "repositories"
    ):
        if term.lower() in name.lower():
            found.append(name)
            if len(found) >= limit:
                break
    return found


async def _pages(client: RegistryClient, path: str, scope: str, key: str) -> list[str]:
    return [item async for item in _iterate(client, path, scope, key)]


async def _iterate(
    client: RegistryClient, path: str | None, scope: str, key: str
) -> AsyncIterator[str]:
    seen = 0
    while path is not None:
        resp = await client.request("GET", path, [scope], what=f"list {key}")
        if resp.status_code in (404, 405) and key == "repositories":
            raise RegistryError(f"{client.host} does not offer a catalog of its repositories")
        if resp.status_code == 404:  # listed in the catalog, but no tag was ever pushed
            return
        if resp.status_code != 200:
            raise status_error(resp, f"{client.host}: listing {key}")
        try:
            items = resp.json().get(key) or []
        except (ValueError, AttributeError):
            raise RegistryError(f"{client.host} sent an unreadable list of {key}") from None
        for item in items:
            if isinstance(item, str):
                yield item
        seen += 1
        match = _NEXT.search(resp.headers.get("Link", ""))
        path = match.group(1) if match and seen < 10_000 else None
