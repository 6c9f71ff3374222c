"""
Prices: agentgateway's model cost catalog (C{config.modelCatalog}), read
into a L{Catalog}. Pure but for L{read_catalogs}: JSON text in, exact
C{Decimal} rates out (L{agw.metering._pricing} applies them to usage).

The format is agentgateway's: C{{"providers": {"openai": {"models": {NAME:
{"rates": {...}, "tiers": [{"contextOver": N, "rates": {...}}]}}}}}}, rates
in USD per 1M tokens as decimal strings. agw reads every rate agentgateway
has (C{input}, C{output}, C{cacheRead}, C{cacheWrite}, C{reasoning},
C{inputAudio}, C{outputAudio}) and adds the ones Realtime needs:
C{cacheReadAudio}, C{inputImage}, C{cacheReadImage} and
C{transcriptionPerMinute}. Audio is priced at the audio rates; a missing
modality rate falls back to the text rate as in agentgateway. A model
named C{"*"} gives the operator's rates for the provider's models that have
no entry of their own (to agentgateway it is just a model called "*").
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from importlib import resources
from typing import Any

from attrs import Factory, evolve, field, frozen

_RATES = {
    "input": "input", "output": "output", "cacheRead": "cache_read", "cacheWrite": "cache_write",
    "reasoning": "reasoning", "inputAudio": "input_audio", "outputAudio": "output_audio",
    "cacheReadAudio": "cache_read_audio", "inputImage": "input_image", "cacheReadImage": "cache_read_image",
    "transcriptionPerMinute": "transcription_per_minute",
}
PER_TOKENS = Decimal(1_000_000)

# Lookup outcomes, as agentgateway's agentgateway_cost_catalog_lookups_total says them.
EXACT, UNPRICED, MISSING, NO_CATALOG = "Exact", "Unpriced", "Missing", "NoCatalog"
# The model entry that prices a provider's models without one of their own.
FALLBACK_MODEL = "*"


class CatalogError(ValueError):
    """A catalog that cannot be used; C{str()} names the file and the place in it."""


@frozen
class Rates:
    """USD per 1M tokens (per minute for transcription); C{None}: no rate."""

    input: Decimal | None = None
    output: Decimal | None = None
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None
    reasoning: Decimal | None = None
    input_audio: Decimal | None = None
    output_audio: Decimal | None = None
    cache_read_audio: Decimal | None = None
    input_image: Decimal | None = None
    cache_read_image: Decimal | None = None
    transcription_per_minute: Decimal | None = None

    def overlay(self, other: Rates) -> Rates:
        """These rates with C{other}'s where it has them (a tier over the base)."""
        return evolve(self, **{name: value for name, value in _fields(other) if value is not None})


def _fields(rates: Rates) -> Iterable[tuple[str, Decimal | None]]:
    return ((name, getattr(rates, name)) for name in _RATES.values())


@frozen
class ModelPrices:
    """A model's rates, and context tiers (C{contextOver}, rates overlaid) that reprice a whole request."""

    rates: Rates = Rates()
    tiers: tuple[tuple[int, Rates], ...] = ()

    def effective(self, context_tokens: int) -> Rates:
        """The rates for a request with C{context_tokens} of input: the highest tier it passes, over the base."""
        passed = [(over, rates) for over, rates in self.tiers if context_tokens > over]
        return self.rates.overlay(max(passed, key=lambda tier: tier[0])[1]) if passed else self.rates


@frozen
class Catalog:
    """Provider -> model -> prices."""

    providers: Mapping[str, Mapping[str, ModelPrices]] = field(factory=dict)

    def overridden_by(self, other: Catalog) -> Catalog:
        """This catalog with C{other}'s entries: a model in both is replaced whole (agentgateway's rule)."""
        merged = {provider: dict(models) for provider, models in self.providers.items()}
        for provider, models in other.providers.items():
            merged.setdefault(provider, {}).update(models)
        return Catalog(merged)

    def resolve(self, provider: str, model: str | None) -> ModelPrices | None:
        """
        C{model}'s own entry (never the C{"*"} fallback, even for a model
        named C{"*"}), if it has one; a dated snapshot without one (OpenAI's
        C{gpt-4o-2024-08-06}, C{gpt-4-0613}) has its model's: snapshots
        priced otherwise are listed under their own name.
        """
        if model is None or model == FALLBACK_MODEL:
            return None
        models = self.providers.get(provider, {})
        found = models.get(model)
        if found is None:
            dated = _SNAPSHOT.fullmatch(model)
            if dated is not None:
                found = models.get(dated.group(1))
        return found

    def fallback(self, provider: str) -> ModelPrices | None:
        """The operator's price for C{provider}'s models without an entry: its C{"*"} entry, if any."""
        return self.providers.get(provider, {}).get(FALLBACK_MODEL)

    def has_price(self, provider: str, model: str | None) -> bool:
        """Whether C{model} is priced: it has an entry, or C{provider} a C{"*"} one. A model of C{None} is not."""
        return model is not None and (self.resolve(provider, model) or self.fallback(provider)) is not None


@frozen
class Cost:
    """
    What a usage cost: the lookup C{status} and USD by component (empty
    unless priced). C{fallback}: the model has no entry (C{status} is
    C{Missing}) and the components are at the provider's C{"*"} rates.
    """

    status: str
    components: Mapping[str, Decimal] = field(factory=dict)
    fallback: bool = False
    # The USD of every component, the fallback's included (summed once: metrics, the log and budgets read it).
    total: Decimal = field(init=False, default=Factory(lambda self: sum(self.components.values(), Decimal(0)), takes_self=True))


# A dated snapshot's name: the model's, then -YYYY-MM-DD or -MMDD.
_SNAPSHOT = re.compile(r"(.+?)-(?:\d{4}-\d{2}-\d{2}|\d{4})")


def parse_catalog(text: str, source: str = "catalog") -> Catalog:
    """A catalog from agentgateway's JSON format; raises L{CatalogError}."""
    try:
        data = json.loads(text)
    except ValueError as e:
        raise CatalogError(f"{source}: not JSON ({e})") from None
    top = _object(data, source, {"providers"})
    providers: dict[str, dict[str, ModelPrices]] = {}
    for provider, spec in _object(top.get("providers", {}), f"{source}: providers", None).items():
        where = f"{source}: providers.{provider}"
        models = _object(_object(spec, where, {"models"}).get("models", {}), f"{where}.models", None)
        providers[provider] = {name: _model(entry, f"{where}.models.{name}") for name, entry in models.items()}
    return Catalog(providers)


def _object(value: Any, where: str, allowed: set[str] | None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CatalogError(f"{where}: expected an object")
    if allowed is not None:
        for key in value:
            if key not in allowed:
                raise CatalogError(f"{where}.{key}: unknown field")
    return value


def _model(value: Any, where: str) -> ModelPrices:
    spec = _object(value, where, {"rates", "tiers", "mantle"})
    tiers_spec = spec.get("tiers", [])
    if not isinstance(tiers_spec, list):
        raise CatalogError(f"{where}.tiers: expected a list")
    tiers, previous = [], -1
    for index, tier in enumerate(tiers_spec):
        tier_where = f"{where}.tiers[{index}]"
        tier = _object(tier, tier_where, {"contextOver", "rates"})
        over = tier.get("contextOver")
        if not isinstance(over, int) or isinstance(over, bool) or over <= previous:
            raise CatalogError(f"{tier_where}.contextOver: expected a threshold above the previous tier's")
        previous = over
        tiers.append((over, _rates(tier.get("rates", {}), f"{tier_where}.rates")))
    return ModelPrices(_rates(spec.get("rates", {}), f"{where}.rates"), tuple(tiers))


def _rates(value: Any, where: str) -> Rates:
    spec = _object(value, where, set(_RATES))
    return Rates(**{_RATES[key]: _money(text, f"{where}.{key}") for key, text in spec.items()})


def _money(text: Any, where: str) -> Decimal:
    if not isinstance(text, str):
        raise CatalogError(f"{where}: a rate is a decimal string, e.g. \"0.15\"")
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise CatalogError(f"{where}: invalid decimal {text!r}") from None
    if not value.is_finite() or value < 0:
        raise CatalogError(f"{where}: negative rate not allowed: {text!r}")
    if -value.as_tuple().exponent > 6:  # type: ignore[operator]
        raise CatalogError(f"{where}: more than 6 fractional digits: {text!r}")
    return value


# GatewayMetrics' default: agw's shipped catalog (see docs/governance.md for its sources).
DEFAULT_CATALOG = object()
CATALOG_PATHS_VARIABLE = "MODEL_CATALOG_PATHS"


@lru_cache(maxsize=1)
def default_catalog() -> Catalog:
    """The catalog agw ships (current OpenAI Realtime and transcription models)."""
    text = resources.files("agw.metering").joinpath("default_catalog.json").read_text(encoding="utf-8")
    return parse_catalog(text, "agw's default catalog")


def read_catalogs(files: Sequence[str]) -> Catalog:
    """The catalog C{files} make, merged in order (later files win); raises L{CatalogError}."""
    catalog = Catalog()
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise CatalogError(f"{path}: cannot read ({e.strerror})") from None
        catalog = catalog.overridden_by(parse_catalog(text, path))
    return catalog


def catalog_for(files: Sequence[str] | None, environ: Mapping[str, str] = os.environ) -> Catalog | None:
    """
    The catalog to price with: C{config.modelCatalog}'s files if the config
    names them (an empty list: no catalog), else the files in
    C{MODEL_CATALOG_PATHS} (separated by C{os.pathsep}), else agw's default.
    """
    if files is None:
        from_environment = [path for path in environ.get(CATALOG_PATHS_VARIABLE, "").split(os.pathsep) if path]
        if not from_environment:
            return default_catalog()
        files = from_environment
    return read_catalogs(files) if files else None
