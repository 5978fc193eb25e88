"""The paid AI features. Each view: reserve (the decorator), call the AI, settle."""
from flask import g

from ..ai import ai_service, count_tokens
from ..auth import require_login
from ..features import cost_of, price
from ..ledger import CreditType, credit_service
from .bodies import Blueprint
from .guard import require_credits
from .schemas import (
    CompleteSchema, CompletionResponseSchema, ErrorSchema, GenerateSchema, GenerationResponseSchema,
    HairstyleSchema, ImageSchema, UpscaleSchema,
)

blp = Blueprint("generate", __name__, url_prefix="/api", description="Paid AI features.")
blp.before_request(require_login())


def paid(view):
    """Answers of paid routes beyond the ones require_credits documents itself."""
    view = blp.alt_response(429, schema=ErrorSchema, description="Too many requests from this user")(view)
    return blp.alt_response(502, schema=ErrorSchema, description="The AI provider failed; nothing was charged")(view)


def _charge_and_answer(result: dict, amount: int, **extra) -> dict:
    info = g.credit_info
    balance = credit_service.deduct_credits(info.user_id, amount, info.credit_type)
    return {
        "result": result,
        "charged": {"credit_type": info.credit_type.value, "amount": amount},
        "balance": balance.as_dict(),
        **extra,
    }


def _image_feature(feature: str, params: dict) -> dict:
    result = ai_service.generate_image(params, feature=feature)
    return _charge_and_answer(result, g.credit_info.required)


@blp.post("/generate")
@blp.arguments(GenerateSchema)
@blp.response(200, GenerationResponseSchema)
@paid
@require_credits(price("basic_generation"), CreditType.GENERATION_CREDITS)
def generate_image(params):
    """Generate an image from a prompt."""
    return _image_feature("basic_generation", params)


@blp.post("/generate/professional-photo")
@blp.arguments(ImageSchema)
@blp.response(200, GenerationResponseSchema)
@paid
@require_credits(price("professional_photo"), CreditType.GENERATION_CREDITS)
def professional_photo(params):
    """Turn a photo into a professional portrait."""
    return _image_feature("professional_photo", params)


@blp.post("/generate/hairstyle")
@blp.arguments(HairstyleSchema)
@blp.response(200, GenerationResponseSchema)
@paid
@require_credits(price("change_hairstyle"), CreditType.GENERATION_CREDITS)
def change_hairstyle(params):
    """Show the person in a photo with another hairstyle."""
    return _image_feature("change_hairstyle", params)


@blp.post("/generate/upscale")
@blp.arguments(UpscaleSchema)
@blp.response(200, GenerationResponseSchema)
@paid
@require_credits(price("upscale"), CreditType.GENERATION_CREDITS)
def upscale(params):
    """Upscale an image 2 or 4 times."""
    return _image_feature("upscale", params)


def _token_estimate(params: dict) -> int:
    """Reserve for the worst case: the whole prompt and every completion token asked for."""
    return (count_tokens(params["prompt"]) + params["max_tokens"]) * cost_of("ai_complete")


@blp.post("/ai/complete")
@blp.arguments(CompleteSchema)
@blp.response(200, CompletionResponseSchema)
@paid
@require_credits(_token_estimate, CreditType.AI_TOKENS)
def complete(params):
    """Complete a prompt; reserves the worst case, charges the tokens actually used."""
    completion = ai_service.complete(params["prompt"], params["max_tokens"])
    usage = {
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "total_tokens": completion.total_tokens,
    }
    return _charge_and_answer(
        {"text": completion.text}, completion.total_tokens * cost_of("ai_complete"), usage=usage
    )
