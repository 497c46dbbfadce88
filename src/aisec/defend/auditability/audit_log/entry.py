"""An audit entry's canonical bytes: what the Merkle tree hashes and the log stores.

An entry is a JSON object whose first member is its position in the log, `{"seq":N,`, followed by the caller's
fields with sorted keys, no spaces, UTF-8 (not \\u escapes) and no NaN or infinity, so that the same fields
always give the same bytes, and verification checks an entry's position with a prefix test, without parsing it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aisec.core.errors import BadInputError

MAX_ENTRY_BYTES = 64 * 1024


def seq_prefix(seq: int) -> bytes:
    """The bytes every entry at position `seq` starts with: b'{"seq":<seq>,'."""
    return b'{"seq":%d,' % seq


def encode_entry(seq: int, fields: Mapping[str, Any]) -> bytes:
    """The canonical bytes of the entry at position `seq` with `fields`: seq_prefix(seq), then the fields as
    json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False) without its "{".
    BadInputError for a field named "seq", no fields, a key that is not text, a value JSON cannot hold (NaN,
    infinity, bytes, objects), text that is not valid Unicode, or more than MAX_ENTRY_BYTES bytes."""
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise BadInputError(f"an audit entry's seq must be a non-negative integer, not {seq!r}")
    if not isinstance(fields, Mapping):
        raise BadInputError(f"an audit entry is a mapping of fields, not {type(fields).__name__}")
    if not fields:
        raise BadInputError("an audit entry needs at least one field besides seq")
    for key in fields:
        if not isinstance(key, str):
            raise BadInputError(f"audit entry field names are text, not {type(key).__name__} ({key!r})")
    if "seq" in fields:
        raise BadInputError("an audit entry may not have a field named 'seq': the log numbers its entries")
    try:
        text = json.dumps(
            dict(fields), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
        body = text.encode("utf-8")
    except (TypeError, ValueError) as error:  # UnicodeEncodeError (a lone surrogate) is a ValueError
        raise BadInputError(f"audit entry {seq}: a field JSON cannot hold exactly ({error})") from None
    content = seq_prefix(seq) + body[1:]
    if len(content) > MAX_ENTRY_BYTES:
        raise BadInputError(
            f"audit entry {seq} is {len(content)} bytes, more than the {MAX_ENTRY_BYTES} allowed: an entry holds "
            "hashes and figures, not data"
        )
    return content


def decode_entry(content: bytes) -> dict[str, Any]:
    """The fields of an entry's bytes, seq included; BadInputError if they are not a JSON object."""
    try:
        fields = json.loads(content)
    except (TypeError, ValueError) as error:
        raise BadInputError(f"an audit entry that is not UTF-8 JSON ({error})") from None
    if not isinstance(fields, dict):
        raise BadInputError(f"an audit entry that is not a JSON object but {type(fields).__name__}")
    return fields
