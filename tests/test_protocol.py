"""The wire format: build, encode, decode and validate a task message (no servers needed)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from yadtq import protocol
from yadtq.errors import MessageTooLarge, ProtocolError


def v1(**fields: Any) -> dict[str, Any]:
    """A valid v1 message object, with ``fields`` replaced (None values are removed)."""
    message = {"v": 1, "id": "abc123", "task": "add", "args": [1, 2], "kwargs": {}}
    message.update(fields)
    return {k: v for k, v in message.items() if v is not None}


def raw(obj: Any) -> bytes:
    return json.dumps(obj).encode()


# --- build and encode ----------------------------------------------------------


def test_built_message_survives_encode_and_decode_unchanged() -> None:
    # Given a message with every field set
    message = protocol.build(
        "add", [1, "two", [3.5, None], {"k": True}], {"scale": 2},
        batch="b-1", index=4, attempt=2, max_retries=3, timeout=1.5,
    )

    # When it is encoded and decoded again
    decoded = protocol.decode(protocol.encode(message))

    # Then nothing changed, and it is not marked as the plain format
    assert decoded == message
    assert decoded.args == (1, "two", [3.5, None], {"k": True})
    assert decoded.kwargs == {"scale": 2}
    assert decoded.plain is False


def test_encoded_message_is_utf8_json_in_the_v1_shape() -> None:
    message = protocol.build("add", ["é"], task_id="fixed-id")

    obj = json.loads(protocol.encode(message).decode("utf-8"))

    assert obj["v"] == 1
    assert obj["id"] == "fixed-id"
    assert obj["task"] == "add"
    assert obj["args"] == ["é"]
    assert obj["kwargs"] == {}
    assert obj["attempt"] == 1
    assert isinstance(obj["submitted_at"], float)
    assert "plain" not in obj


def test_each_built_message_gets_a_fresh_id() -> None:
    ids = {protocol.build("add", [1, 2]).id for _ in range(100)}

    assert len(ids) == 100


@pytest.mark.parametrize(
    "bad, shown",
    [({1, 2}, "{1, 2}"), (object(), "object object"), (float("nan"), "nan")],
    ids=["set", "object", "nan"],
)
def test_non_json_positional_argument_raises_type_error_naming_its_position(
    bad: Any, shown: str
) -> None:
    with pytest.raises(TypeError) as caught:
        protocol.build("add", [1, bad])

    text = str(caught.value)
    assert "argument 1" in text
    assert shown in text
    assert "'add'" in text


@pytest.mark.parametrize(
    "bad", [{1, 2}, object(), float("nan")], ids=["set", "object", "nan"]
)
def test_non_json_keyword_argument_raises_type_error_naming_the_keyword(bad: Any) -> None:
    with pytest.raises(TypeError, match="keyword argument 'scale'"):
        protocol.build("add", [1], {"scale": bad})


def test_non_string_keyword_name_raises_type_error() -> None:
    with pytest.raises(TypeError, match="keyword argument names must be strings"):
        protocol.build("add", [], {1: "x"})


def test_message_over_the_size_limit_raises_message_too_large() -> None:
    message = protocol.build("add", ["x" * 2000])

    with pytest.raises(MessageTooLarge, match="over the 1000-byte limit"):
        protocol.encode(message, max_bytes=1000)


def test_message_at_the_default_limit_is_refused_with_advice() -> None:
    message = protocol.build("add", ["x" * protocol.DEFAULT_MAX_MESSAGE_BYTES])

    with pytest.raises(MessageTooLarge) as caught:
        protocol.encode(message)

    assert "pass a reference" in str(caught.value)
    assert isinstance(caught.value, ProtocolError)


def test_oversized_bytes_are_refused_by_decode_before_parsing() -> None:
    with pytest.raises(MessageTooLarge):
        protocol.decode(b" " * 101, max_bytes=100)


# --- decode rejects, naming the field -------------------------------------------


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"{not json", "not JSON"),
        (b"", "not JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[1, 2, 3]", "must be a JSON object, got list"),
        (b'"a string"', "must be a JSON object, got str"),
        (b"null", "must be a JSON object, got NoneType"),
        (b"[" * 100_000, "nested too deeply"),
    ],
    ids=["not-json", "empty", "not-utf8", "array", "string", "null", "deep"],
)
def test_decode_rejects_bytes_that_are_not_a_json_object(data: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        protocol.decode(data)


def test_decode_rejects_a_tombstone() -> None:
    with pytest.raises(ProtocolError, match="tombstone"):
        protocol.decode(None)


@pytest.mark.parametrize(
    "obj, reason",
    [
        (v1(id=None), "missing field 'id'"),
        (v1(task=None), "missing field 'task'"),
        (v1(args={"a": 1}), "field 'args' must be list, got dict"),
        (v1(args="1,2"), "field 'args' must be list, got str"),
        (v1(kwargs=[1]), "field 'kwargs' must be dict, got list"),
        (v1(attempt="2"), "field 'attempt' must be int, got str"),
        (v1(attempt=True), "field 'attempt' must be int, got a boolean"),
        (v1(attempt=1.5), "field 'attempt' must be int, got float"),
        (v1(attempt=0), "field 'attempt' must be at least 1"),
        (v1(max_retries=-1), "field 'max_retries' must not be negative"),
        (v1(index=-1), "field 'index' must not be negative"),
        (v1(index="0"), "field 'index' must be int or null, got str"),
        (v1(timeout=0), "field 'timeout' must be a positive number"),
        (v1(timeout="5"), "field 'timeout' must be int or float or null, got str"),
        (v1(batch=7), "field 'batch' must be str or null, got int"),
        (v1(batch="has space"), "field 'batch' is not a valid id"),
        (v1(task=5), "field 'task' must be a task name"),
        (v1(task="1starts-with-digit"), "field 'task' must be a task name"),
        (v1(v=2), "unsupported message version 2"),
        (v1(v=True), "unsupported message version True"),
        (v1(v="1"), "unsupported message version '1'"),
        (v1(id="has space"), "task id 'has space' is not valid"),
        (v1(id="a/b"), "task id 'a/b' is not valid"),
        (v1(id=""), "task id '' is not valid"),
        (v1(id="x" * 129), "is not valid: use 1-128"),
        (v1(id=12), "task id 12 is not valid"),
        ({"task": "add", "args": []}, "no 'v' field and no task id"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_decode_rejects_an_invalid_message_naming_the_field(
    obj: dict[str, Any], reason: str
) -> None:
    with pytest.raises(ProtocolError) as caught:
        protocol.decode(raw(obj))

    assert reason in str(caught.value)


# --- the plain format -------------------------------------------------------------


@pytest.mark.parametrize("id_field", ["task-id", "task_id", "id"])
def test_plain_format_decodes_with_any_id_spelling(id_field: str) -> None:
    message = protocol.decode(raw({id_field: "abc", "task": "add", "args": [1, 2]}))

    assert message.plain is True
    assert message.id == "abc"
    assert message.task == "add"
    assert message.args == (1, 2)
    assert message.kwargs == {}
    assert message.attempt == 1


def test_plain_format_without_args_runs_with_none() -> None:
    message = protocol.decode(b'{"task-id": "abc", "task": "add"}')

    assert message.args == ()
    assert message.plain is True


def test_plain_format_is_validated_like_v1() -> None:
    with pytest.raises(ProtocolError, match="field 'args' must be list"):
        protocol.decode(b'{"task-id": "abc", "task": "add", "args": 3}')


# --- robustness -----------------------------------------------------------------


def test_decode_of_random_bytes_only_ever_raises_protocol_error() -> None:
    # Given a few thousand random inputs: pure noise, and mutations of a valid message
    rng = random.Random(0)
    valid = protocol.encode(protocol.build("add", [1, 2], batch="b-1", index=0))
    inputs = [rng.randbytes(rng.randrange(0, 64)) for _ in range(2000)]
    for _ in range(2000):
        mutated = bytearray(valid)
        for _ in range(rng.randrange(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        inputs.append(bytes(mutated))

    # When each is decoded, then it is either a message or a ProtocolError, nothing else
    accepted = 0
    for data in inputs:
        try:
            protocol.decode(data)
        except ProtocolError:
            continue
        except Exception as exc:  # noqa: BLE001 - the point of the test
            pytest.fail(f"decode({data!r}) raised {type(exc).__name__}: {exc}")
        accepted += 1
    assert accepted > 0, "the mutations never produced a valid message; the fuzz is too weak"


def test_decode_rejects_a_huge_integer_with_protocol_error() -> None:
    data = b'{"v": 1, "id": "a", "task": "add", "args": [' + b"9" * 5000 + b"]}"

    with pytest.raises(ProtocolError):
        protocol.decode(data)


@pytest.mark.parametrize(
    "data",
    [
        b'{"v": 1, "id": "a", "task": "add", "args": [NaN]}',
        b'{"v": 1, "id": "a", "task": "add", "kwargs": {"x": -Infinity}}',
        b'{"v": 1, "id": "a", "task": "add", "submitted_at": Infinity}',
    ],
    ids=["args", "kwargs", "submitted_at"],
)
def test_whatever_decode_accepts_can_be_encoded_again(data: bytes) -> None:
    try:
        message = protocol.decode(data)
    except ProtocolError:
        return  # rejecting the message is also correct
    assert protocol.decode(protocol.encode(message)).id == message.id
