"""MkDocs hook: the HTTP API reference, rendered at build time from the application's own OpenAPI
document (the one `/openapi.json` serves), so the page cannot drift from the code.

A page asks for it with the line `<!-- openapi-reference -->`; the hook replaces that line with
one section per operation (parameters, responses) and one per schema.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MARKER = "<!-- openapi-reference -->"
REPO = Path(__file__).resolve().parent.parent


def openapi_document() -> dict[str, Any]:
    """Build the application as `python -m app` does over the demo folder, with a token set, and
    its document as /openapi.json serves it then: with the security a token adds."""
    from app.api.application import create_app
    from app.api.openapi import build_openapi
    from app.settings import load_settings

    settings = load_settings({"SESSIONS_DIR": str(REPO / "data" / "sessions"), "SESSIONS_API_TOKEN": "docs"})
    return build_openapi(create_app(settings).routes, token_required=settings.api_token is not None)


def _cell(text: object) -> str:
    """A value fit for one cell of a Markdown table."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _schema(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        name = str(schema["$ref"]).rsplit("/", 1)[-1]
        return f"[{name}](#schema-{name.lower()})"
    if not schema:
        return "any"
    parts = [str(schema.get("type", "any"))]
    if "enum" in schema:
        parts.append("one of " + ", ".join(f"`{value}`" for value in schema["enum"]))
    if "pattern" in schema:
        parts.append(f"pattern `{schema['pattern']}`")
    for key in ("minimum", "maximum", "minLength", "maxLength"):
        if key in schema:
            parts.append(f"{key} {schema[key]}")
    if "default" in schema:
        parts.append(f"default `{schema['default']}`")
    if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        parts.append("of " + _schema(schema["items"]))
    return "; ".join(parts)


def _parameters(parameters: list[dict[str, Any]]) -> list[str]:
    if not parameters:
        return []
    lines = ["| parameter | in | required | schema | meaning |", "|---|---|---|---|---|"]
    for parameter in parameters:
        lines.append(
            f"| `{parameter['name']}` | {parameter['in']} | {'yes' if parameter.get('required') else 'no'} "
            f"| {_cell(_schema(parameter.get('schema', {})))} | {_cell(parameter.get('description', ''))} |"
        )
    return [*lines, ""]


def _responses(responses: dict[str, Any]) -> list[str]:
    lines = ["| status | meaning | content | headers |", "|---|---|---|---|"]
    for status, response in responses.items():
        content = ", ".join(f"`{media}`" for media in response.get("content", {}))
        headers = ", ".join(f"`{name}`" for name in response.get("headers", {}))
        lines.append(f"| {status} | {_cell(response.get('description', ''))} | {content} | {headers} |")
    return [*lines, ""]


def _security(operation: dict[str, Any], default: list[dict[str, Any]] | None) -> str:
    requirements = operation.get("security", default)
    schemes = [name for requirement in requirements or [] for name in requirement]
    if not schemes:
        return "No token needed."
    optional = any(not requirement for requirement in requirements or [])
    names = " or ".join(f"[`{name}`](#security-schemes)" for name in schemes)
    return f"Token: {names}" + (", when the service has one." if optional else ".")


def render(document: dict[str, Any]) -> str:
    info = f"OpenAPI {document['openapi']}, version {document['info']['version']}"
    lines = [
        f"Generated from `/openapi.json` ({info}) as a service with `SESSIONS_API_TOKEN` set serves"
        " it; without a token no security is declared and no operation needs one.",
        "",
    ]
    for path, item in document["paths"].items():
        methods = [method.upper() for method in item]
        get = item.get("get") or next(iter(item.values()))
        security = _security(get, document.get("security"))
        lines += [f"### `{path}`", "", f"Methods: {', '.join(methods)}. {security}", ""]
        if get.get("summary"):
            lines += [_cell(get["summary"]), ""]
        if get.get("description"):
            lines += [get["description"], ""]
        lines += _parameters(get.get("parameters", []))
        lines += _responses(get.get("responses", {}))
    schemas = document.get("components", {}).get("schemas", {})
    if schemas:
        lines += ["## Schemas", ""]
    for name, schema in schemas.items():
        lines += [f"### {name} {{ #schema-{name.lower()} }}", ""]
        if schema.get("description"):
            lines += [_cell(schema["description"]), ""]
        properties = schema.get("properties", {})
        if properties:
            required = set(schema.get("required", []))
            lines += ["| field | required | schema | meaning |", "|---|---|---|---|"]
            for field, spec in properties.items():
                lines.append(
                    f"| `{field}` | {'yes' if field in required else 'no'} | {_cell(_schema(spec))} "
                    f"| {_cell(spec.get('description', ''))} |"
                )
            lines.append("")
        else:
            lines += ["```json", json.dumps(schema, indent=2), "```", ""]
    security_schemes = document.get("components", {}).get("securitySchemes", {})
    if security_schemes:
        lines += ["## Security schemes", "", "| name | scheme | meaning |", "|---|---|---|"]
        for name, scheme in security_schemes.items():
            kind = scheme.get("scheme") or f"{scheme.get('in', '')} parameter `{scheme.get('name', '')}`"
            lines.append(
                f"| `{name}` | {_cell(scheme['type'])}: {_cell(kind)} | {_cell(scheme.get('description', ''))} |"
            )
        lines.append("")
    return "\n".join(lines)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render(openapi_document()))
