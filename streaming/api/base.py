"""`AsyncAPIView`: a DRF view whose handlers are coroutines.

DRF dispatches synchronously, and a handler that streams an answer or waits for one must not hold a thread
for minutes. This dispatcher runs DRF's own `initial()` (authentication with CSRF for sessions, permissions,
content negotiation) off the event loop, awaits the handler on it, and ends in DRF's exception handling and
response finalisation, so these views answer, fail and appear in the schema exactly like the others.
"""

import inspect
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions
from rest_framework.views import APIView

from streaming.aio import orm


class AsyncAPIView(APIView):
    @classmethod
    def as_view(cls, **initkwargs: Any) -> Callable[..., Any]:
        super().as_view(**initkwargs)  # DRF's and Django's checks of the class and its arguments

        async def view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            self = cls(**initkwargs)
            self.setup(request, *args, **kwargs)
            return await self.adispatch(request, *args, **kwargs)

        # What URL resolvers and schema generators read from a DRF view function.
        vars(view).update(cls=cls, initkwargs=initkwargs, view_class=cls, view_initkwargs=initkwargs)
        # Sessions are checked for CSRF by DRF's SessionAuthentication, as in every APIView.
        return csrf_exempt(view)

    async def adispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        self.args, self.kwargs = args, kwargs
        drf_request = self.initialize_request(request, *args, **kwargs)
        self.request = drf_request
        self.headers = self.default_response_headers
        try:
            # Sessions and tokens are looked up in the database: off the event loop, connection closed after.
            await orm(self.initial)(drf_request, *args, **kwargs)
            method = (drf_request.method or "").lower()
            handler = getattr(self, method, None) if method in self.http_method_names else None
            if handler is None:
                raise exceptions.MethodNotAllowed(drf_request.method or "")
            response = handler(drf_request, *args, **kwargs)
            if inspect.isawaitable(response):  # DRF's own `options` is synchronous
                response = await response
        except Exception as exc:
            response = self.handle_exception(exc)
        self.response = self.finalize_response(drf_request, response, *args, **kwargs)
        return self.response
