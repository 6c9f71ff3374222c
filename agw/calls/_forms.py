"""
The bodies of OpenAI's WebRTC endpoints, read and written (pure): the
multipart form of C{POST /v1/realtime/calls} (C{sdp} and C{session}), a
client secret request's C{expires_after}, and the call id in the
provider's C{Location}.
"""

from __future__ import annotations

import json
import re
import secrets
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from agw.config import MAX_SECRET_SECONDS, MIN_SECRET_SECONDS

# A provider's client secret as it may appear in the provider's own error messages (masked or not).
PROVIDER_SECRET = re.compile(r"ek_[A-Za-z0-9_\-*.]*")
# A provider's call id as agw passes it on (a URL path segment and a query value): OpenAI's are rtc_<hex>.
CALL_ID = re.compile(r"[A-Za-z0-9_\-]{1,128}")


class BadForm(Exception):
    """The client's body cannot be used: C{message} says why (answered 400)."""

    def __init__(self, message: str, code: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.message, self.code = message, code


def media_type(content_type: str | None) -> str:
    """The media type of a C{Content-Type} value, lower-case, without parameters."""
    return (content_type or "").partition(";")[0].strip().lower()


def parse_call_form(body: bytes, content_type: str) -> tuple[str, dict[str, Any] | None]:
    """
    The C{sdp} (text) and C{session} (a JSON object, if given) parts of a
    C{multipart/form-data} body; raises L{BadForm}.
    """
    head = f"MIME-Version: 1.0\r\nContent-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise BadForm("the multipart body could not be read (its boundary?)")
    parts: dict[str, bytes] = {}
    for part in message.iter_parts():  # type: ignore[attr-defined]
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str) and name in ("sdp", "session"):
            if name in parts:
                raise BadForm(f"the form has two {name!r} parts")
            parts[name] = _payload(part)
    if not parts.get("sdp", b"").strip():
        raise BadForm("the form has no 'sdp' part (the SDP offer)")
    try:
        sdp = parts["sdp"].decode("utf-8")
    except UnicodeDecodeError:
        raise BadForm("the 'sdp' part is not UTF-8 text") from None
    if "session" not in parts:
        return sdp, None
    try:
        session = json.loads(parts["session"])
    except ValueError:
        raise BadForm("the 'session' part is not JSON") from None
    if not isinstance(session, dict):
        raise BadForm("the 'session' part must be a JSON object")
    return sdp, session


def _payload(part: Message) -> bytes:
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def call_form(sdp: str, session: dict[str, Any]) -> tuple[bytes, str]:
    """A C{multipart/form-data} body with the C{sdp} and C{session} parts, and its C{Content-Type}."""
    boundary = "agw-" + secrets.token_hex(16)
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="sdp"\r\nContent-Type: application/sdp\r\n\r\n{sdp}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="session"\r\nContent-Type: application/json\r\n\r\n'
        f"{json.dumps(session)}\r\n--{boundary}--\r\n"
    )
    return body.encode("utf-8"), f"multipart/form-data; boundary={boundary}"


def secret_seconds(expires_after: Any, cap: int) -> int:
    """
    The lifetime a client secret request gets: its C{expires_after.seconds}
    (anchored at C{created_at}), at most C{cap}; C{cap} if it asks for none.
    Raises L{BadForm} for what OpenAI would refuse.
    """
    if expires_after is None:
        return cap
    if not isinstance(expires_after, dict) or set(expires_after) - {"anchor", "seconds"}:
        raise BadForm("expires_after must be an object with anchor and seconds")
    if expires_after.get("anchor", "created_at") != "created_at":
        raise BadForm("expires_after.anchor must be created_at")
    seconds = expires_after.get("seconds", cap)
    if not isinstance(seconds, int) or isinstance(seconds, bool) or not MIN_SECRET_SECONDS <= seconds <= MAX_SECRET_SECONDS:
        raise BadForm(f"expires_after.seconds must be a whole number from {MIN_SECRET_SECONDS} to {MAX_SECRET_SECONDS}")
    return min(seconds, cap)


def call_id_of(location: str | None) -> str | None:
    """The call id the provider's C{Location} ends with (C{/v1/realtime/calls/rtc_…}), if it is one agw can use."""
    if not location:
        return None
    candidate = location.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return candidate if CALL_ID.fullmatch(candidate) else None


def scrubbed_session(session: Any, secret: str) -> dict[str, Any] | None:
    """
    The provider's C{session} object as the client may see it: without any
    C{client_secret} field, and nothing at all if the provider's secret
    still appears anywhere in it.
    """
    if not isinstance(session, dict):
        return None
    kept = {name: value for name, value in session.items() if name != "client_secret"}
    return None if secret and secret in json.dumps(kept) else kept


def without_provider_secrets(value: Any) -> Any:
    """C{value} (a provider's JSON error) with anything that looks like a provider client secret replaced."""
    if isinstance(value, str):
        return PROVIDER_SECRET.sub("ek_<redacted>", value)
    if isinstance(value, dict):
        return {name: without_provider_secrets(item) for name, item in value.items()}
    if isinstance(value, list):
        return [without_provider_secrets(item) for item in value]
    return value
