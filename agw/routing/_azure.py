"""
Azure OpenAI's URLs for the OpenAI paths clients speak to agw, as
agentgateway builds them (C{crates/llm/src/azure.rs}), and Azure's Realtime
URLs, which agentgateway does not build (docs/providers.md gives sources).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode

from agw.config import AzureProvider, AzureResourceType

#: agentgateway's default location of a backend key, and Azure's own key header.
BEARER = ("authorization", "Bearer ")
AZURE_KEY = ("api-key", "")


class NoDeployment(ValueError):
    """A dated API version names the deployment in the path, and neither the config nor the request named one."""


def _merged(query: str, drop: set[str], ours: list[tuple[str, str]]) -> str:
    # The client's parameters are kept; ours win where both name one.
    kept = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k not in drop | {k for k, _ in ours}]
    return urlencode(kept + ours)


def is_dated(api_version: str) -> bool:
    """Whether C{api_version} is a dated one (C{2024-10-21}, C{2025-04-01-preview}), not C{v1} or C{preview}."""
    return api_version not in ("v1", "preview")


def azure_http(azure: AzureProvider, path: str, query: str, model: str | None) -> tuple[str, str]:
    """
    The upstream path and query of an HTTP request to C{path} (an OpenAI
    path, C{/v1/chat/completions}): C{/openai/v1/...} for C{v1} and
    C{preview} (with C{api-version=preview}), C{/openai/deployments/{model}/...}
    with C{api-version} for a dated version, and
    C{/api/projects/{project}/openai/v1/...} on Foundry.
    """
    suffix = path[3:] if path == "/v1" or path.startswith("/v1/") else path
    if azure.resource_type is AzureResourceType.FOUNDRY:
        return f"/api/projects/{azure.project}/openai/v1{suffix}", query
    if azure.api_version == "v1":
        return f"/openai/v1{suffix}", query
    if azure.api_version == "preview":
        return f"/openai/v1{suffix}", _merged(query, set(), [("api-version", "preview")])
    if not model:
        raise NoDeployment("a dated apiVersion needs a deployment: provider.azure.model or the request's model")
    return f"/openai/deployments/{model}{suffix}", _merged(query, set(), [("api-version", azure.api_version)])


def azure_realtime(azure: AzureProvider, query: str, model: str | None) -> tuple[str, str]:
    """
    The upstream path and query of a Realtime session: the GA form
    C{/openai/v1/realtime?model={deployment}} without C{api-version} (Azure
    refuses one there with 401) for C{v1} and C{preview}; for a dated
    version the older C{/openai/realtime?api-version=X&deployment={deployment}}.
    C{model} is the deployment: the config's, else the client's C{?model=}.
    """
    client_model = dict(parse_qsl(query, keep_blank_values=True)).get("model")
    deployment = model or client_model
    if not is_dated(azure.api_version):
        ours = [("model", deployment)] if deployment else []
        return "/openai/v1/realtime", _merged(query, {"api-version", "deployment"}, ours)
    if not deployment:
        raise NoDeployment("a dated apiVersion needs a deployment: provider.azure.model or the client's ?model=")
    ours = [("api-version", azure.api_version), ("deployment", deployment)]
    return "/openai/realtime", _merged(query, {"model"}, ours)
