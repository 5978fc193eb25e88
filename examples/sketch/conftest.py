"""The kit's fixtures come with the installed package (its pytest11 entry point); this app only
adds its blueprint to the kit's apps. Its settings class is pytest.ini's `creditapp_config`."""
import pytest

from sketch import blp


@pytest.fixture
def creditapp_blueprints():
    return [blp]

