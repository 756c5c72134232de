"""GET /healthz and /readyz against real services, and with each one really unreachable."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from django.db import connections

from devtools.embedded import free_port


@contextlib.contextmanager
def postgresql_unreachable() -> Iterator[None]:
    """Point the app's database connection at a closed port: a real refused connection.

    (Used in transactional tests: there is no test-wide transaction that
    closing the connection would end. It is closed before and after so
    nothing half-open leaks into other tests.)
    """
    connection = connections["default"]
    saved = dict(connection.settings_dict)
    connection.close()
    connection.settings_dict["PORT"] = free_port()
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(saved)


def test_healthz_answers_without_touching_any_service(web, settings, transactional_db):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    with postgresql_unreachable():
        response = web.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"alive": True}


@pytest.mark.django_db
def test_readyz_is_200_when_redis_and_postgresql_answer(web):
    response = web.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"ready": True, "down": []}


@pytest.mark.django_db
def test_readyz_is_503_naming_redis_when_redis_is_down(web, settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    response = web.get("/readyz")
    assert response.status_code == 503
    assert response.json()["ready"] is False
    assert response.json()["down"] == ["redis"]
    assert response.json()["errors"]["redis"] == "ConnectionError"


def test_readyz_is_503_naming_postgresql_when_postgresql_is_down(web, transactional_db):
    with postgresql_unreachable():
        response = web.get("/readyz")
    assert response.status_code == 503
    assert response.json()["down"] == ["postgresql"]
    assert response.json()["errors"]["postgresql"] == "OperationalError"
    # Back up: the probe reconnects instead of reusing the broken connection.
    assert web.get("/readyz").status_code == 200


def test_readyz_names_both_when_both_are_down(web, settings, transactional_db):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    with postgresql_unreachable():
        response = web.get("/readyz")
    assert response.status_code == 503
    assert response.json()["down"] == ["redis", "postgresql"]
