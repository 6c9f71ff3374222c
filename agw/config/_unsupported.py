"""
What agentgateway's config format has and agw does not implement yet, by
where it appears: the loader names these "supported by agentgateway but not
by agw yet" instead of "unknown field", so a config written for
agentgateway fails with a reason, never silently.
"""

from __future__ import annotations

# Keys agentgateway accepts that agw does not implement yet: rejected with a
# message that says so, rather than "unknown field".
UNSUPPORTED: dict[str, frozenset[str]] = {
    "top": frozenset({"frontendPolicies", "policies", "workloads", "services", "backends", "llm", "mcp"}),
    "config": frozenset({
        "enableIpv6", "localXdsPath", "caAddress", "caAuthToken", "xdsAddress", "xdsAuthToken", "namespace",
        "gateway", "trustDomain", "serviceAccount", "clusterId", "network", "connectionTerminationDeadline",
        "connectionMinTerminationDeadline", "workerThreads", "backend", "hbone",
        "session", "dns",
    }),
    "bind": frozenset({"tunnelProtocol"}),
    "listener": frozenset({"tcpRoutes", "policies", "gatewayName", "namespace"}),
    "serverTLS": frozenset({"root", "spiffe", "keyExchangeGroups"}),
    "route": frozenset({"ruleName", "hostnames", "namespace"}),
    "match": frozenset({"headers", "method", "query"}),
    "backend": frozenset({"host", "service", "mcp", "backend", "dynamic", "opaque", "weight", "policies"}),
    "ai": frozenset({"groups", "policies"}),
    "provider": frozenset({"anthropic", "gemini", "vertex", "bedrock"}),
    "policies": frozenset({
        "cors", "jwtAuth", "basicAuth", "remoteRateLimit", "extAuthz", "extProc",
        "requestHeaderModifier", "responseHeaderModifier", "requestRedirect", "urlRewrite", "requestMirror",
        "timeout", "retry", "a2a", "mcpAuthorization", "mcpAuthentication", "directResponse",
        "csrf", "authorization", "hostRewrite",
    }),
    "aiPolicy": frozenset({"promptCaching"}),
    "requestGuard": frozenset({"bedrockGuardrails", "googleModelArmor", "azureContentSafety"}),
    "responseGuard": frozenset({"bedrockGuardrails", "googleModelArmor", "azureContentSafety"}),
    "webhook": frozenset({"headers"}),
    "webhookTarget": frozenset({"service", "backend"}),
    "backendAuth": frozenset({"passthrough", "gcp", "aws", "azure"}),
    "apiKeyLocation": frozenset({"cookie", "expression"}),
    "authLocation": frozenset({"queryParameter", "cookie"}),
    "metrics": frozenset({"remove"}),
    "logging": frozenset({"filter", "level", "format"}),
    "fields": frozenset({"remove"}),
    "backendTLS": frozenset({"cert", "key", "insecure", "insecureHost", "alpn", "subjectAltNames", "keyExchangeGroups", "spiffe"}),
    "transformations": frozenset({"response"}),
    "tracing": frozenset({"fields"}),
    "requestTransform": frozenset({"body"}),
}
