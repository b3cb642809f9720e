"""pipelines/serving/responses.py: one error shape, and validation refusals that never echo input."""

import json

import pytest
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from helpers import asgi
from pydantic import ValidationError

from pipelines.serving import schema
from pipelines.serving.responses import FastJSONResponse, error, foreign, outcome_of, validation_response

FIELDS = {
    "n": {"type": "number", "nullable": True, "minimum": 0.0, "maximum": 10.0},
    "k": {"type": "integer", "nullable": False, "minimum": 0, "maximum": 5},
    "c": {"type": "string", "nullable": False, "allowed": ["a", "b"]},
    "s": {"type": "string", "nullable": True},
}
GOOD = {"n": 1.0, "k": 1, "c": "a", "s": "x"}
MARKER = "Hostile-9f3c"
HOSTILE = f"<script>alert('{MARKER}')</script>" + MARKER * 20  # longer than max_string_length


def request_model(fields=FIELDS):
    return schema.request_model(schema.record_model(fields, {}, max_string_length=64), max_records=100)


def refusal(body: dict, fields=FIELDS) -> RequestValidationError:
    """The RequestValidationError FastAPI raises for this body: pydantic's errors, under `body`."""
    with pytest.raises(ValidationError) as caught:
        request_model(fields).model_validate(body)
    return RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in caught.value.errors()])


def parsed(response) -> dict:
    assert response.media_type == "application/json"
    assert response.headers["content-type"].startswith("application/json")
    return json.loads(response.body)


def post(raw: bytes | None) -> tuple[int, dict]:
    """POST raw bytes to a bare FastAPI app with the service's handler; FastAPI builds the errors."""
    app = FastAPI()
    app.add_exception_handler(RequestValidationError, lambda _, exc: validation_response(exc))

    @app.post("/predict")
    async def predict(body: request_model()):  # type: ignore[valid-type]
        return {}

    headers = [(b"content-type", b"application/json")]
    if raw is not None:
        headers.append((b"content-length", str(len(raw)).encode()))
    sent = asgi.post(app, raw or b"", headers)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body)


def test_error_has_the_one_shape():
    response = error(415, "unsupported_media_type", "send JSON")
    assert response.status_code == 415
    assert parsed(response) == {"error": "unsupported_media_type", "message": "send JSON"}


def test_error_names_the_field_when_given():
    response = error(422, "invalid_request", "bad value", field="records.0.k")
    assert parsed(response) == {"error": "invalid_request", "message": "bad value", "field": "records.0.k"}


def test_error_sets_the_headers_given():
    response = error(503, "overloaded", "retry", **{"Retry-After": "1"})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    response = error(401, "unauthorized", "key", **{"WWW-Authenticate": "Bearer"})
    assert response.headers["www-authenticate"] == "Bearer"
    assert parsed(response) == {"error": "unauthorized", "message": "key"}


def test_fast_json_response_renders_the_same_json():
    content = {"request_id": "r", "predictions": [1, 2.5, "é", None, True], "nested": [{"a": 0.125}]}
    response = FastJSONResponse(content)
    assert response.status_code == 200
    assert parsed(response) == content


@pytest.mark.parametrize(
    "record",
    [
        {**GOOD, "s": HOSTILE},  # too long
        {**GOOD, "c": HOSTILE},  # not an allowed value
        {**GOOD, "k": HOSTILE},  # not an integer
        {**GOOD, "n": HOSTILE},  # not a number
        {**GOOD, "extra": HOSTILE},  # not a column
        {"n": HOSTILE, "k": HOSTILE, "c": HOSTILE, "s": HOSTILE},  # everything
    ],
    ids=["too-long", "not-allowed", "not-integer", "not-number", "extra-column", "every-field"],
)
def test_validation_response_never_echoes_the_input_value(record):
    exc = refusal({"records": [GOOD, record]})
    assert MARKER in str(exc.errors())  # pydantic kept the input: the response must drop it
    response = validation_response(exc)
    assert response.status_code == 422
    assert MARKER.lower() not in response.body.decode().lower()
    assert "<script>" not in response.body.decode()
    body = parsed(response)
    assert set(body) == {"error", "message", "field", "problems"}
    assert body["error"] == "invalid_request"
    assert body["field"].startswith("records.1")
    assert all(set(p) == {"field", "problem"} for p in body["problems"])


@pytest.mark.parametrize(
    "body",
    [
        {"records": [GOOD, {**GOOD, HOSTILE: 1}]},  # a key outside the contract, in a record
        {"records": [GOOD, {**GOOD, MARKER: HOSTILE}]},
        {"records": [GOOD], MARKER: 1},  # beside `records`
        {"records": [GOOD | {f"{MARKER}-{i}": i for i in range(30)}]},  # many of them
    ],
    ids=["in-a-record", "name-and-value", "top-level", "many"],
)
def test_the_names_of_keys_outside_the_contract_are_never_echoed(body):
    """pydantic puts the caller's key in the error's location: the answer names the record instead."""
    exc = refusal(body)
    assert MARKER in json.dumps([list(map(str, e["loc"])) for e in exc.errors()])
    response = validation_response(exc)
    assert response.status_code == 422
    assert MARKER.lower() not in response.body.decode().lower()
    answer = parsed(response)
    assert "outside the contract" in answer["message"]
    assert answer["field"] in ("records.0", "records.1", "")


def test_foreign_answers_get_a_kind_and_a_message_of_ours():
    """One label per status that BentoML, Starlette or FastAPI may answer in its own shape."""
    expected = {
        400: "malformed",
        404: "not_found",
        405: "method_not_allowed",
        429: "too_many_requests",
        500: "internal_error",
        503: "unavailable",
        504: "timeout",
        418: "http_418",
        502: "internal_error",
    }
    for status, kind in expected.items():
        got, message = foreign(status)
        assert got == kind and message, status
    assert outcome_of("internal_error") == "error" and outcome_of("not_found") == "not_found"


def test_validation_response_names_the_first_field_as_records_index_column():
    exc = refusal({"records": [{**GOOD, "k": 9}, {**GOOD, "c": "z", "n": -1.0}]})
    body = parsed(validation_response(exc))
    assert body["field"] == "records.0.k"
    assert [p["field"] for p in body["problems"]] == ["records.0.k", "records.1.n", "records.1.c"]
    assert body["message"] == body["problems"][0]["problem"]


def test_validation_response_names_a_missing_column():
    exc = refusal({"records": [{"n": 1.0, "c": "a"}]})
    body = parsed(validation_response(exc))
    assert body["field"] == "records.0.k"


def test_validation_response_lists_at_most_twenty_problems():
    exc = refusal({"records": [{**GOOD, "k": 9}] * 30})
    body = parsed(validation_response(exc))
    assert len(body["problems"]) == 20
    assert body["problems"][19]["field"] == "records.19.k"


def test_malformed_json_is_a_400_malformed_json():
    status, body = post(b'{"records": [{"n": 1.0,')
    assert status == 400
    assert body["error"] == "malformed_json"
    assert set(body) == {"error", "message"}


def test_malformed_json_does_not_echo_the_body():
    status, body = post(f'{{"records": [{{"s": "{MARKER}" '.encode())
    assert status == 400
    assert body["error"] == "malformed_json"
    assert MARKER not in json.dumps(body)


def test_a_missing_body_is_a_400_empty_body():
    status, body = post(b"")
    assert status == 400
    assert body["error"] == "empty_body"
    assert set(body) == {"error", "message"}


def test_an_invalid_record_through_fastapi_is_a_422_naming_its_field():
    status, body = post(json.dumps({"records": [GOOD, {**GOOD, "c": HOSTILE}]}).encode())
    assert status == 422
    assert body["error"] == "invalid_request"
    assert body["field"] == "records.1.c"
    assert MARKER not in json.dumps(body)


def test_a_column_named_body_is_named_in_full():
    fields = {"body": {"type": "integer", "nullable": False}}
    exc = refusal({"records": [{"body": "x"}]}, fields=fields)
    assert parsed(validation_response(exc))["field"] == "records.0.body"
