"""
The children a response's and a request's observations go to, looked up
once per label set (agw.metering's series): each label set's own, bounded
where the label values are.
"""

from __future__ import annotations

import tracemalloc

from prometheus_client import generate_latest
from twisted.trial.unittest import SynchronousTestCase

from agw.metering import GatewayMetrics, ModelLabels, RouteLabels
from agw.metering._attribution import Attribution
from agw.metering._usage import TokenUsage

ROUTE = RouteLabels.of(3000, "default", "openai")
OTHER_ROUTE = RouteLabels.of(3000, "default", "azure")


def usage(tokens: int) -> TokenUsage:
    return TokenUsage(input=tokens, output=1, input_by_modality=(("text", tokens),), output_by_modality=(("text", 1),))


def sample(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    """The value of the one sample of C{name} whose labels include C{labels} (0 if none)."""
    found = [
        sample.value for family in metrics.registry.collect() for sample in family.samples
        if sample.name == name and all(sample.labels.get(key) == value for key, value in labels.items())
    ]
    assert len(found) <= 1, found
    return found[0] if found else 0.0


class ModelSeriesTests(SynchronousTestCase):
    def test_each_label_set_has_its_own_series(self) -> None:
        metrics = GatewayMetrics(extra_labels=("team",))
        alice = Attribution("alice", ("red",), {"user": "a"})
        bob = Attribution("bob", ("red",))
        alice_again = Attribution("alice", ("red",), {"user": "another"})  # log fields are not labels
        mini, full = ModelLabels("chat", "gpt-4o-mini", None), ModelLabels("chat", "gpt-4o", None)
        metrics.record_tokens(ROUTE, mini, usage(10), alice)
        metrics.record_tokens(ROUTE, mini, usage(20), bob)
        metrics.record_tokens(ROUTE, mini, usage(40), alice_again)
        metrics.record_tokens(ROUTE, full, usage(80), alice)
        metrics.record_tokens(OTHER_ROUTE, mini, usage(160), alice)
        name = "agw_gen_ai_tokens_total"
        def tokens(who: str, model: str, route: str) -> float:
            return sample(
                metrics, name, consumer=who, gen_ai_request_model=model, route=route, gen_ai_token_type="input",
            )
        self.assertEqual(tokens("alice", "gpt-4o-mini", "openai"), 50)
        self.assertEqual(tokens("bob", "gpt-4o-mini", "openai"), 20)
        self.assertEqual(tokens("alice", "gpt-4o", "openai"), 80)
        self.assertEqual(tokens("alice", "gpt-4o-mini", "azure"), 160)

    def test_model_names_past_the_bound_share_one_series(self) -> None:
        metrics = GatewayMetrics(max_model_labels=2)
        for index in range(5):
            metrics.record_tokens(ROUTE, ModelLabels("chat", f"model-{index}", None), usage(1))
        text = generate_latest(metrics.registry).decode()
        self.assertIn('gen_ai_request_model="model-1"', text)
        self.assertNotIn('gen_ai_request_model="model-2"', text)
        self.assertEqual(
            sample(metrics, "agw_gen_ai_tokens_total", gen_ai_request_model="other", gen_ai_token_type="input"),
            3,
        )


class RequestSeriesTests(SynchronousTestCase):
    def test_requests_by_method_and_status(self) -> None:
        metrics = GatewayMetrics()
        for method, status in ((b"POST", 200), (b"POST", 200), ("POST", 200), (b"GET", 404), (b"BREW", 200)):
            metrics.record_request(ROUTE, method, status, 0.5)
        requests = "agentgateway_requests_total"
        self.assertEqual(sample(metrics, requests, method="POST", status="200"), 3)
        self.assertEqual(sample(metrics, requests, method="GET", status="404"), 1)
        self.assertEqual(sample(metrics, requests, method="_OTHER", status="200"), 1)

    def test_invented_methods_do_not_grow_memory(self) -> None:
        # Methods are the client's: a series kept per method as sent would grow with every one invented.
        metrics = GatewayMetrics()
        for index in range(5000):
            metrics.record_request(ROUTE, b"X%d" % index, 200, 0.1)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for index in range(5000, 25000):
                metrics.record_request(ROUTE, b"X%d" % index, 200, 0.1)
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        self.assertLess(grown, 64 * 1024)
        self.assertEqual(sample(metrics, "agentgateway_requests_total", method="_OTHER", status="200"), 25000)
