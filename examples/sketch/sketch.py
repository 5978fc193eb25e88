"""A paid feature of an app built on creditapp: pencil sketches, one credit each."""
from creditapp import (
    Blueprint, CreditType, GenerateSchema, GenerationResponseSchema, ai_service, charge_and_answer, paid_feature,
)

blp = Blueprint("sketch", __name__, url_prefix="/api", description="Pencil sketches.")


@paid_feature(blp, "/generate/sketch", name="sketch", credit_type=CreditType.GENERATION_CREDITS, price=1,
              request=GenerateSchema, response=GenerationResponseSchema)
def sketch(params):
    """Draw a pencil sketch of a prompt."""
    return charge_and_answer(ai_service.generate_image(params, feature="sketch"))
