"""Test settings: the project's settings with a throwaway secret and a file-based SQLite test database.

The async ORM and the daphne processes started by end-to-end tests need a database file that several
threads and processes can open, so the SQLite test database is never in-memory.
"""

import os

os.environ.setdefault("SECRET_KEY", "insecure-test-only-secret-key-0123456789abcdefghijklmnopqrstuvwxyz")
# Tests (and the daphne processes they start) talk plain HTTP on loopback.
os.environ.setdefault("SECURE_SSL_REDIRECT", "0")
# One channel-layer namespace per test run, shared with the daphne processes it starts.
os.environ.setdefault("CHANNEL_PREFIX", f"test-{os.getpid()}")

from chatproject.settings import *  # noqa: F403
from chatproject.settings import BASE_DIR, DATABASES

# Two test runs on one machine (say, two checkouts) each get their own database with TEST_DB_SUFFIX.
_SUFFIX = os.environ.get("TEST_DB_SUFFIX", "")
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / f"test-db{_SUFFIX}.sqlite3")}
else:
    DATABASES["default"]["TEST"] = {"NAME": f"test_{DATABASES['default']['NAME']}{_SUFFIX}"}

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# Pages rendered in this process link static files by name: there is no collected manifest here. (The daphne
# processes the end-to-end tests start serve the collected, hashed files, as production does.)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
