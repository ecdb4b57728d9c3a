"""The API document: OpenAPI 3.1 of every route, served at ``/openapi.json``.

The answers' JSON shapes follow :mod:`streamrec.views`; the status codes and
messages follow the API's one table of domain errors (``streamrec.api.ERRORS``),
which :func:`document` is given, so the document quotes the messages the
service sends. The seed's 500s are kept (they are what its clients expect);
a message the seed fixes is an ``enum`` here, so a fuzzer that checks answers
against this document also checks the messages.
"""

from __future__ import annotations

from typing import Any

from .. import __version__
from ..auth import ADMIN, OPERATOR, SESSION_COOKIE, VIEWER
from .build import BEARER, COOKIE
from .paths import paths
from .shapes import ErrorTable, responses, schemas

__all__ = ["document"]

ROLES = (
    f"Roles: `{VIEWER.name}` reads (streams, status, clips, plugins, metrics),"
    f" `{OPERATOR.name}` also creates, starts and stops, `{ADMIN.name}` also records"
    " sources that listen on the box's ports. Without a --tokens file the API is"
    " open: every caller is an admin."
)


def document(errors: ErrorTable) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API whose domain errors are ``errors``."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "streamrec",
            "version": __version__,
            "description": (
                "Record live video sources and cut MP4 clips. Every answer but a clip"
                ' file is JSON; every error is `{"error_message": ...}`. Parameters'
                " come in the query string, a form body or a JSON object body."
            ),
        },
        "security": [{BEARER: [VIEWER.name]}, {COOKIE: [VIEWER.name]}],
        "paths": paths(errors),
        "components": {
            "securitySchemes": {
                BEARER: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token of the --tokens file: `Authorization: Bearer TOKEN`. "
                    + ROLES,
                },
                COOKIE: {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": SESSION_COOKIE.decode(),
                    "description": "The web UI's session (POST /session), holding a token.",
                },
            },
            "schemas": schemas(),
            "responses": responses(errors),
        },
    }
