"""What the webhooks package refuses, each raised before anything is written."""


class WebhookError(Exception):
    """Base class of the webhooks package's errors."""


class UnknownEndpoint(WebhookError):
    """No webhook endpoint with that id."""


class UnknownDelivery(WebhookError):
    """No delivery with that id for that endpoint."""


class InvalidEndpointUrl(WebhookError):
    """The URL is not http(s), carries credentials, or names an address deliveries may not reach."""


class EndpointDisabled(WebhookError):
    """The endpoint is disabled: enable it (PATCH "disabled": false) before retrying a delivery."""
