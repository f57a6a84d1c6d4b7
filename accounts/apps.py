from django.apps import AppConfig


class AccountsConfig(AppConfig):
    """People and how they get in: sessions, account pages, the user admin."""

    name = "accounts"
    default_auto_field = "django.db.models.BigAutoField"
