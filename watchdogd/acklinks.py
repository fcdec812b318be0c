"""Acknowledge links: signed, expiring, single-finding tokens a phone can send back.

An ntfy ``http`` action is sent by the phone itself, and everyone subscribed to the topic
sees the message, so the link has to carry its own proof. A token is::

    base64url(payload) "." base64url(HMAC-SHA256(key, DOMAIN + payload))

where the payload is a version byte, the expiry (Unix seconds, 8 bytes big-endian), a
16-byte random nonce and the stored finding key (UTF-8). The key is read from a file
(``[listener] key_file``, at least :data:`MIN_KEY_BYTES`). A token acknowledges the one
finding named in its payload; tampering with the payload breaks the signature. Checking
is constant-time (:func:`hmac.compare_digest`). Single use is the store's part: the
listener records each nonce it honours (``Store.use_ack_link``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

__all__ = ["MIN_KEY_BYTES", "AckLink", "AckLinks", "LinkRefused"]

#: the shortest key accepted: an HMAC-SHA256 key shorter than its output weakens it
MIN_KEY_BYTES = 32
_VERSION = 1
_DOMAIN = b"watchdogd-ack\x00"
_HEAD = struct.Struct(">BQ16s")
#: the longest token accepted (a stored key is at most ~1000 characters of UTF-8)
MAX_TOKEN = 8192


class LinkRefused(Exception):
    """A token that acknowledges nothing; ``status`` is the HTTP answer, the text is plain."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class AckLink:
    """What a valid token says: acknowledge ``finding_key`` once, before ``expires``."""

    finding_key: str
    nonce: str
    expires: datetime


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise LinkRefused(403, "not a valid acknowledge link") from None


class AckLinks:
    """Signs and checks acknowledge links for one key and public URL."""

    def __init__(self, key: bytes, public_url: str, ttl: timedelta) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"listener.key_file: at least {MIN_KEY_BYTES} bytes "
                             f"(got {len(key)})")
        self._key = key
        self.public_url = public_url.rstrip("/")
        self.ttl = ttl

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, _DOMAIN + payload, hashlib.sha256).digest()

    def token(self, finding_key: str, now: datetime) -> str:
        """A fresh token for one finding (a new nonce each call)."""
        expires = int((now + self.ttl).timestamp())
        payload = _HEAD.pack(_VERSION, expires, secrets.token_bytes(16)) \
            + finding_key.encode("utf-8", "surrogatepass")
        return f"{_b64(payload)}.{_b64(self._mac(payload))}"

    def url(self, finding_key: str, now: datetime) -> str:
        """The link to put behind the "acknowledge" button."""
        return f"{self.public_url}/ack/{self.token(finding_key, now)}"

    def check(self, token: str, now: datetime) -> AckLink:
        """The link a token stands for; raises :class:`LinkRefused` (403 forged, 410 expired).

        The signature is checked before anything in the payload is believed.
        """
        if len(token) > MAX_TOKEN or token.count(".") != 1:
            raise LinkRefused(403, "not a valid acknowledge link")
        body, _, mac = token.partition(".")
        payload, signature = _unb64(body), _unb64(mac)
        if not hmac.compare_digest(signature, self._mac(payload)):
            raise LinkRefused(403, "not a valid acknowledge link (bad signature)")
        if len(payload) < _HEAD.size:
            raise LinkRefused(403, "not a valid acknowledge link")
        version, expires, nonce = _HEAD.unpack_from(payload)
        if version != _VERSION:
            raise LinkRefused(403, "not a valid acknowledge link (unknown version)")
        try:
            finding_key = payload[_HEAD.size:].decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            raise LinkRefused(403, "not a valid acknowledge link") from None
        expiry = datetime.fromtimestamp(expires, UTC)
        if now >= expiry:
            raise LinkRefused(410, "this acknowledge link has expired")
        return AckLink(finding_key, nonce.hex(), expiry)
