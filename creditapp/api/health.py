from flask_smorest import Blueprint
from sqlalchemy import text

from ..database import atomic
from ..schemas import ErrorSchema, HealthSchema

blp = Blueprint("health", __name__, description="Liveness.")


@blp.get("/healthz")
@blp.response(200, HealthSchema)
@blp.alt_response(503, schema=ErrorSchema, description="The database does not answer")
def healthz():
    """200 when the database answers; 503 database_unavailable otherwise."""
    with atomic(write=False) as session:
        session.execute(text("SELECT 1"))
    return {"status": "ok"}
