import pytest

from sketch import blp

pytest_plugins = ["creditapp.testing"]


@pytest.fixture
def creditapp_blueprints():
    return [blp]


@pytest.fixture
def creditapp_settings():
    return {"FEATURES": []}  # as wsgi_sketch.py: sketches only
