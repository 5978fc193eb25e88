"""The JSON API's blueprints, registered with flask-smorest so they appear in the OpenAPI document."""
from collections.abc import Iterable

from flask_smorest import Api

from ..extensions import api
from . import admin, alerts, auth, credits, generate, health, jobs, keys, plans, purchases, support, teams, usage, webhooks
from .bodies import IdConverter

api.register_converter(IdConverter, lambda _converter: {"type": "integer", "minimum": 1})


def register_blueprints(api: Api, features: Iterable[str] | str = "all") -> list[str]:
    """Every blueprint, with the built-in paid features `features` (see built_in_features); with
    none, no route of theirs and no tag in the document. Returns the names served."""
    for module in (auth, credits, alerts, admin):
        api.register_blueprint(module.blp)
    names = built_in_features(features)
    if names:
        api.register_blueprint(generate.features.blueprint(names))
    for module in (jobs, purchases, plans, keys, teams, usage):
        api.register_blueprint(module.blp)
    api.register_blueprint(support.blp)
    api.register_blueprint(support.me)
    api.register_blueprint(purchases.hooks)
    api.register_blueprint(webhooks.blp)
    api.register_blueprint(health.blp)
    return names


def built_in_features(features: Iterable[str] | str) -> list[str]:
    """The names FEATURES (or `create_app(features=...)`) chooses: "all" (the default), "none", or
    names. Refuses to start with a name that is not a built-in feature."""
    names = [features] if isinstance(features, str) else list(features)
    if names == ["all"]:
        return generate.features.names
    if names == ["none"]:
        return []
    for name in names:
        if name not in generate.features.names:
            raise RuntimeError(f"FEATURES: {name!r} is not a built-in feature (built in: "
                               f"{', '.join(generate.features.names)}; an app's own are served by its blueprints)")
    return names
