"""ASGI entry point: HTTP through Django, WebSockets through the Origin check, the session lookup and the router."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402 - needs the app registry loaded above

from streaming.auth import SessionAuthMiddleware  # noqa: E402
from streaming.origin import OriginValidator  # noqa: E402
from streaming.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": OriginValidator(SessionAuthMiddleware(URLRouter(websocket_urlpatterns))),
    }
)
