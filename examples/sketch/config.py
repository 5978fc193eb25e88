"""This app's settings, built on creditapp's: read from the environment like creditapp's own, with
what this app changes. CREDITAPP_ENV picks the class."""
from pathlib import Path

from creditapp import settings

HERE = Path(__file__).resolve().parent


class SketchSettings:
    # This app sells sketches only: none of creditapp's built-in paid routes.
    FEATURES: list[str] = []
    # The sketches table's migration, upgraded with creditapp's (`creditapp --app wsgi_sketch db upgrade heads`).
    MIGRATION_DIRS = [str(HERE / "migrations")]


class DevelopmentConfig(SketchSettings, settings.DevelopmentConfig):
    pass


class ProductionConfig(SketchSettings, settings.ProductionConfig):
    pass


class TestingConfig(SketchSettings, settings.TestingConfig):
    pass


CONFIGS = {"development": DevelopmentConfig, "production": ProductionConfig, "testing": TestingConfig}


def config_from_env() -> type:
    return CONFIGS[settings.config_from_env().CREDITAPP_ENV]
