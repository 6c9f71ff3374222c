"""
Azure OpenAI as agentgateway configures it (C{provider.azure}, and the
older C{azureOpenAI} read as the same thing): field names, defaults and
hosts follow agentgateway's C{crates/llm/src/azure.rs}; docs/providers.md.
"""

from __future__ import annotations

from enum import Enum

from attrs import frozen


class AzureResourceType(str, Enum):
    """C{azure.resourceType}: which host the resource name goes into."""

    OPENAI = "openAI"  # {resourceName}.openai.azure.com
    FOUNDRY = "foundry"  # {resourceName}.services.ai.azure.com, paths under /api/projects/{project}


@frozen
class AzureProvider:
    """
    An Azure OpenAI resource: its C{host}, the C{api_version} (agentgateway's
    default C{v1}) and, for Foundry, the C{project} its paths name.
    """

    host: str
    api_version: str = "v1"
    resource_type: AzureResourceType = AzureResourceType.OPENAI
    project: str | None = None
