"""Reference routes for the benchmark suite (bench/), registered only when BENCHMARK_ROUTES is
on: the cost of the framework alone, and of verifying a token, measured in the same app."""
from flask import Blueprint, jsonify
from flask_jwt_extended import get_jwt_identity, verify_jwt_in_request

blp = Blueprint("bench", __name__, url_prefix="/api/bench")


@blp.get("/control")
def control():
    """No authentication, no database."""
    return jsonify(status="ok")


@blp.get("/jwt")
def jwt_only():
    """Verifies the token; no database."""
    verify_jwt_in_request()
    return jsonify(user=get_jwt_identity())
