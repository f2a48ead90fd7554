"""Signing task messages with the shared secret (bottom layer): the one signing rule
every path to a worker applies (``check_signature``), and the HMAC ``protocol.encode``
appends. Kept apart from the wire format's parsing so both stay readable.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from typing import Any

from yadtq.errors import ProtocolError

_SIG_LAST = re.compile(rb',"sig":"([0-9a-f]{64})"}$')  # how encode appends the signature


def signature(payload: dict[str, Any], secret: str) -> str:
    """Hex HMAC-SHA256 of the canonical form of ``payload`` (its ``sig`` left out)."""
    unsigned = {k: v for k, v in payload.items() if k != "sig"}
    return hmac_hex(secret, canonical(unsigned).encode())


def canonical(payload: dict[str, Any]) -> str:
    """The text a signature covers: sorted keys, no spaces, no NaN."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)


def hmac_hex(secret: str, data: bytes) -> str:
    """Hex HMAC-SHA256 of ``data`` with the shared secret."""
    return hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()


def check_signature(obj: Mapping[str, Any], data: bytes, secret: str,
                    require_signed: bool = True) -> None:
    """Refuse a message that breaks the signing rule, the same on every path to a worker.

    The rule: a message that carries a ``sig`` must match it (the HMAC of its
    canonical payload); one that carries code or pickled arguments must be
    signed; a plain JSON call of a registered task must be signed only where
    ``require_signed``. A message as ``encode`` writes it is checked over its
    own bytes: with the appended ``"sig"`` cut off, they are the canonical text
    that was signed, and ``obj`` is what they parse to (plus ``sig``).

    Raises:
        ProtocolError: the rule is broken; the text says how and what to do.
    """
    claimed = obj.get("sig")
    if claimed is None:
        if obj.get("code") is not None or obj.get("pickled") is not None:
            raise ProtocolError("message carries code or pickled arguments but is not "
                                "signed; such messages must be signed with the shared secret "
                                "(YADTQ_SECRET)")
        if require_signed:
            raise ProtocolError("message is not signed, and this worker requires signed "
                                "messages (YADTQ_REQUIRE_SIGNED, on by default with "
                                "YADTQ_SECRET); sign it with the shared secret")
        return
    if not isinstance(claimed, str):
        raise ProtocolError(f"field 'sig' must be a hex string, got {type(claimed).__name__}")
    last = _SIG_LAST.search(data)
    if last is not None and hmac.compare_digest(
            last.group(1), hmac_hex(secret, data[:last.start()] + b"}").encode()):
        return
    try:
        expected = signature(obj, secret)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"message cannot be put in canonical form to check it: {exc}") from None
    if not hmac.compare_digest(claimed.encode("utf-8", "replace"), expected.encode()):
        raise ProtocolError("message signature does not match its payload: forged, altered, "
                            "or signed with another secret (the sender's YADTQ_SECRET is not "
                            "this worker's)")
