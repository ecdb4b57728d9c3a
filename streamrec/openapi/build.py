"""The pieces the API document is built of: references, answers, operations."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..auth import Role

Schema = dict[str, Any]

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
#: The two ways to carry a token: a header, or the web UI's session cookie.
BEARER = "bearerAuth"
COOKIE = "sessionCookie"


def ref(kind: str, name: str) -> Schema:
    return {"$ref": f"#/components/{kind}/{name}"}


def nullable(kind: str, **more: Any) -> Schema:
    return {"type": [kind, "null"], **more}


def error_body(*messages: str, extra: Schema | None = None) -> Schema:
    """``{"error_message": ...}``; with ``messages``, only those."""
    message: Schema = {"type": "string"}
    if messages:
        message = {"type": "string", "enum": list(messages)}
    properties = {"error_message": message, **(extra or {})}
    return {"type": "object", "required": ["error_message"], "properties": properties}


def answer(
    description: str, schema: Schema, media: str = JSON, example: Any = None, **more: Any
) -> Schema:
    content: Schema = {"schema": schema}
    if example is not None:
        content["example"] = example
    return {"description": description, "content": {media: content}, **more}


def seed_error(description: str, *messages: str, reason: bool = False) -> Schema:
    """A 500 the seed defines, with its exact messages; ``reason`` is the cause
    in words (ffmpeg's last line), credentials masked."""
    extra = {"reason": {"type": "string"}} if reason else None
    return answer(description, error_body(*messages, extra=extra))


def operation(
    operation_id: str,
    summary: str,
    role: Role | None,
    ok: Schema,
    more: Mapping[str, Schema] | None = None,
    parameters: list[Schema] | None = None,
    body: Schema | None = None,
    description: str = "",
) -> Schema:
    """One operation; ``role`` None means it needs no token."""
    answers: dict[str, Schema] = {"200": ok, **(more or {})}
    # Any request: a request line and headers past 16 KiB are refused unread.
    answers["431"] = ref("responses", "HeadTooLarge")
    spec: Schema = {"operationId": operation_id, "summary": summary}
    if role is None:
        spec["security"] = []
        spec["description"] = description or "Needs no token."
    else:
        answers["401"] = ref("responses", "Unauthenticated")
        answers["403"] = ref("responses", "Forbidden")
        spec["security"] = [{BEARER: [role.name]}, {COOKIE: [role.name]}]
        spec["description"] = (description + "\n\n" if description else "") + (
            f"Role: `{role.name}` or above."
        )
    if parameters:
        spec["parameters"] = parameters
    if body is not None:
        spec["requestBody"] = {
            "required": False,
            "description": "The parameters as a form or as a JSON object",
            "content": {FORM: {"schema": body}, JSON: {"schema": body}},
        }
        answers["413"] = ref("responses", "TooLarge")
    spec["responses"] = dict(sorted(answers.items()))
    return spec


def query(properties: Mapping[str, Schema], required: tuple[str, ...] = ()) -> list[Schema]:
    return [
        {"name": name, "in": "query", "required": name in required, "schema": schema}
        for name, schema in properties.items()
    ]


def body(properties: Mapping[str, Schema], required: tuple[str, ...] = ()) -> Schema:
    schema: Schema = {"type": "object", "properties": dict(properties)}
    if required:
        schema["required"] = list(required)
    return schema


def get_and_post(
    operation_id: str,
    summary: str,
    role: Role,
    ok: Schema,
    more: Mapping[str, Schema],
    properties: Mapping[str, Schema],
    required: tuple[str, ...] = (),
    path_parameters: list[Schema] | None = None,
    description: str = "",
) -> dict[str, Schema]:
    """A route that answers GET (parameters in the query) and POST (in a body)."""
    path = path_parameters or []
    return {
        "get": operation(
            operation_id,
            summary,
            role,
            ok,
            more,
            parameters=path + query(properties, required),
            description=description,
        ),
        "post": operation(
            operation_id + "_post",
            summary,
            role,
            ok,
            more,
            parameters=path or None,
            body=body(properties, required) if properties else None,
            description=description,
        ),
    }
