"""The wire format: build, encode, decode and validate a task message (no servers needed)."""

from __future__ import annotations

import json
import random
from typing import Any

import hypothesis.internal.conjecture.optimiser  # noqa: F401 - see below
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

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


@pytest.mark.parametrize(
    "data",
    [
        b'{"v": 1, "id": "a", "task": "add", "args": [1e400]}',
        b'{"v": 1, "id": "a", "task": "add", "kwargs": {"x": -1e400}}',
        b'{"v": 1, "id": "a", "task": "add", "submitted_at": 1e400}',
    ],
    ids=["args", "kwargs", "submitted_at"],
)
def test_a_number_too_large_for_a_float_is_refused_as_out_of_range(data: bytes) -> None:
    # json.loads would read 1e400 as inf, which no worker could encode again on retry or reap
    with pytest.raises(ProtocolError, match="out of range"):
        protocol.decode(data)


# --- fuzzing the decoder (hypothesis) --------------------------------------------

SECRET = "fuzz-secret"
FIELDS = ["v", "id", "task-id", "task_id", "task", "args", "kwargs", "batch", "index",
          "attempt", "max_retries", "timeout", "submitted_at", "retry_on", "retry_backoff",
          "sig"]

json_scalars = (
    st.none() | st.booleans() | st.integers() | st.integers(min_value=-3, max_value=3)
    | st.floats() | st.text(max_size=20)
    | st.sampled_from(["add", "abc-1", "b-1", "", "x" * 200, "ConnectionError", "NaN"])
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
ids = st.from_regex(r"[A-Za-z0-9_.:-]{1,128}", fullmatch=True)
finite = st.floats(allow_nan=False, allow_infinity=False)
well_typed_v1 = st.fixed_dictionaries(
    {"v": st.just(1), "id": ids, "task": st.from_regex(r"[A-Za-z_][A-Za-z0-9_.:-]{0,20}",
                                                        fullmatch=True)},
    optional={
        "args": st.lists(json_values, max_size=4),
        "kwargs": st.dictionaries(st.text(max_size=8), json_values, max_size=4),
        "batch": st.none() | ids,
        "index": st.none() | st.integers(min_value=0),
        "attempt": st.integers(min_value=1),
        "max_retries": st.none() | st.integers(min_value=0),
        "timeout": st.none() | st.floats(min_value=0.001, allow_infinity=False),
        "submitted_at": st.none() | finite,
        "retry_on": st.lists(st.text(max_size=20), max_size=3),
        "retry_backoff": st.none() | st.floats(min_value=0, allow_infinity=False),
    },
)
message_dicts = (
    # a message whose every field has the right type, so the value checks are reached
    well_typed_v1
    # anything keyed by the fields the decoder looks at, and by other names
    | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), json_values, max_size=10)
    # a valid v1 core with arbitrary values in the other fields, to reach deeper checks
    | st.builds(
        lambda extra: {"v": 1, "id": "abc-1", "task": "add", **extra},
        st.dictionaries(st.sampled_from(FIELDS[4:]), json_values, max_size=6),
    )
)


def decode_or_refuse(data: bytes, secret: str | None) -> protocol.TaskMessage | None:
    """Decode ``data``; a ProtocolError is a refusal, any other exception fails the test."""
    try:
        message = protocol.decode(data, secret=secret)
    except ProtocolError:
        return None
    # What a worker accepts it must be able to produce again (retry, reaper)
    assert protocol.decode(protocol.encode(message, secret=secret), secret=secret).id == \
        message.id
    return message


# Hypothesis imports its optimiser in the middle of a run. On CPython 3.11.7, compiling a
# module after a RecursionError (deeply nested JSON, which decode refuses) can fail with
# "SystemError: AST constructor recursion depth mismatch"; it is imported above instead.
FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("secret", [None, SECRET], ids=["unsigned", "with-secret"])
@FUZZ
@given(data=st.binary(max_size=300))
def test_decode_of_any_bytes_only_ever_raises_protocol_error(
    secret: str | None, data: bytes
) -> None:
    decode_or_refuse(data, secret)


@pytest.mark.parametrize("secret", [None, SECRET], ids=["unsigned", "with-secret"])
@FUZZ
@given(obj=message_dicts, sign=st.booleans(), sig=st.none() | st.text(max_size=70))
@example(obj={"v": 1, "id": "abc-1", "task": "add"}, sign=False, sig="\x80")
def test_decode_of_any_json_object_only_ever_raises_protocol_error(
    secret: str | None, obj: dict[str, Any], sign: bool, sig: str | None
) -> None:
    # Given any JSON object, NaN and Infinity included, with any "sig" or a right one
    if sig is not None:
        obj = {**obj, "sig": sig}
    if secret and sign:
        try:
            obj = {**obj, "sig": protocol.signature(obj, secret)}
        except ValueError:
            pass  # NaN cannot be signed; the unsigned object is still a good input
    data = json.dumps(obj).encode()

    # When it is decoded, then it is a message or a ProtocolError, nothing else
    decode_or_refuse(data, secret)


def test_a_signature_with_a_non_ascii_character_is_refused_as_forged() -> None:
    data = json.dumps({"v": 1, "id": "abc-1", "task": "add", "sig": "é" * 64}).encode()

    with pytest.raises(ProtocolError, match="signature"):
        protocol.decode(data, secret=SECRET)


# --- signed messages ----------------------------------------------------------------


def test_encode_signs_the_canonical_payload_and_appends_the_signature_last() -> None:
    message = protocol.build("add", [1, 2], task_id="abc-1", batch="b-1", index=0)

    data = protocol.encode(message, secret=SECRET)

    # The signature is the wire format's: the HMAC of the canonical payload without "sig"
    obj = json.loads(data)
    assert obj["sig"] == protocol.signature(obj, SECRET)
    assert data.endswith(b',"sig":"%s"}' % obj["sig"].encode())
    assert protocol.decode(data, secret=SECRET) == message


def test_a_signed_message_laid_out_otherwise_is_still_accepted() -> None:
    # Given a message signed by hand: the same payload, "sig" first and spaces between
    signed = json.loads(protocol.encode(protocol.build("add", [1, 2], task_id="abc-1"),
                                        secret=SECRET))
    data = json.dumps({"sig": signed.pop("sig"), **signed}, indent=2).encode()

    assert protocol.decode(data, secret=SECRET).args == (1, 2)


@pytest.mark.parametrize("tamper", [
    lambda data: data.replace(b'"args":[1,2]', b'"args":[1,3]'),
    lambda data: data.replace(b',"sig":', b',"args":[9],"sig":'),
    lambda data: data[:-3] + b'00"}',
], ids=["value", "field-added", "signature"])
def test_an_altered_signed_message_is_refused(tamper: Any) -> None:
    data = protocol.encode(protocol.build("add", [1, 2], task_id="abc-1"), secret=SECRET)

    with pytest.raises(ProtocolError, match="signature"):
        protocol.decode(tamper(data), secret=SECRET)
