"""
Prices: agentgateway's model cost catalog format, audio at audio rates, and
the cost on /metrics equal to the catalog's price times what the provider
billed, per modality.
"""

from __future__ import annotations

import json
import os
from decimal import Decimal
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase

from agw import parse_config
from agw.metering import (
    GatewayMetrics,
    ModelLabels,
    RouteLabels,
    EXACT,
    MISSING,
    NO_CATALOG,
    UNPRICED,
    AudioDuration,
    CatalogError,
    TokenUsage,
    catalog_for,
    chat_completion_usage,
    default_catalog,
    parse_catalog,
    price_audio,
    price_tokens,
    realtime_response_usage,
)
from agw.metering._accesslog import cost_fields
from agw.serve import Options
from agw.testing import REALTIME_MODEL
from tests.support import (
    GatewayTestCase,
    catalog_price,
    open_client,
    recv_event,
    registry_samples,
    wait_until,
)
from tests.test_budgets import respond

CATALOG = {
    "providers": {
        "openai": {"models": {
            "rt": {"rates": {"input": "4", "cacheRead": "0.4", "output": "16", "inputAudio": "32",
                             "cacheReadAudio": "0.4", "outputAudio": "64", "inputImage": "5"}},
            "text-only": {"rates": {"input": "3", "output": "15"}},
            "cache-only": {"rates": {"cacheRead": "1"}},
            "tiered": {"rates": {"input": "1.25", "output": "10"},
                       "tiers": [{"contextOver": 200000, "rates": {"input": "2.5", "output": "15"}}]},
        }},
    },
}
REALTIME_USAGE = TokenUsage(
    input=1000, output=500, cached_input=300,
    input_by_modality=(("text", 600), ("audio", 350), ("image", 50)),
    cached_by_modality=(("text", 200), ("audio", 100)),
    output_by_modality=(("text", 100), ("audio", 400)),
)


def usd(text: str) -> Decimal:
    return Decimal(text)


class CatalogFormatTests(SynchronousTestCase):
    def test_agentgateway_format(self) -> None:
        catalog = parse_catalog(json.dumps(CATALOG))
        self.assertEqual(catalog.resolve("openai", "rt").rates.input_audio, usd("32"))
        self.assertIsNone(catalog.resolve("anthropic", "rt"))
        self.assertEqual(catalog.resolve("openai", "tiered").tiers[0][0], 200000)

    def test_refused(self) -> None:
        def bad(rates: dict[str, Any], tiers: Any = None) -> str:
            model: dict[str, Any] = {"rates": rates}
            if tiers is not None:
                model["tiers"] = tiers
            with self.assertRaises(CatalogError) as e:
                parse_catalog(json.dumps({"providers": {"openai": {"models": {"m": model}}}}), "c.json")
            return str(e.exception)

        self.assertIn("c.json: providers.openai.models.m.rates.inputCacheRead: unknown field", bad({"inputCacheRead": "1"}))
        self.assertIn("a rate is a decimal string", bad({"input": 0.15}))
        self.assertIn("negative rate not allowed", bad({"input": "-1"}))
        self.assertIn("more than 6 fractional digits", bad({"input": "0.1234567"}))
        self.assertIn("invalid decimal", bad({"input": "cheap"}))
        self.assertIn("contextOver", bad({}, [{"contextOver": 10, "rates": {}}, {"contextOver": 10, "rates": {}}]))
        with self.assertRaises(CatalogError):
            parse_catalog("{", "c.json")

    def test_later_files_replace_whole_entries(self) -> None:
        base = self.mktemp()
        overlay = self.mktemp()
        with open(base, "w") as f:
            json.dump(CATALOG, f)
        with open(overlay, "w") as f:
            json.dump({"providers": {"openai": {"models": {"rt": {"rates": {"output": "8"}}}}}}, f)
        catalog = catalog_for([base, overlay])
        self.assertEqual(catalog.resolve("openai", "rt").rates.output, usd("8"))
        self.assertIsNone(catalog.resolve("openai", "rt").rates.input)  # replaced whole, as agentgateway does
        self.assertEqual(catalog.resolve("openai", "text-only").rates.input, usd("3"))

    def test_which_catalog(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            json.dump(CATALOG, f)
        self.assertIs(catalog_for(None, {}), default_catalog())
        self.assertIsNotNone(catalog_for(None, {"MODEL_CATALOG_PATHS": path}).resolve("openai", "rt"))
        self.assertIsNone(catalog_for([], {"MODEL_CATALOG_PATHS": path}))  # modelCatalog: [] -> no catalog
        self.assertRaises(CatalogError, catalog_for, [path + ".missing"])

    def test_config_names_catalog_files_and_twistd_checks_them(self) -> None:
        text = "config:\n  modelCatalog:\n  - file: {path}\nbinds:\n- port: 3000\n  listeners: []\n"
        self.assertEqual(parse_config(text.format(path="a.json"), {}).model_catalog, ("a.json",))
        config = self.mktemp() + ".yaml"
        with open(config, "w") as f:
            f.write(text.format(path=os.path.join(os.path.dirname(config), "missing.json")))
        with self.assertRaises(SystemExit) as e:  # one line on standard error, exit 1 (see Options.postOptions in agw.serve._options)
            Options().parseOptions(["-f", config])
        self.assertIn("config.modelCatalog:", str(e.exception))
        self.assertIn("missing.json: cannot read", str(e.exception))


class PriceTests(SynchronousTestCase):
    catalog = parse_catalog(json.dumps(CATALOG))

    def test_audio_at_audio_rates_cached_apart(self) -> None:
        cost = price_tokens(self.catalog, "openai", "rt", REALTIME_USAGE)
        self.assertEqual(cost.status, EXACT)
        per_million = {
            "input": 400 * 4,  # 600 text less 200 cached
            "cache_read": 200 * usd("0.4"),
            "input_audio": 250 * 32,  # 350 audio less 100 cached
            "cache_read_audio": 100 * usd("0.4"),
            "input_image": 50 * 5,
            "output": 100 * 16,
            "output_audio": 400 * 64,
        }
        self.assertEqual(dict(cost.components), {k: Decimal(v) / 1_000_000 for k, v in per_million.items()})
        self.assertEqual(cost.total, usd("0.03717"))

    def test_text_rates_when_the_model_has_no_audio_rates(self) -> None:
        cost = price_tokens(self.catalog, "openai", "text-only", REALTIME_USAGE)
        # no cacheRead rate: cached tokens cost nothing; audio and image at the text rates
        expected = (400 * 3 + 250 * 3 + 50 * 3 + 100 * 15 + 400 * 15) / Decimal(1_000_000)
        self.assertEqual((cost.status, cost.total), (EXACT, expected))

    def test_lookup_outcomes(self) -> None:
        self.assertEqual(price_tokens(None, "openai", "rt", REALTIME_USAGE).status, NO_CATALOG)
        self.assertEqual(price_tokens(self.catalog, "openai", "unknown-model", REALTIME_USAGE).status, MISSING)
        self.assertEqual(price_tokens(self.catalog, "openai", None, REALTIME_USAGE).status, MISSING)
        unpriced = price_tokens(self.catalog, "openai", "cache-only", TokenUsage(input=10, output=5))
        self.assertEqual((unpriced.status, unpriced.total), (UNPRICED, 0))

    def test_tier_reprices_the_whole_request(self) -> None:
        below = price_tokens(self.catalog, "openai", "tiered", TokenUsage(input=200_000, output=1000))
        above = price_tokens(self.catalog, "openai", "tiered", TokenUsage(input=250_000, output=1000))
        self.assertEqual((below.total, above.total), (usd("0.26"), usd("0.64")))

    def test_text_with_empty_details_at_text_rates(self) -> None:
        """A chat answer's details of 0 audio and 0 cached tokens change nothing: input and output at the text rates."""
        usage = chat_completion_usage({"usage": {
            "prompt_tokens": 1200, "completion_tokens": 300,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        }})
        assert usage is not None
        cost = price_tokens(self.catalog, "openai", "rt", usage)
        self.assertEqual(dict(cost.components), {"input": Decimal(1200 * 4) / 1_000_000, "output": Decimal(300 * 16) / 1_000_000})
        self.assertEqual(cost.status, EXACT)

    def test_transcription_by_the_minute(self) -> None:
        cost = price_audio(default_catalog(), "openai", "gpt-realtime-whisper", AudioDuration(90.0))
        self.assertEqual((cost.status, cost.total), (EXACT, usd("0.017") * Decimal("1.5")))



def realtime_done(input_details: dict[str, Any], output_details: dict[str, Any]) -> TokenUsage:
    """The usage agw reads from a Realtime C{response.done} with these details."""
    usage = {
        "input_tokens": sum(input_details.get(f"{m}_tokens", 0) for m in ("text", "audio", "image")),
        "output_tokens": sum(output_details.values()),
        "input_token_details": input_details, "output_token_details": output_details,
    }
    parsed = realtime_response_usage({"type": "response.done", "response": {"usage": usage}})
    assert parsed is not None
    return parsed


class CachedModalityTests(SynchronousTestCase):
    """
    Cached input by modality, at gpt-realtime's rates (per 1M: text 4, cached
    text 0.40, audio 32, cached audio 0.40, image 5, cached image 0.50,
    output 16, audio output 64).
    """

    catalog = default_catalog()

    def price(self, usage: TokenUsage) -> dict[str, Decimal]:
        cost = price_tokens(self.catalog, "openai", "gpt-realtime", usage)
        self.assertEqual(cost.status, EXACT)
        return dict(cost.components)

    def test_realtime_cached_without_modality_details(self) -> None:
        # 20 text + 100 audio in, 100 cached, no cached_tokens_details: the
        # cached prefix is the 20 text tokens, then 80 of the audio.
        usage = realtime_done(
            {"text_tokens": 20, "audio_tokens": 100, "cached_tokens": 100}, {"text_tokens": 10, "audio_tokens": 50},
        )
        self.assertEqual(self.price(usage), {
            "cache_read": usd("0.000008"),  # 20 x 0.40
            "cache_read_audio": usd("0.000032"),  # 80 x 0.40
            "input_audio": usd("0.00064"),  # 20 x 32
            "output": usd("0.00016"),  # 10 x 16
            "output_audio": usd("0.0032"),  # 50 x 64
        })

    def test_cached_spills_to_image_and_never_past_input(self) -> None:
        usage = realtime_done(
            {"text_tokens": 10, "audio_tokens": 20, "image_tokens": 30, "cached_tokens": 50}, {"text_tokens": 0},
        )
        self.assertEqual(self.price(usage), {
            "cache_read": usd("0.000004"),  # 10 x 0.40
            "cache_read_audio": usd("0.000008"),  # 20 x 0.40
            "cache_read_image": usd("0.00001"),  # 20 x 0.50
            "input_image": usd("0.00005"),  # 10 x 5
        })
        # More cached than input (a confused report): all input is cached, the rest costs nothing.
        over = realtime_done({"text_tokens": 10, "audio_tokens": 20, "cached_tokens": 70}, {"text_tokens": 0})
        self.assertEqual(self.price(over), {
            "cache_read": usd("0.000004"),  # 10 x 0.40
            "cache_read_audio": usd("0.000008"),  # 20 x 0.40
        })

    def test_http_cached_without_modality_details(self) -> None:
        # Chat completions report cached and audio tokens, never which cached tokens are audio.
        usage = chat_completion_usage({"usage": {
            "prompt_tokens": 120, "completion_tokens": 10,
            "prompt_tokens_details": {"cached_tokens": 100, "audio_tokens": 100},
            "completion_tokens_details": {"audio_tokens": 0},
        }})
        assert usage is not None
        self.assertEqual(self.price(usage), {
            "cache_read": usd("0.000008"),  # 20 text x 0.40
            "cache_read_audio": usd("0.000032"),  # 80 audio x 0.40
            "input_audio": usd("0.00064"),  # 20 audio x 32
            "output": usd("0.00016"),  # 10 x 16
        })

    def test_reported_details_are_used_but_capped_at_input(self) -> None:
        # The details say 80 of the cached 100 are audio: 20 text, 80 audio, as reported.
        usage = realtime_done(
            {"text_tokens": 60, "audio_tokens": 100, "cached_tokens": 100,
             "cached_tokens_details": {"text_tokens": 20, "audio_tokens": 80}},
            {"text_tokens": 10},
        )
        self.assertEqual(self.price(usage), {
            "input": usd("0.00016"),  # 40 text x 4
            "cache_read": usd("0.000008"),  # 20 x 0.40
            "input_audio": usd("0.00064"),  # 20 audio x 32
            "cache_read_audio": usd("0.000032"),  # 80 x 0.40
            "output": usd("0.00016"),  # 10 x 16
        })
        # Details claiming 120 cached audio tokens of 100: 100 cached audio.
        over = realtime_done(
            {"text_tokens": 0, "audio_tokens": 100, "cached_tokens": 120,
             "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 120}},
            {"text_tokens": 0},
        )
        self.assertEqual(self.price(over), {"cache_read_audio": usd("0.00004")})  # 100 x 0.40



FALLBACK_CATALOG = {
    "providers": {
        "openai": {"models": {
            "listed": {"rates": {"input": "2", "output": "8"}},
            "*": {"rates": {"input": "1", "output": "3", "inputAudio": "10", "outputAudio": "20",
                            "transcriptionPerMinute": "0.06"}},
        }},
        "other": {"models": {"m": {"rates": {"input": "1"}}}},
    },
}
# 100 text + 200 audio in, 50 audio out: at the "*" rates 100 x 1 + 200 x 10 + 50 x 20 = 3100 per 1M.
AUDIO_USAGE = TokenUsage(
    input=300, output=50, input_by_modality=(("text", 100), ("audio", 200)), output_by_modality=(("audio", 50),),
)


class FallbackPriceTests(SynchronousTestCase):
    """A C{"*"} model entry: the operator's price for a provider's models the catalog does not list."""

    catalog = parse_catalog(json.dumps(FALLBACK_CATALOG))

    def test_unlisted_model_priced_at_the_fallback_still_missing(self) -> None:
        cost = price_tokens(self.catalog, "openai", "unlisted", AUDIO_USAGE)
        self.assertEqual((cost.status, cost.fallback), (MISSING, True))
        self.assertEqual(dict(cost.components), {
            "input": usd("0.0001"), "input_audio": usd("0.002"), "output_audio": usd("0.001"),
        })
        self.assertEqual(cost.total, usd("0.0031"))
        # A model that calls itself "*" has no entry of its own either.
        self.assertEqual(price_tokens(self.catalog, "openai", "*", AUDIO_USAGE), cost)

    def test_transcription_at_the_fallback(self) -> None:
        cost = price_audio(self.catalog, "openai", "unlisted-whisper", AudioDuration(30.0))
        self.assertEqual((cost.status, cost.fallback, cost.total), (MISSING, True, usd("0.03")))  # half a minute x 0.06

    def test_fallback_never_replaces_an_entry(self) -> None:
        cost = price_tokens(self.catalog, "openai", "listed", TokenUsage(input=100, output=10))
        self.assertEqual((cost.status, cost.fallback, cost.total), (EXACT, False, usd("0.00028")))  # 100 x 2 + 10 x 8

    def test_no_fallback_elsewhere(self) -> None:
        for provider, model in (("other", "unlisted"), ("nobody", "m"), ("openai", None)):
            with self.subTest(provider=provider, model=model):
                cost = price_tokens(self.catalog, provider, model, AUDIO_USAGE)
                self.assertEqual((cost.status, cost.fallback, cost.total), (MISSING, False, 0))
        self.assertFalse(price_tokens(default_catalog(), "openai", "no-such-model", AUDIO_USAGE).fallback)

    def test_the_default_catalog_prices_what_the_routes_serve(self) -> None:
        catalog = default_catalog()
        usage = TokenUsage(input=1_000_000, output=1_000_000)
        # Per 1M input + 1M output tokens, OpenAI's list prices (docs/governance.md has the table and its sources).
        for model, total in (("gpt-4", "90"), ("gpt-4o", "12.5"), ("gpt-4o-mini", "0.75"), ("gpt-4.1", "10"), ("gpt-5", "11.25"), ("o3", "10")):
            with self.subTest(model=model):
                cost = price_tokens(catalog, "openai", model, usage)
                self.assertEqual((cost.status, cost.total), (EXACT, usd(total)))
        self.assertEqual(price_tokens(catalog, "openai", "text-embedding-3-small", TokenUsage(input=1_000_000)).total, usd("0.02"))

    def test_a_dated_snapshot_has_its_models_price_unless_listed(self) -> None:
        catalog = default_catalog()
        usage = TokenUsage(input=1_000_000, output=1_000_000)
        self.assertEqual(price_tokens(catalog, "openai", "gpt-4o-2024-08-06", usage).total, usd("12.5"))
        self.assertEqual(price_tokens(catalog, "openai", "gpt-4-0613", usage).total, usd("90"))
        self.assertEqual(price_tokens(catalog, "openai", "gpt-4o-2024-05-13", usage).total, usd("20"))  # its own, older price
        for unknown in ("no-such-model-2024-08-06", "gpt-4o-2024-08", "gpt-4o-preview"):
            self.assertEqual(price_tokens(catalog, "openai", unknown, usage).status, MISSING, unknown)

    def test_has_price(self) -> None:
        for provider, model in (("openai", "listed"), ("openai", "unlisted"), ("other", "m")):
            self.assertTrue(self.catalog.has_price(provider, model), (provider, model))
        for provider, model in (("other", "unlisted"), ("nobody", "m"), ("openai", None)):
            self.assertFalse(self.catalog.has_price(provider, model), (provider, model))
        self.assertTrue(default_catalog().has_price("openai", "gpt-realtime"))
        self.assertFalse(default_catalog().has_price("openai", "no-such-model"))

    def test_metrics_charge_the_fallback_and_count_the_lookup_missing(self) -> None:
        metrics = GatewayMetrics(catalog=self.catalog)
        cost = metrics.record_tokens(RouteLabels.of(3000, "l", "r"), ModelLabels("chat", "unlisted", None), AUDIO_USAGE)
        found = registry_samples(metrics.registry)
        lookups = {dict(labels)["status"]: value for (name, labels), value in found.items()
                   if name == "agentgateway_cost_catalog_lookups_total"}
        self.assertEqual(lookups, {"Missing": 1.0})
        for metric in ("agentgateway_gen_ai_client_cost_usd_total", "agw_gen_ai_cost_usd_total"):
            charged = sum(value for (name, _), value in found.items() if name == metric)
            self.assertAlmostEqual(charged, 0.0031, places=12, msg=metric)
        self.assertEqual(cost_fields(cost)["agw.ai.usage.cost.status"], "Missing")
        self.assertIs(cost_fields(cost)["agw.ai.usage.cost.fallback"], True)
        self.assertNotIn("agw.ai.usage.cost.fallback", cost_fields(price_tokens(self.catalog, "openai", "listed", AUDIO_USAGE)))

    def test_metrics_say_which_models_they_price(self) -> None:
        metrics = GatewayMetrics(catalog=self.catalog)
        self.assertEqual([metrics.prices(m) for m in ("listed", "unlisted", None)], [True, True, False])
        self.assertFalse(GatewayMetrics(catalog=parse_catalog(json.dumps(CATALOG))).prices("unlisted"))
        self.assertFalse(GatewayMetrics(catalog=None).prices("rt"))
        self.assertTrue(GatewayMetrics().prices("gpt-realtime"))
        metrics.catalog = None  # a reload that turned pricing off
        self.assertFalse(metrics.prices("listed"))


class RealtimeCostTests(GatewayTestCase):
    @inlineCallbacks
    def test_charged_cost_is_catalog_price_times_provider_usage(self) -> Any:
        self.fake.transcription_model = "gpt-realtime-whisper"
        self.fake.transcription_usage = {"type": "duration", "seconds": 42.0}

        def session() -> None:
            with open_client(f"{self.ws_base}/realtime?model=gpt-realtime") as ws:
                recv_event(ws)
                for modalities in (["audio"], ["text"], ["audio"]):
                    ws.send(json.dumps({"type": "response.create", "response": {"output_modalities": modalities}}))
                    while recv_event(ws)["type"] != "response.done":
                        pass
                ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
                while recv_event(ws)["type"] != "conversation.item.input_audio_transcription.completed":
                    pass

        yield deferToThread(session)
        yield wait_until(lambda: not self.gateway.relays[0].connections)
        responses = [entry.usage for entry in self.fake.ledger if entry.operation == "chat"]
        expected = sum((catalog_price(usage) for usage in responses), Decimal(0))
        samples = yield self.scrape()
        charged = {
            dict(labels)["gen_ai_operation_name"]: value for (name, labels), value in samples.items()
            if name == "agentgateway_gen_ai_client_cost_usd_total"
        }
        self.assertAlmostEqual(charged["chat"], float(expected), places=12)
        self.assertAlmostEqual(charged["transcription"], 0.017 * 42 / 60, places=12)
        by_component = sum(value for (name, labels), value in samples.items() if name == "agw_gen_ai_cost_usd_total")
        self.assertAlmostEqual(by_component, float(expected) + 0.017 * 42 / 60, places=12)
        lookups = {
            (dict(labels)["status"], dict(labels)["gen_ai_response_model"]): value
            for (name, labels), value in samples.items() if name == "agentgateway_cost_catalog_lookups_total"
        }
        self.assertEqual(lookups, {("Exact", REALTIME_MODEL): 3.0, ("Exact", "gpt-realtime-whisper"): 1.0})
        lines = [json.loads(line) for line in self.access_log.getvalue().splitlines()]
        logged = [Decimal(str(r["agw.ai.usage.cost.total"])) for r in lines if r["event"] == "realtime.response"]
        self.assertEqual([round(c, 9) for c in logged], [round(catalog_price(u), 9) for u in responses])
        (session_line,) = [r for r in lines if r["event"] == "realtime.session"]
        self.assertAlmostEqual(session_line["agw.session.cost_usd"], float(expected) + 0.017 * 42 / 60, places=9)


class RealtimeFallbackCostTests(GatewayTestCase):
    @inlineCallbacks
    def test_session_on_an_unlisted_model_is_charged_the_fallback(self) -> Any:
        # Only a "*" entry, at gpt-realtime's rates (those catalog_price computes with).
        rates = {"input": "4", "cacheRead": "0.4", "output": "16", "inputAudio": "32", "cacheReadAudio": "0.4", "outputAudio": "64"}
        self.gateway.metrics.catalog = parse_catalog(json.dumps({"providers": {"openai": {"models": {"*": {"rates": rates}}}}}))

        def session() -> None:
            with open_client(f"{self.ws_base}/realtime?model=gpt-realtime") as ws:
                recv_event(ws)
                respond(ws, "fallback")

        yield deferToThread(session)
        yield wait_until(lambda: not self.gateway.relays[0].connections)
        (usage,) = [entry.usage for entry in self.fake.ledger if entry.operation == "chat"]
        samples = yield self.scrape()
        lookups = {dict(labels)["status"]: value for (name, labels), value in samples.items()
                   if name == "agentgateway_cost_catalog_lookups_total"}
        self.assertEqual(lookups, {"Missing": 1.0})
        charged = sum(value for (name, _), value in samples.items() if name == "agentgateway_gen_ai_client_cost_usd_total")
        self.assertAlmostEqual(charged, float(catalog_price(usage)), places=12)
        lines = [json.loads(line) for line in self.access_log.getvalue().splitlines()]
        (response,) = [r for r in lines if r["event"] == "realtime.response"]
        self.assertEqual((response["agw.ai.usage.cost.status"], response["agw.ai.usage.cost.fallback"]), ("Missing", True))
        self.assertAlmostEqual(response["agw.ai.usage.cost.total"], float(catalog_price(usage)), places=12)
