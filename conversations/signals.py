"""Signals of the record: what other parts of the project react to without the record knowing them."""

from django.dispatch import Signal

# Sent, once the change has committed, when what lets some users in changed without a model signal saying so
# (tokens revoked in bulk, say). Argument: `user_ids`. The live side closes connections that no longer may be
# open (streaming.access).
access_changed = Signal()
