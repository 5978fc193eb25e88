"""creditapp's own tests run on its pytest kit (creditapp.testing): an app on a migrated database
of each test's own, on SQLite and PostgreSQL (pytest.ini, `creditapp_databases`), users made
through the service and logged in through the real login route."""
import pytest

pytest_plugins = ["creditapp.testing"]


@pytest.fixture
def stub(fake_ai):
    """The AI provider of `app` (the kit's FakeAI), by the name the older tests use."""
    return fake_ai
