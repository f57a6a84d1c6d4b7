from django.contrib import admin
from django.urls import include, path

from accounts import urls as account_urls
from chatproject import probes
from conversations import views
from streaming.api import urls as api_urls

# The admin's app list on the left of every page: at 1280 px it left the conversation list too narrow for its
# columns. The home page and the breadcrumbs still lead everywhere.
admin.site.enable_nav_sidebar = False

urlpatterns = [
    path("", views.chat_page, name="chat"),
    path("c/<uuid:conversation_id>/", views.chat_page, name="conversation"),
    path("c/<uuid:conversation_id>/export.<str:extension>", views.conversation_export, name="conversation-export"),
    path("s/<str:token>/", views.shared_page, name="shared"),
    path("accounts/", include(account_urls)),
    path("admin/", admin.site.urls),
    path("healthz", probes.healthz, name="healthz"),
    path("readyz", probes.readyz, name="readyz"),
    path("metrics", probes.metrics, name="metrics"),
    path("api/v1/", include(api_urls.urlpatterns)),
    path("v1/", include(api_urls.openai_urlpatterns)),
]
