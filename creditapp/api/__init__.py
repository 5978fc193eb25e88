"""The JSON API's blueprints, registered with flask-smorest so they appear in the OpenAPI document."""
from flask_smorest import Api

from ..extensions import api
from . import admin, alerts, auth, credits, generate, health, jobs, keys, plans, purchases, support, teams, usage, webhooks
from .bodies import IdConverter

api.register_converter(IdConverter, lambda _converter: {"type": "integer", "minimum": 1})


def register_blueprints(api: Api) -> None:
    for module in (auth, credits, alerts, admin, generate, jobs, purchases, plans, keys, teams, usage):
        api.register_blueprint(module.blp)
    api.register_blueprint(support.blp)
    api.register_blueprint(support.me)
    api.register_blueprint(purchases.hooks)
    api.register_blueprint(webhooks.blp)
    api.register_blueprint(health.blp)
