"""Writes docs/openapi.yaml, the committed OpenAPI contract, from the code (server/apps/front/schema.py).

    .venv/bin/python -m devtools.openapi          # rewrite docs/openapi.yaml
    .venv/bin/python -m devtools.openapi --check  # exit 1 when it differs from the code (tests, CI)

The committed file states the default limits: the ``AB_*`` variables the
schema reads are ignored here, so a developer's own environment never leaks
into it. A running server's ``GET /api/schema/`` states its own limits.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_FILE = REPO_ROOT / "docs" / "openapi.yaml"
REGENERATE = ".venv/bin/python -m devtools.openapi"

# The settings server/apps/front/schema.py's limits() reads.
LIMIT_VARIABLES = (
    "AB_MAX_BODY_BYTES",
    "AB_BATCH_MAX_EVENTS",
    "AB_MAX_EVENT_BYTES",
    "AB_MAX_METADATA_BYTES",
    "AB_MAX_METADATA_DEPTH",
    "AB_MAX_STEP_NUMBER",
    "AB_CLIENT_TS_MAX_AGE",
    "AB_RETRY_AFTER",
)


def generate() -> str:
    """The schema as drf-spectacular serves it at ``/api/schema/`` (YAML), under the settings in force."""
    from drf_spectacular.generators import SchemaGenerator
    from drf_spectacular.renderers import OpenApiYamlRenderer

    schema = SchemaGenerator().get_schema(request=None, public=True)
    return OpenApiYamlRenderer().render(schema, renderer_context={}).decode("utf-8")


def drift(generated: str, committed: str) -> str:
    """A unified diff of the committed file against the generated schema ('' when equal)."""
    return "".join(
        difflib.unified_diff(
            committed.splitlines(keepends=True),
            generated.splitlines(keepends=True),
            fromfile="docs/openapi.yaml (committed)",
            tofile="generated from the code",
        )
    )


def _setup_django() -> None:
    for name in LIMIT_VARIABLES:
        os.environ.pop(name, None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "server.settings")
    import django

    django.setup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/openapi.yaml differs from the code")
    args = parser.parse_args(argv)
    _setup_django()
    generated = generate()
    if args.check:
        committed = SCHEMA_FILE.read_text(encoding="utf-8") if SCHEMA_FILE.exists() else ""
        diff = drift(generated, committed)
        if diff:
            sys.stdout.write(diff)
            print(f"\ndocs/openapi.yaml is out of date with the code; regenerate it: {REGENERATE}", file=sys.stderr)
            return 1
        return 0
    SCHEMA_FILE.write_text(generated, encoding="utf-8")
    print(f"wrote {SCHEMA_FILE.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
