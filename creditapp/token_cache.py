"""Verified tokens remembered for their lifetime, so that a token sent again is not verified again.

flask-jwt-extended decodes a token three times per request (its header, its claims unverified,
then the signature and the claims): a tenth of a paid request's CPU. A token that verified once
stays valid until its `exp` (its iat and nbf only get more valid), so the claims are kept,
keyed by the token's exact string and the settings that verified it (key, algorithms, audience,
issuer, leeway): a token that differs in one byte, or an app with another key, is verified
afresh. What can end a token early is checked on every request still: the logout and
disabled-account check (token_in_blocklist_loader) runs after this, cached or not.
"""
import threading
import time
from collections import OrderedDict

from flask_jwt_extended import JWTManager
from flask_jwt_extended.config import config
from flask_jwt_extended.default_callbacks import default_decode_key_callback

MAX_TOKENS = 4096  # a worker's recent callers; the oldest is forgotten first


class CachingJWTManager(JWTManager):
    def __init__(self, *args, max_tokens: int = MAX_TOKENS, **kwargs):
        super().__init__(*args, **kwargs)
        self._verified: OrderedDict[tuple, tuple[float, dict]] = OrderedDict()
        self._lock = threading.Lock()
        self._max_tokens = max_tokens

    def _decode_jwt_from_config(self, encoded_token: str, csrf_value=None, allow_expired: bool = False) -> dict:
        if allow_expired or self._decode_key_callback is not default_decode_key_callback:
            return super()._decode_jwt_from_config(encoded_token, csrf_value, allow_expired)
        key = (encoded_token, csrf_value, config.decode_key, tuple(config.decode_algorithms),
               str(config.decode_audience), config.decode_issuer, config.leeway, config.identity_claim_key)
        now = time.time()
        with self._lock:
            found = self._verified.get(key)
            if found is not None:
                if found[0] > now:
                    self._verified.move_to_end(key)
                    return dict(found[1])
                del self._verified[key]
        claims = super()._decode_jwt_from_config(encoded_token, csrf_value, allow_expired)
        expires = claims.get("exp")
        if isinstance(expires, (int, float)):
            with self._lock:
                self._verified[key] = (expires + config.leeway, dict(claims))
                if len(self._verified) > self._max_tokens:
                    self._verified.popitem(last=False)
        return claims
