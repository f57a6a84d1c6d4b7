# The two commands a fresh machine needs: `make run` (the app) and `make test` (the suite).
SHELL := /bin/bash
PORT ?= 8000
HOST ?= 127.0.0.1
# The second test pass runs on the production engines; override these to point it elsewhere.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/chat
TEST_REDIS_URL ?= redis://127.0.0.1:6379/0
PYTEST_ARGS ?=

.PHONY: run test test-sqlite test-services lint bench profile soak screenshots sync browser-tools

sync:
	@command -v uv >/dev/null || python3 -m pip install --quiet uv
	@uv sync --frozen --quiet

# The browser tests' accessibility check loads axe-core into Chromium from a local copy (tests/browser/axe,
# pinned in its package-lock.json). Without npm a laptop skips that check; CI installs npm and runs it.
browser-tools:
	@if command -v npm >/dev/null; then \
		npm ci --prefix tests/browser/axe --silent --no-audit --no-fund; \
	else \
		echo "npm not found: the accessibility check (axe-core) will be skipped"; \
	fi

run: sync
	DJANGO_DEBUG=1 uv run python manage.py migrate --noinput
	DJANGO_DEBUG=1 uv run python manage.py demouser
	@echo "Serving on http://$(HOST):$(PORT)/ with the built-in dev upstream (a simulator) unless LLM_BASE_URL is set"
	DJANGO_DEBUG=1 uv run python -m chatproject.serve -b $(HOST) -p $(PORT) chatproject.asgi:application

# SQLite + in-memory layer (with the browser tests), then PostgreSQL + Redis (with the deployment harness:
# nginx, two daphne processes, private PostgreSQL and Redis servers it restarts). Without those services a
# laptop skips the second pass; CI (CI=true) fails instead.
test: test-sqlite test-services

test-sqlite: sync browser-tools
	env -u DATABASE_URL -u REDIS_URL uv run pytest -m "not deploy" $(PYTEST_ARGS)

test-services: sync
	@if uv run python -m tests.reachability $(TEST_DATABASE_URL) $(TEST_REDIS_URL); then \
		DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) uv run pytest -m "not browser" $(PYTEST_ARGS); \
	elif [ "$$CI" = "true" ]; then \
		echo "PostgreSQL or Redis is unreachable, and CI must run the suite on them" >&2; exit 1; \
	else \
		echo "Skipping the PostgreSQL + Redis pass: the services are unreachable (see above)"; \
	fi

lint: sync
	uv run ruff check .
	uv run ruff format --check .
	uv run mypy .

bench: sync
	uv run python bench/suite.py $(BENCH_ARGS)

# Where one product process spends its CPU under a bench load, sampled with py-spy (bench/profile.py).
profile: sync
	uv run python bench/profile.py $(PROFILE_ARGS)

# Two daphne processes behind nginx on PostgreSQL and Redis under load for SOAK_SECONDS (600), with a process
# SIGKILLed every 2 minutes, one Redis outage and clients that drop and resume (bench/soak.py).
soak: sync
	uv run python bench/soak.py

# Pictures of the main states for the README (needs Debian's chromium; fonts-noto-cjk and
# fonts-noto-color-emoji for every glyph).
screenshots: sync
	uv run python docs/screenshots.py
