"""Start-up configuration, checked in fresh interpreters the way an operator would start the project."""

import os
import subprocess
import sys

from tests.support import ROOT

PRODUCTION = {
    "DJANGO_SETTINGS_MODULE": "chatproject.settings",
    "SECRET_KEY": "a-long-random-production-secret-key-with-enough-entropy-0123456789",
    "ALLOWED_HOSTS": "chat.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://chat.example.com",
}


def manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "SECRET_KEY", "SECURE_", "LLM_", "DATABASE_URL", "REDIS_URL"))
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_missing_secret_key_with_debug_off_is_a_clear_startup_error():
    result = manage("check", DJANGO_SETTINGS_MODULE="chatproject.settings")
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr


def test_check_deploy_is_clean_in_production_configuration():
    result = manage("check", "--deploy", "--fail-level", "WARNING", **PRODUCTION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_real_upstream_needs_models_named():
    result = manage("check", **PRODUCTION, LLM_BASE_URL="http://127.0.0.1:9/v1")
    assert result.returncode != 0
    assert "LLM_MODELS" in result.stderr


def test_zero_configuration_debug_start_uses_the_simulator():
    code = (
        "from django.conf import settings as s; "
        "print(s.LLM_BASE_URL == '', s.LLM_MODELS, s.DATABASES['default']['ENGINE'])"
    )
    result = manage("shell", "-c", code, DJANGO_DEBUG="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].split() == ["True", "['dev']", "django.db.backends.sqlite3"]


def test_error_reports_hide_passwords_inside_url_settings():
    """The DEBUG error page and admin mails list the settings: DATABASE_URL's password must not be among them."""
    script = (
        "import django; django.setup();"
        "from django.views.debug import get_default_exception_reporter_filter as f;"
        "s = f().get_safe_settings();"
        "print(s['DATABASE_URL']); print(s['REDIS_URL']); print(s['LLM_BASE_URL'])"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={
            **os.environ,
            **PRODUCTION,
            "DATABASE_URL": "postgres://chat:hunter2secret@db.internal:5432/chat",
            "REDIS_URL": "redis://:redispass99@cache.internal:6379/0",
            "LLM_BASE_URL": "https://user:llmpass77@llm.internal/v1",
            "LLM_MODELS": "m",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    shown = result.stdout
    for secret in ("hunter2secret", "redispass99", "llmpass77"):
        assert secret not in shown
    assert "postgres://chat:********************@db.internal:5432/chat" in shown
    assert "https://user:********************@llm.internal/v1" in shown
