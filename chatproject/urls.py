from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from chatproject import probes
from conversations import views
from streaming.api import urls as api_urls

urlpatterns = [
    path("", views.chat_page, name="chat"),
    path("c/<uuid:conversation_id>/", views.chat_page, name="conversation"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("healthz", probes.healthz, name="healthz"),
    path("readyz", probes.readyz, name="readyz"),
    path("metrics", probes.metrics, name="metrics"),
    path("api/v1/", include(api_urls.urlpatterns)),
    path("v1/", include(api_urls.openai_urlpatterns)),
]
