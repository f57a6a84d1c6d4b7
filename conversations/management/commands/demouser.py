"""Creates the demo login for local development; refuses to run with DEBUG off."""

from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

USERNAME = "demo"
PASSWORD = "demo"  # noqa: S105 - a DEBUG-only login, printed on start


class Command(BaseCommand):
    help = "Create (or repair) the DEBUG-only demo login demo/demo and print it."

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DEBUG:
            raise CommandError("The demo login exists only with DEBUG on (DJANGO_DEBUG=1).")
        user, created = get_user_model().objects.get_or_create(username=USERNAME)
        # Left alone when it is already right: a new password hash (even of the same password) would sign out
        # every browser signed in as demo, at every `make run`.
        if created or not user.check_password(PASSWORD) or not (user.is_staff and user.is_superuser):
            user.set_password(PASSWORD)
            user.is_staff = user.is_superuser = True
            user.save()
        self.stdout.write(self.style.SUCCESS(f"Demo login (DEBUG only): username {USERNAME!r}, password {PASSWORD!r}"))
