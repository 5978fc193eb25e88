"""A paid feature of an app built on creditapp: pencil sketches, one credit each, every sketch
kept in the app's own table (`sketches`, made by this app's migration in migrations/)."""
import sqlalchemy as sa
from flask import g

from creditapp import (Blueprint, CreditType, GenerateSchema, GenerationResponseSchema, ai_service, charge_and_answer,
                       db, paid_feature, utcnow)

blp = Blueprint("sketch", __name__, url_prefix="/api", description="Pencil sketches.")

# On creditapp's metadata, so the kit empties it between tests with creditapp's own tables.
sketches = sa.Table(
    "sketches", db.metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("prompt", sa.Text, nullable=False),
    sa.Column("image_url", sa.Text, nullable=False),
    sa.Column("drawn_at", sa.DateTime(timezone=True), nullable=False),
)


@paid_feature(blp, "/generate/sketch", name="sketch", credit_type=CreditType.GENERATION_CREDITS, price=1,
              request=GenerateSchema, response=GenerationResponseSchema)
def sketch(params):
    """Draw a pencil sketch of a prompt."""
    result = ai_service.generate_image(params, feature="sketch")
    answer = charge_and_answer(result)
    # Kept before the answer goes: if this write fails the request fails, and the hold is given back.
    with db.engine.begin() as connection:
        connection.execute(sketches.insert().values(
            user_id=g.credit_info.user_id, prompt=params["prompt"], image_url=result["image_url"],
            drawn_at=utcnow()))
    return answer
