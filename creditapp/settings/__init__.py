"""creditapp's settings: the classes an app's config.py builds on, and the checks create_app runs.

`config_from_env()` picks the class by CREDITAPP_ENV; every class reads the environment when this
package is first imported, so set the environment before that.
"""
from .checks import (MAX_HOLD_TTL_SECONDS, MAX_IDEMPOTENCY_TTL_SECONDS, MIN_SECRET_LENGTH, check_config,
                     low_balance_thresholds)
from .classes import CONFIGS, Config, DevelopmentConfig, ProductionConfig, TestingConfig, config_from_env

__all__ = [
    "CONFIGS", "Config", "DevelopmentConfig", "MAX_HOLD_TTL_SECONDS", "MAX_IDEMPOTENCY_TTL_SECONDS",
    "MIN_SECRET_LENGTH", "ProductionConfig", "TestingConfig", "check_config", "config_from_env",
    "low_balance_thresholds",
]
