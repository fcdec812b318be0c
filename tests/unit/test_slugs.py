"""watchdogd's slugs are KubeSpawner's: its published examples and the peer spawner agree."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.peers import simspawner
from watchdogd.slugs import escape_slug, safe_slug


@pytest.mark.parametrize(("name", "slug"), [
    # kubespawner's tests/test_slugs.py
    ("jupyter-alex", "jupyter-alex"),
    ("jupyter-Alex", "jupyter-alex---3a1c285c"),
    ("jupyter-üni", "jupyter-ni---a5aaf5dd"),
    ("endswith-", "endswith---165f1166"),
    ("user@email.com", "user-email-com---0925f997"),
    ("user-_@_emailß.com", "user-email-com---7e3a7efd"),
    ("has.dot", "has-dot---03e27fdf"),  # a dot is valid in a label, not in an object name
    ("z9", "z9"),
    ("9z9", "x-9z9---224de202"),
    ("-start", "start---f587e2dc"),
    ("üser", "ser---73506260"),
    ("username--servername", "username-servername---d957f1de"),
    ("x" * 63, "x" * 63),
])
def test_safe_slug_is_kubespawners(name: str, slug: str) -> None:
    assert safe_slug(name) == slug


@given(st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=80))
def test_safe_slug_agrees_with_the_spawner_that_runs_in_the_real_hub(name: str) -> None:
    assert safe_slug(name) == simspawner.safe_slug(name)


def test_escape_slug_is_the_old_scheme() -> None:
    assert escape_slug("_alice") == "-5falice"
    assert escape_slug("Bob") == "-42ob"
    assert escape_slug("ü") == "-c3-bc"
