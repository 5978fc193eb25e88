"""Liveness and readiness, for load balancers and orchestrators."""
from ..database import migration_status
from .bodies import Blueprint
from .errors import error_response
from .schemas import ErrorSchema, HealthSchema, ReadySchema

blp = Blueprint("health", __name__, description="Liveness and readiness.")


@blp.get("/healthz")
@blp.response(200, HealthSchema)
def healthz():
    """200 while the process serves requests; touches nothing else."""
    return {"status": "ok"}


@blp.get("/readyz")
@blp.response(200, ReadySchema)
@blp.alt_response(503, schema=ErrorSchema, description="database_unavailable or migrations_pending")
def readyz():
    """200 when the database answers and its schema is at the code's migration head."""
    revision, head, pending = migration_status()  # revision None: the schema was never created
    if pending:
        return error_response(
            503, "migrations_pending", f"The database is at revision {revision}; this code needs {head}."
        )
    return {"status": "ready", "migration": revision}
