"""The invitations that create accounts (when sign-up is by invitation)."""

from django.conf import settings
from django.db import models


class Invitation(models.Model):
    """A link that lets one person create an account (when sign-up is by invitation). Only a hash of its key is
    stored: the link is shown once, to the staff member who creates it."""

    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    note = models.CharField(max_length=200, blank=True, help_text="Who it is for (shown to staff only).")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True, editable=False)
    used_by = models.OneToOneField(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="invitation",
        editable=False,
    )  # fmt: skip

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.note or f"Invitation of {self.created_at:%Y-%m-%d}"
