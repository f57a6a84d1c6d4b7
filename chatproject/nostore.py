"""`Cache-Control: no-store` on every response that holds a user's data: the API, /v1, the chat pages and the
account pages. A shared or browser cache must not keep someone's conversations or tokens (a proxy in between,
or the back button after a logout on a shared computer). Static files, probes and the login page are left to
their own headers."""

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.utils.cache import patch_cache_control

PRIVATE_PREFIXES = ("/api/", "/v1/", "/c/", "/accounts/settings/", "/accounts/password/")


def _private(path: str) -> bool:
    return path == "/" or path.startswith(PRIVATE_PREFIXES)


class NoStoreMiddleware:
    """Sync and async: under ASGI an async view then never takes a hop through a thread for this."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if iscoroutinefunction(self):
            return self.__acall__(request)
        return self._mark(request, self.get_response(request))

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        response: Awaitable[HttpResponseBase] = self.get_response(request)
        return self._mark(request, await response)

    @staticmethod
    def _mark(request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        if _private(request.path):
            patch_cache_control(response, no_store=True, private=True)
        return response
