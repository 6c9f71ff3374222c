"""
Prices applied to usage: what a L{TokenUsage} or an L{AudioDuration} cost
by a L{Catalog}, by component, as exact C{Decimal}s. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from agw.metering._catalog import EXACT, MISSING, NO_CATALOG, PER_TOKENS, UNPRICED, Catalog, Cost, ModelPrices
from agw.metering._usage import AudioDuration, TokenUsage


def _by(pairs: tuple[tuple[str, int], ...], modality: str) -> int:
    return sum(tokens for name, tokens in pairs if name == modality)


def _text_only(usage: TokenUsage) -> bool:
    """Whether all of C{usage} is text, none of it cached (details of 0 tokens say nothing)."""
    if usage.cached_input:
        return False
    for details in (usage.input_by_modality, usage.output_by_modality):
        for modality, tokens in details:
            if tokens and modality != "text":
                return False
    return True


def split_cached(usage: TokenUsage) -> dict[str, tuple[int, int]]:
    """
    Each modality's C{(input, cached)} tokens, cached never above input.
    Input with no modality breakdown is text. Cached tokens the provider
    attributes to a modality are taken as reported; the rest (all of them
    when there is no C{cached_tokens_details}, as in chat completions) go
    to the modalities not reported, in prompt order: text first (the
    instructions and the conversation's text start the cached prefix),
    then audio, then image. What fits nowhere is dropped: cached input is
    part of input, never more.
    """
    audio, image = _by(usage.input_by_modality, "audio"), _by(usage.input_by_modality, "image")
    text = max(0, usage.input - audio - image)
    if not usage.cached_by_modality:  # none reported (chat completions): text, then audio, then image, as below
        unattributed = max(0, usage.cached_input or 0)
        cached_text = min(text, unattributed)
        cached_audio = min(audio, unattributed - cached_text)
        cached_image = min(image, unattributed - cached_text - cached_audio)
        return {"text": (text, cached_text), "audio": (audio, cached_audio), "image": (image, cached_image)}
    inputs = {"text": text, "audio": audio, "image": image}
    reported = dict(usage.cached_by_modality)
    cached = {modality: min(tokens, reported.get(modality, 0)) for modality, tokens in inputs.items()}
    unattributed = max(0, (usage.cached_input or 0) - sum(reported.values()))
    for modality in (m for m in inputs if m not in reported):
        cached[modality] = min(inputs[modality], unattributed)
        unattributed -= cached[modality]
    return {modality: (tokens, cached[modality]) for modality, tokens in inputs.items()}


def price_tokens(catalog: Catalog | None, provider: str, model: str | None, usage: TokenUsage) -> Cost:
    """
    The cost of C{usage} by C{model}. Cached input is a subset of input, so
    it is taken out of each modality's input before that is priced (see
    L{split_cached} for which modality cached tokens are). Reasoning
    tokens are part of output and priced as output, as OpenAI bills them.
    """
    prices, fallback = _lookup(catalog, provider, model)
    if prices is None:
        return Cost(NO_CATALOG if catalog is None else MISSING)
    rates = prices.effective(usage.input)
    if _text_only(usage):
        # Text in, text out, nothing cached (most HTTP answers): the lines below, without the empty ones.
        components = {}
        if usage.input and rates.input is not None:
            components["input"] = Decimal(usage.input) * rates.input / PER_TOKENS
        output = max(0, usage.output)
        if output and rates.output is not None:
            components["output"] = Decimal(output) * rates.output / PER_TOKENS
        return _costed(bool(usage.input or output), components, fallback)
    split = split_cached(usage)
    (text_in, cached_text), (audio_in, cached_audio), (image_in, cached_image) = split["text"], split["audio"], split["image"]
    audio_out = _by(usage.output_by_modality, "audio")
    lines = {
        "input": (text_in - cached_text, rates.input),
        "cache_read": (cached_text, rates.cache_read),
        "input_audio": (audio_in - cached_audio, _first(rates.input_audio, rates.input)),
        "cache_read_audio": (cached_audio, _first(rates.cache_read_audio, rates.cache_read)),
        "input_image": (image_in - cached_image, _first(rates.input_image, rates.input)),
        "cache_read_image": (cached_image, _first(rates.cache_read_image, rates.cache_read)),
        "output": (max(0, usage.output - audio_out), rates.output),
        "output_audio": (audio_out, _first(rates.output_audio, rates.output)),
    }
    return _cost(lines, PER_TOKENS, fallback)


def price_audio(catalog: Catalog | None, provider: str, model: str | None, duration: AudioDuration) -> Cost:
    """The cost of transcription billed by time (C{transcriptionPerMinute})."""
    prices, fallback = _lookup(catalog, provider, model)
    if prices is None:
        return Cost(NO_CATALOG if catalog is None else MISSING)
    minutes = Decimal(str(duration.seconds)) / 60
    return _cost({"transcription": (minutes, prices.rates.transcription_per_minute)}, Decimal(1), fallback)


def _first(rate: Decimal | None, otherwise: Decimal | None) -> Decimal | None:
    return rate if rate is not None else otherwise


def _lookup(catalog: Catalog | None, provider: str, model: str | None) -> tuple[ModelPrices | None, bool]:
    """C{model}'s prices and whether they are the provider's C{"*"} fallback."""
    if catalog is None or model is None:
        return None, False
    prices = catalog.resolve(provider, model)
    if prices is not None:
        return prices, False
    fallback = catalog.fallback(provider)
    return fallback, fallback is not None


def _cost(lines: Mapping[str, tuple[Any, Decimal | None]], unit: Decimal, fallback: bool) -> Cost:
    used, components = False, {}
    for name, (amount, rate) in lines.items():
        if amount:
            used = True
            if rate is not None:
                components[name] = Decimal(amount) * rate / unit
    return _costed(used, components, fallback)


def _costed(used: bool, components: dict[str, Decimal], fallback: bool) -> Cost:
    """The cost of C{components} (C{used}: some amount was not 0) by how the lookup went."""
    if fallback:
        # Priced, but the lookup still missed: agentgateway's counter says Missing, as agentgateway would.
        return Cost(MISSING, components, fallback=True)
    if used and not components:
        return Cost(UNPRICED)  # the model is listed, but nothing it used has a rate
    # A used token type without a rate (and no fallback) costs nothing, as in agentgateway.
    return Cost(EXACT, components)
