"""Request bodies of the registry server's routes: JSON read with the hostile-input limits of
:func:`tether.protocol.serving.read_json`, then validated by a pydantic model. Bytes that are not UTF-8 or not JSON
are a typed ``ConfigError`` (400), never a 500."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from tether.errors import ConfigError
from tether.protocol.serving import read_json

__all__ = ["read_body"]


async def read_body(request: web.Request, model: type[BaseModel]) -> Any:
    """The request's JSON body as ``model`` (its validation errors are the server's 422s)."""
    try:
        data = await read_json(request)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError("request body is not JSON", details={"field": "body"}) from None
    return model.model_validate(data)
