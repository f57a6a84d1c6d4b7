"""The API's documentation page: the OpenAPI schema drf-spectacular generates, rendered on the server.

Swagger UI and ReDoc load their scripts from a CDN, which a strict Content-Security-Policy (and an offline
install) rules out; this page needs no script at all. The schema itself is at /api/v1/schema/.
"""

import functools
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET
from drf_spectacular.generators import SchemaGenerator

METHODS = ("get", "post", "put", "patch", "delete")


@functools.cache
def api_schema() -> dict[str, Any]:
    """The OpenAPI document of every endpoint (it cannot change while the process runs)."""
    schema: dict[str, Any] = SchemaGenerator().get_schema(request=None, public=True)
    return schema


def _type(spec: dict[str, Any]) -> str:
    if "$ref" in spec:
        return str(spec["$ref"]).rsplit("/", 1)[-1]
    if "allOf" in spec or "oneOf" in spec:
        parts = spec.get("allOf") or spec.get("oneOf") or []
        return " | ".join(_type(part) for part in parts)
    if spec.get("type") == "array":
        return f"list of {_type(spec.get('items', {}))}"
    kind = str(spec.get("type", "object"))
    if "enum" in spec:
        kind += " (" + ", ".join(str(value) for value in spec["enum"] if value is not None) + ")"
    if spec.get("nullable"):
        kind += " or null"
    return kind


def _bodies(content: dict[str, Any]) -> list[tuple[str, str]]:
    return [(media, _type(body.get("schema", {}))) for media, body in content.items()]


def _endpoints(schema: dict[str, Any]) -> list[dict[str, Any]]:
    endpoints = []
    for path, item in schema.get("paths", {}).items():
        for method in METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            endpoints.append(
                {
                    "anchor": f"{method}-{path}".replace("/", "-").replace("{", "").replace("}", ""),
                    "method": method.upper(),
                    "path": path,
                    "summary": operation.get("summary", ""),
                    "description": operation.get("description", ""),
                    "parameters": [
                        (p["name"], p["in"], _type(p.get("schema", {})), p.get("description", ""))
                        for p in operation.get("parameters", [])
                    ],
                    "request": _bodies(operation.get("requestBody", {}).get("content", {})),
                    "responses": [
                        (status, response.get("description", ""), _bodies(response.get("content", {})))
                        for status, response in operation.get("responses", {}).items()
                    ],
                }
            )
    return endpoints


def _components(schema: dict[str, Any]) -> list[tuple[str, list[tuple[str, str, bool, str]]]]:
    components = []
    for name, spec in sorted(schema.get("components", {}).get("schemas", {}).items()):
        required = set(spec.get("required", []))
        fields = [
            (field, _type(prop), field in required, str(prop.get("description", "")))
            for field, prop in spec.get("properties", {}).items()
        ]
        components.append((name, fields))
    return components


@require_GET
def api_docs(request: HttpRequest) -> HttpResponse:
    schema = api_schema()
    context = {"info": schema["info"], "endpoints": _endpoints(schema), "components": _components(schema)}
    return render(request, "api/docs.html", context)
