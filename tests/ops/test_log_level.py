"""LOG_LEVEL in any case starts the process; an unknown level stops it with a message naming the variable."""

from __future__ import annotations

import logging

import pytest
from django.core.exceptions import ImproperlyConfigured
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from server.settings import LOG_LEVEL_ALIASES, LOG_LEVELS, log_level

from .test_production import production_env, refusal, run_python

ROOT_LEVEL = "import logging, django; django.setup(); print(logging.getLevelName(logging.getLogger().level))"


@pytest.mark.parametrize(
    ("raw", "level"), [("warning", "WARNING"), (" Debug ", "DEBUG"), ("ERROR", "ERROR"), ("warn", "WARNING")]
)
def test_a_process_starts_with_log_level_in_any_case(raw, level):
    result = run_python(ROOT_LEVEL, production_env(LOG_LEVEL=raw))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == level


def test_an_empty_log_level_means_info():
    assert run_python(ROOT_LEVEL, production_env(LOG_LEVEL="")).stdout.strip() == "INFO"


def test_an_unknown_log_level_stops_start_up_naming_the_variable():
    assert refusal(production_env(LOG_LEVEL="loud")) == (
        "LOG_LEVEL='loud' is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL (any case)"
    )


@hypothesis_settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(LOG_LEVELS),
    cases=st.lists(st.booleans(), min_size=8, max_size=8),
    pad=st.sampled_from(["", " ", "\t"]),
)
def test_every_case_of_a_known_level_is_accepted(name, cases, pad):
    raw = pad + "".join(c.lower() if lower else c for c, lower in zip(name, cases, strict=False)) + pad
    assert log_level(raw) == name
    # ...and is a level the logging module knows under that name.
    assert isinstance(logging.getLevelName(name), int)


@hypothesis_settings(max_examples=300, deadline=None)
@given(raw=st.text(max_size=20).filter(lambda raw: raw.strip().upper() not in {*LOG_LEVELS, *LOG_LEVEL_ALIASES}))
def test_anything_else_is_refused_naming_the_variable(raw):
    with pytest.raises(ImproperlyConfigured, match=r"^LOG_LEVEL="):
        log_level(raw)
