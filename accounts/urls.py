from django.contrib.auth import views as auth_views
from django.urls import include, path, reverse_lazy

from accounts import views

urlpatterns = [
    path("login/", views.LoginView.as_view(), name="login"),
    # The name allauth's pages link to for logging in.
    path("login/", views.LoginView.as_view(), name="account_login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("settings/", views.settings_page, name="settings"),
    path("settings/preferences/", views.preferences_save, name="settings-preferences"),
    path("settings/tokens/", views.token_create, name="settings-token-create"),
    path("settings/tokens/<int:token_id>/revoke/", views.token_revoke, name="settings-token-revoke"),
    path("settings/sessions/end-others/", views.sessions_end_others, name="settings-sessions-end"),
    path("password/", views.PasswordChangeView.as_view(), name="password_change"),
    path(
        "password/reset/",
        auth_views.PasswordResetView.as_view(
            template_name="accounts/password_reset.html",
            email_template_name="accounts/email/password_reset.txt",
            subject_template_name="accounts/email/password_reset_subject.txt",
        ),
        name="password_reset",
    ),
    path(
        "password/reset/sent/",
        auth_views.PasswordResetDoneView.as_view(template_name="accounts/password_reset_sent.html"),
        name="password_reset_done",
    ),
    path(
        "password/reset/<uidb64>/<token>/",
        auth_views.PasswordResetConfirmView.as_view(
            template_name="accounts/password_reset_confirm.html", success_url=reverse_lazy("password_reset_complete")
        ),
        name="password_reset_confirm",
    ),
    path(
        "password/reset/done/",
        auth_views.PasswordResetCompleteView.as_view(template_name="accounts/password_reset_complete.html"),
        name="password_reset_complete",
    ),
    path("signup/", views.signup, name="signup"),
    path("signup/<str:key>/", views.signup, name="signup-invited"),
    # Single sign-on (accounts.sso): /accounts/oidc/<provider id>/login/ and its callback, and allauth's pages
    # for a login that was cancelled or failed.
    path("", include("allauth.socialaccount.providers.openid_connect.urls")),
    path("sso/", include("allauth.socialaccount.urls")),
]
