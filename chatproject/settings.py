"""Settings for the chat project.

Every value that differs between a laptop and production is read from the environment here and nowhere else.
With no environment at all the project runs on SQLite, the in-memory channel layer and the built-in dev
upstream (a simulator), so a fresh clone needs no configuration.
"""

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def env_bool(name: str, default: bool = False) -> bool:
    value = env_str(name)
    if not value:
        return default
    return value.lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = env_str(name)
    try:
        return int(value) if value else default
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from exc


def env_float(name: str, default: float) -> float:
    value = env_str(name)
    try:
        return float(value) if value else default
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be a number, got {value!r}") from exc


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


# --- Core -----------------------------------------------------------------------------------------------
DEBUG = env_bool("DJANGO_DEBUG")
SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. Set SECRET_KEY in the environment (or DJANGO_DEBUG=1 for local development)."
        )
    SECRET_KEY = "django-insecure-local-development-only"  # noqa: S105 - only ever used with DEBUG on

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]" if DEBUG else "")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "axes",
    "corsheaders",
    # Single sign-on through OpenID Connect (OIDC_*): django-allauth's social accounts, nothing else of it.
    "allauth",
    "allauth.account",
    "allauth.socialaccount",
    "allauth.socialaccount.providers.openid_connect",
    "channels",
    "rest_framework",
    "drf_spectacular",
    "accounts",
    "conversations",
    "streaming",
    # The simulator (its `devllm` management command); production code never imports it (see streaming.upstream).
    "devllm",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Before anything that may answer: a CORS preflight gets its headers (only with API_CORS_ORIGINS).
    "corsheaders.middleware.CorsMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "chatproject.nostore.NoStoreMiddleware",
    # Last: it turns a login refused for too many failures into the lockout page (AXES_*).
    "axes.middleware.AxesMiddleware",
]
# Error reports (the DEBUG page, mails to admins) also hide the passwords inside URL settings.
DEFAULT_EXCEPTION_REPORTER_FILTER = "chatproject.errors.ReporterFilter"

ROOT_URLCONF = "chatproject.urls"
ASGI_APPLICATION = "chatproject.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------------------
# Under ASGI every consumer call may run on a different thread; persistent connections would leak, so
# connections are closed after each unit of work (CONN_MAX_AGE = 0).
DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}")
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=0)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = {
        # WAL lets readers (history, resume) proceed while a checkpoint writes; IMMEDIATE transactions take
        # the write lock up front instead of failing with "database is locked" on upgrade.
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # CONN_MAX_AGE stays 0 (see above); a pool keeps the connections instead, so a query does not pay for a
    # new connection each time. Each process holds up to DB_POOL_SIZE connections, DB_THREADS of them for
    # good (see below). With health checks on, Django has the pool check each connection as it leaves it:
    # after a database restart the dead ones are replaced instead of failing the next requests.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": env_int("DB_POOL_SIZE", 10),
        "timeout": 10,
    }
# The live side runs its ORM work on a pool of this many threads per process, each keeping its connection
# open between units of work (streaming.aio.orm); HTTP views keep Django's connection per request.
DB_THREADS = env_int("DB_THREADS", 4)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Channel layer --------------------------------------------------------------------------------------
REDIS_URL = env_str("REDIS_URL")
CHANNEL_PREFIX = env_str("CHANNEL_PREFIX", "chat")
# In-memory layer only. Deltas are coalesced (tens per second per stream), so a channel rarely holds more
# than a few; the capacity is generous because an overflow silently drops messages (watchers then resync by
# offset).
CHANNEL_CAPACITY = env_int("CHANNEL_CAPACITY", 1000)
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            # Redis pub/sub, not channels-redis's list-based layer: a delta is one PUBLISH that Redis pushes to
            # the processes subscribed to its group, where the list-based layer made four round trips to send
            # it and one blocking pop per message to receive it; at 50 streams that layer alone saturated a
            # core (docs/benchmarks.md). What pub/sub does not give, the protocol already has: a message
            # published while a process is not subscribed (a Redis restart) is missed, and watchers repair
            # such gaps by offset. A process's queues are not capped: each is drained as fast as the event
            # loop runs, since sending to a socket only hands bytes to its transport.
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {
                "hosts": [{"address": REDIS_URL, "socket_timeout": 15, "socket_connect_timeout": 5}],
                "prefix": CHANNEL_PREFIX,
            },
        }
    }
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "streaming.layers.InMemoryChannelLayer",
            "CONFIG": {"capacity": CHANNEL_CAPACITY, "expiry": 60},
        }
    }

# --- Auth, sessions, security ---------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Password guessing: after LOGIN_FAILURE_LIMIT wrong passwords for one username from one address, that pair is
# locked out for LOGIN_LOCKOUT_MINUTES (the chat login and the admin login alike). Staff see the attempts and
# lockouts in the admin (Axes) and lift one by deleting it. The address is REMOTE_ADDR, which daphne takes from
# nginx's X-Forwarded-For with --proxy-headers (deploy/chat@.service); nginx also limits the rate per address.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("LOGIN_LOCKOUT_MINUTES", 15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked.html"
AXES_VERBOSE = False

# Single sign-on: with OIDC_SERVER_URL (the issuer, or its .well-known/openid-configuration), OIDC_CLIENT_ID
# and OIDC_CLIENT_SECRET, the login page offers "Log in with OIDC_NAME" beside local passwords. The product's
# callback is /accounts/oidc/<OIDC_PROVIDER_ID>/login/callback/. A first SSO login creates the account
# (OIDC_CREATE_USERS=0: only users who already signed in through it before), whatever SIGNUP_MODE says: the
# identity provider decides who may come in.
OIDC_SERVER_URL = env_str("OIDC_SERVER_URL")
OIDC_PROVIDER_ID = env_str("OIDC_PROVIDER_ID", "sso")
OIDC_NAME = env_str("OIDC_NAME", "single sign-on")
OIDC_CREATE_USERS = env_bool("OIDC_CREATE_USERS", default=True)
if OIDC_SERVER_URL and not (env_str("OIDC_CLIENT_ID") and env_str("OIDC_CLIENT_SECRET")):
    raise ImproperlyConfigured("OIDC_SERVER_URL needs OIDC_CLIENT_ID and OIDC_CLIENT_SECRET.")
SOCIALACCOUNT_PROVIDERS = {
    "openid_connect": {
        "APPS": [
            {
                "provider_id": OIDC_PROVIDER_ID,
                "name": OIDC_NAME,
                "client_id": env_str("OIDC_CLIENT_ID"),
                "secret": env_str("OIDC_CLIENT_SECRET"),
                "settings": {"server_url": OIDC_SERVER_URL, "oauth_pkce_enabled": True},
            }
        ]
        if OIDC_SERVER_URL
        else [],
    }
}
SOCIALACCOUNT_ADAPTER = "accounts.sso.SingleSignOnAdapter"
ACCOUNT_ADAPTER = "accounts.sso.NoAllauthSignupAdapter"
SOCIALACCOUNT_AUTO_SIGNUP = True
SOCIALACCOUNT_LOGIN_ON_GET = False  # the login page's button POSTs (with its CSRF token)
SOCIALACCOUNT_STORE_TOKENS = False  # the provider's tokens are not needed after the login
ACCOUNT_LOGIN_METHODS = {"username"}
ACCOUNT_SIGNUP_FIELDS = ["username*", "email"]
ACCOUNT_EMAIL_VERIFICATION = "none"  # the identity provider vouches for its users' addresses

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "chat"
LOGOUT_REDIRECT_URL = "login"
# Who may create an account: "closed" (staff create users in the admin), "invite" (a link from staff, see
# Invitations in the admin) or "open" (anyone who reaches the sign-up page).
SIGNUP_MODE = env_str("SIGNUP_MODE", "closed")
if SIGNUP_MODE not in ("closed", "invite", "open"):
    raise ImproperlyConfigured("SIGNUP_MODE must be closed, invite or open.")

# Password-reset mail: printed to the log unless an SMTP server is configured.
EMAIL_HOST = env_str("EMAIL_HOST")
EMAIL_BACKEND = (
    "django.core.mail.backends.smtp.EmailBackend" if EMAIL_HOST else "django.core.mail.backends.console.EmailBackend"
)
EMAIL_PORT = env_int("EMAIL_PORT", 587)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", default=EMAIL_PORT == 587)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", default=EMAIL_PORT == 465)
EMAIL_TIMEOUT = 10
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "chat@localhost")

SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", default=not DEBUG)
# Probes and scrapers talk to each process directly over plain HTTP.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Cookies travel only over HTTPS in production; SECURE_COOKIES=0 is for a plain-HTTP test bed on loopback.
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("SECURE_COOKIES", default=not DEBUG)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", default=False)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]

# --- Static files ---------------------------------------------------------------------------------------
# Served by WhiteNoise from the process itself, so no proxy is required; a proxy may serve STATIC_ROOT
# instead. In DEBUG the files come straight from static/ (no collectstatic needed); otherwise from
# `collectstatic`'s output, with hashed, compressed, forever-cacheable names.
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = env_str("STATIC_ROOT", str(BASE_DIR / "staticfiles"))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "chatproject.storage.StaticStorage"
    },
}
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG

# --- Content-Security-Policy ----------------------------------------------------------------------------
# No inline script or style, no eval, nothing fetched from elsewhere: model output cannot load or run
# anything even if it slipped past the sanitizer. The chat page adds Trusted Types (see conversations.views).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}

# --- Internationalisation -------------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- LLM upstream ---------------------------------------------------------------------------------------
# Empty LLM_BASE_URL means the built-in dev upstream: a simulator started inside the process on a loopback
# port. It is for development, tests and benchmarks, and the UI labels it as such.
LLM_BASE_URL = env_str("LLM_BASE_URL").rstrip("/")
LLM_API_KEY = env_str("LLM_API_KEY")
# True when the upstream is the dev simulator: embedded (no LLM_BASE_URL) or a standalone `manage.py devllm`.
# The UI then labels answers as simulated, and model names may carry simulator options.
LLM_SIMULATOR = env_bool("LLM_SIMULATOR", default=not LLM_BASE_URL)
LLM_MODELS = env_list("LLM_MODELS", "" if LLM_BASE_URL else "dev")
if not LLM_MODELS:
    raise ImproperlyConfigured("LLM_MODELS must name at least one model when LLM_BASE_URL is set.")
# The prompt budget (conversations.budget): the context size of each model, in tokens, and what of it is kept
# for the answer when a request sets no max_tokens. LLM_MODEL_CONTEXT lists exceptions: "big=128000,small=4096".
LLM_CONTEXT_TOKENS = env_int("LLM_CONTEXT_TOKENS", 32_768)
LLM_MODEL_CONTEXT: dict[str, int] = {}
for _item in env_list("LLM_MODEL_CONTEXT"):
    _name, _, _size = _item.partition("=")
    if not _name.strip() or not _size.strip().isdigit():
        raise ImproperlyConfigured(f"LLM_MODEL_CONTEXT entries are model=tokens, got {_item!r}")
    LLM_MODEL_CONTEXT[_name.strip()] = int(_size)
CHAT_ANSWER_RESERVE_TOKENS = env_int("CHAT_ANSWER_RESERVE_TOKENS", 4096)
LLM_CONNECT_TIMEOUT = env_float("LLM_CONNECT_TIMEOUT", 10.0)
LLM_STALL_SECONDS = env_float("LLM_STALL_SECONDS", 60.0)
LLM_MAX_RETRIES = env_int("LLM_MAX_RETRIES", 2)
LLM_RETRY_MAX_WAIT = env_float("LLM_RETRY_MAX_WAIT", 20.0)

# Dev upstream defaults (each can be overridden per request through the model name, see docs/devllm.md).
DEVLLM_TTFT = env_float("DEVLLM_TTFT", 0.4)
DEVLLM_TPS = env_float("DEVLLM_TPS", 40.0)
DEVLLM_TOKENS = env_int("DEVLLM_TOKENS", 300)

# --- Chat engine ----------------------------------------------------------------------------------------
CHAT_COALESCE_MS = env_int("CHAT_COALESCE_MS", 40)
CHAT_CHECKPOINT_SECONDS = env_float("CHAT_CHECKPOINT_SECONDS", 1.0)
CHAT_LEASE_SECONDS = env_float("CHAT_LEASE_SECONDS", 15.0)
CHAT_SWEEP_SECONDS = env_float("CHAT_SWEEP_SECONDS", 10.0)
# How long a database outage a streaming answer rides out: checkpoints and the final write are retried.
CHAT_DB_RETRY_SECONDS = env_float("CHAT_DB_RETRY_SECONDS", 30.0)
# On SIGTERM, how long answers being written get to finish before they are saved as `interrupted`.
CHAT_SHUTDOWN_GRACE_SECONDS = env_float("CHAT_SHUTDOWN_GRACE_SECONDS", 20.0)
CHAT_MAX_DURATION_SECONDS = env_float("CHAT_MAX_DURATION_SECONDS", 600.0)
CHAT_MAX_OUTPUT_CHARS = env_int("CHAT_MAX_OUTPUT_CHARS", 200_000)
CHAT_MAX_CONCURRENT_PER_USER = env_int("CHAT_MAX_CONCURRENT_PER_USER", 2)
# Abuse limits: answers a user may start per minute, and WebSockets a user may have open (all processes).
CHAT_MAX_MESSAGES_PER_MINUTE = env_int("CHAT_MAX_MESSAGES_PER_MINUTE", 20)
CHAT_MAX_SOCKETS_PER_USER = env_int("CHAT_MAX_SOCKETS_PER_USER", 20)
CHAT_MAX_CONTENT_CHARS = env_int("CHAT_MAX_CONTENT_CHARS", 32_000)
CHAT_MAX_FRAME_BYTES = env_int("CHAT_MAX_FRAME_BYTES", 65_536)
# Requests on one socket that start no answer (open, list and search, older pages, resume, rename, delete,
# feedback): this many a second on average, in bursts of up to CHAT_SOCKET_REQUEST_BURST.
CHAT_SOCKET_REQUESTS_PER_SECOND = env_float("CHAT_SOCKET_REQUESTS_PER_SECOND", 5.0)
CHAT_SOCKET_REQUEST_BURST = env_int("CHAT_SOCKET_REQUEST_BURST", 60)
CHAT_MAX_TOKENS_LIMIT = env_int("CHAT_MAX_TOKENS_LIMIT", 32_768)

# --- HTTP API -------------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "streaming.api.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["streaming.api.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "streaming.api.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Chat API",
    "DESCRIPTION": "Conversations, messages and streamed answers over HTTP; see docs/api.md.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # A message's `feedback_reason` and a feedback request's `reason` are the same set of choices.
    "ENUM_NAME_OVERRIDES": {"FeedbackReasonEnum": "conversations.models.Message.FeedbackReason"},
}
# Browsers on other sites may call the API with a personal token (Authorization header, never cookies) from
# these origins only; none by default.
CORS_ALLOWED_ORIGINS = env_list("API_CORS_ORIGINS")
CORS_URLS_REGEX = r"^/(api/v1|v1)/"
CORS_ALLOW_CREDENTIALS = False
CORS_ALLOW_HEADERS = ["accept", "authorization", "content-type", "idempotency-key", "last-event-id"]
CORS_EXPOSE_HEADERS = [
    "x-message-id",
    "x-conversation-id",
    "retry-after",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
]

# An event stream with nothing to say sends a comment this often, so proxies and clients keep it open.
API_KEEPALIVE_SECONDS = env_float("API_KEEPALIVE_SECONDS", 15.0)

# --- Logging --------------------------------------------------------------------------------------------
# Message contents are never logged at INFO or above; LOG_FORMAT=json writes one JSON object per line, with
# the structured fields (message_id, status, code, …) that the plain format leaves out.
LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
LOG_FORMAT = env_str("LOG_FORMAT", "plain")
if LOG_FORMAT not in {"plain", "json"}:
    raise ImproperlyConfigured(f"LOG_FORMAT must be plain or json, got {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "daphne": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
    },
}
