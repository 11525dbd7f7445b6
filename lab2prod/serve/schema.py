"""The OpenAPI side of the server: the response models and request bodies, and `POST /predict`'s entry in
the schema (it is a plain ASGI handler, not a FastAPI route)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from lab2prod.serve.requests import PredictHandler


class Prediction(BaseModel):
    name: str
    top: list[dict[str, Any]]  # [{"class": ..., "probability": ...}], best first


class PredictResponse(BaseModel):
    model_version: str
    model_sha256: str
    predictions: list[Prediction]


IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
FEEDBACK_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image", "label"],
                    "properties": {"image": {"type": "string", "format": "binary"}, "label": {"type": "string"}},
                }
            },
            "application/json": {  # a text model's
                "schema": {
                    "type": "object",
                    "required": ["text", "label"],
                    "properties": {"text": {"type": "string"}, "label": {"type": "string"}},
                }
            },
        },
    }
}

PREDICT_RESPONSE_REF = "#/components/schemas/PredictResponse"


def _document_predict(app: FastAPI) -> None:
    """Adds `POST /predict` (served by PredictHandler, not a FastAPI route) to the app's OpenAPI schema."""
    make_schema = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = make_schema()
            response = PredictResponse.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(response.pop("$defs", {}), PredictResponse=response)
            schema["paths"]["/predict"] = {
                "post": {
                    "summary": "Predict",
                    "description": PredictHandler.__doc__.split("\n\n")[0],
                    "operationId": "predict",
                    "parameters": [
                        {
                            "name": "top_k",
                            "in": "query",
                            "required": False,
                            "description": "classes per image (default serve.top_k)",
                            "schema": {"type": "integer", "minimum": 1},
                        }
                    ],
                    **IMAGE_BODY,
                    "responses": {
                        "200": {
                            "description": "top-k classes per image and the model that answered",
                            "content": {"application/json": {"schema": {"$ref": PREDICT_RESPONSE_REF}}},
                        },
                        "413": {"description": "body or image count over the limits"},
                        "422": {"description": "bad image or top_k"},
                        "503": {"description": "no model loaded yet, or the queue is full"},
                        "504": {"description": "not answered within serve.request_timeout_s"},
                    },
                }
            }
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
