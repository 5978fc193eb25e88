"""The paid AI features: each one declaration and a view that calls the AI and answers."""
from ..ai import ai_service, count_tokens
from ..features import cost_of
from ..ledger import CreditType
from .paid import PaidFeatures, charge_and_answer
from .streaming import streamed_completion
from .schemas import (
    CompleteSchema, CompletionResponseSchema, GenerateSchema, GenerationResponseSchema, HairstyleSchema,
    ImageSchema, UpscaleSchema,
)

# Each app serves those it chooses (FEATURES, `create_app(features=...)`): `features.blueprint(names)`.
features = PaidFeatures("generate", __name__, url_prefix="/api", description="Paid AI features.")
IMAGE = {"credit_type": CreditType.GENERATION_CREDITS, "response": GenerationResponseSchema}


@features.paid_feature("/generate", name="basic_generation", price=1, request=GenerateSchema, **IMAGE)
def generate_image(params):
    """Generate an image from a prompt."""
    return charge_and_answer(ai_service.generate_image(params, feature="basic_generation"))


@features.paid_feature("/generate/professional-photo", name="professional_photo", price=1, request=ImageSchema, **IMAGE)
def professional_photo(params):
    """Turn a photo into a professional portrait."""
    return charge_and_answer(ai_service.generate_image(params, feature="professional_photo"))


@features.paid_feature("/generate/hairstyle", name="change_hairstyle", price=1, request=HairstyleSchema, **IMAGE)
def change_hairstyle(params):
    """Show the person in a photo with another hairstyle."""
    return charge_and_answer(ai_service.generate_image(params, feature="change_hairstyle"))


@features.paid_feature("/generate/upscale", name="upscale", price=2, request=UpscaleSchema, **IMAGE)
def upscale(params):
    """Upscale an image 2 or 4 times."""
    return charge_and_answer(ai_service.generate_image(params, feature="upscale"))


def _worst_case(params: dict, price: int) -> int:
    """Hold for the whole prompt and every completion token asked for."""
    return (count_tokens(params["prompt"]) + params["max_tokens"]) * price


# Each server-sent event, as SSE parsers (and schemathesis) read one: its `data` is one JSON object.
STREAMED = {"responses": {200: {"content": {"text/event-stream": {
    "schema": {"type": "object", "required": ["data"], "properties": {
        "data": {"type": "string", "description": 'one JSON object: {"type": "delta", "text"}, then '
                                                  '{"type": "done", "charged", "balance", "usage"} or '
                                                  '{"type": "error", "error", "message", "charged", "balance"}'},
        "event": {"type": "string"}}},
    "example": 'data: {"type":"delta","text":"lorem"}\n\ndata: {"type":"done","charged":{"credit_type":"ai_tokens",'
               '"amount":12},"balance":{"generation_credits":0,"ai_tokens":988},"usage":{"prompt_tokens":7,'
               '"completion_tokens":5,"total_tokens":12}}\n\n'}}}}}


@features.paid_feature("/ai/complete", name="ai_complete", credit_type=CreditType.AI_TOKENS, price=1,
                       unit="token", hold=_worst_case, request=CompleteSchema, response=CompletionResponseSchema,
                       doc=STREAMED)
def complete(params):
    """Complete a prompt; holds the worst case, charges the tokens actually used. With `"stream":
    true`, answers `text/event-stream` (see creditapp.api.streaming)."""
    if params.get("stream"):
        return streamed_completion(params)
    completion = ai_service.complete(params["prompt"], params["max_tokens"])
    usage = {
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "total_tokens": completion.total_tokens,
    }
    return charge_and_answer({"text": completion.text}, completion.total_tokens * cost_of("ai_complete"),
                             usage=usage)
