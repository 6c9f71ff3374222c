"""
An C{ai:} backend's C{provider}: C{openAI}, C{azure}, or C{azureOpenAI}
(agentgateway's older form of C{azure}, read as the same thing).
"""

from __future__ import annotations

from datetime import date
from typing import Any

from agw.config._azure import AzureProvider, AzureResourceType
from agw.config._parsing import BaseParser
from agw.config._yamlsource import Path

# agentgateway's serde alias for foundry.
_RESOURCE_TYPES = {"openAI": AzureResourceType.OPENAI, "foundry": AzureResourceType.FOUNDRY, "aiServices": AzureResourceType.FOUNDRY}


class ProviderParser(BaseParser):
    """Parses C{ai.provider} (mixed into the config parser)."""

    def provider(self, value: Any, path: Path) -> tuple[str, str | None, AzureProvider | None]:
        """C{(provider, model, azure)}: the provider's name, its C{model} and, for Azure, its resource."""
        provider = self.mapping(value, path, "provider")
        if len(provider) != 1:
            raise self.fail(path, "expected exactly one provider (openAI, azure or azureOpenAI)")
        ((name, spec),) = provider.items()
        path = path + (name,)
        spec = self.mapping(spec, path, name)
        model = self.string(spec.get("model"), path + ("model",), optional=True)
        version = spec.get("apiVersion", "v1")
        # YAML reads an unquoted 2024-10-21 as a date: it means the version all the same.
        version = self.string(version.isoformat() if isinstance(version, date) else version, path + ("apiVersion",))
        if name == "openAI":
            return "openAI", model, None
        if name == "azureOpenAI":
            host = self.string(spec.get("host"), path + ("host",))
            return "azure", model, AzureProvider(host, version)
        resource = self.string(spec.get("resourceName"), path + ("resourceName",))
        type_text = self.string(spec.get("resourceType"), path + ("resourceType",))
        resource_type = _RESOURCE_TYPES.get(type_text)
        if resource_type is None:
            raise self.fail(path + ("resourceType",), f"expected openAI or foundry, got {type_text!r}")
        project = self.string(spec.get("projectName"), path + ("projectName",), optional=True)
        if resource_type is AzureResourceType.FOUNDRY:
            # agentgateway: the project defaults to the resource name.
            return "azure", model, AzureProvider(f"{resource}.services.ai.azure.com", version, resource_type, project or resource)
        return "azure", model, AzureProvider(f"{resource}.openai.azure.com", version, resource_type)
