"""Maps httpx failures of a remote model provider onto ProviderError codes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx

from parley.errors import ProviderError


@contextlib.asynccontextmanager
async def provider_errors(what: str, base_url: str) -> AsyncIterator[None]:
    try:
        yield
    except httpx.TimeoutException as exc:
        raise ProviderError(
            "timeout", f"{what} at {base_url} timed out ({exc!r})", f"the {what} timed out"
        ) from None
    except httpx.HTTPStatusError as exc:
        body = ""
        with contextlib.suppress(Exception):
            body = exc.response.text[:300]
        raise ProviderError(
            "provider_error",
            f"{what} at {base_url} answered HTTP {exc.response.status_code}: {body}",
            f"the {what} answered HTTP {exc.response.status_code}",
        ) from None
    except httpx.TransportError as exc:
        raise ProviderError(
            "provider_unavailable",
            f"{what} at {base_url} is unreachable: {exc}",
            f"the {what} is unreachable",
        ) from None
    except (ValueError, KeyError) as exc:  # a body that is not what the API promises
        raise ProviderError(
            "provider_error",
            f"{what} at {base_url} sent a malformed answer: {exc}",
            f"the {what} sent a malformed answer",
        ) from None
