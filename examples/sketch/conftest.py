import pytest

from sketch import blp

pytest_plugins = ["creditapp.testing"]


@pytest.fixture
def creditapp_blueprints():
    return [blp]
