"""
Who a request or a session is for, as the metrics and the access log say
it: the client key's C{metadata.name} (the consumer), and the metadata
fields the operator adds through agentgateway's C{config.metrics.fields.add}
(extra metric labels) and C{config.logging.fields.add} (extra log fields),
written as C{apiKey.<field>}. Values come from the configured keys only, so
every label's values are bounded by the key list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from attrs import field, frozen


@frozen
class Attribution:
    """The consumer, the extra label values (in the configured order), and the extra log fields."""

    consumer: str = ""
    labels: tuple[str, ...] = ()
    log_fields: Mapping[str, Any] = field(factory=dict)

    @property
    def name(self) -> str | None:
        """The consumer's name, or C{None} for an anonymous caller."""
        return self.consumer or None


class Attributor:
    """Makes the L{Attribution} of a caller from its key's metadata."""

    def __init__(
        self, metric_fields: Sequence[tuple[str, str]] = (), log_fields: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.metric_fields = tuple(metric_fields)
        self.log_fields = tuple(log_fields)
        self.anonymous = Attribution(labels=tuple("" for _ in self.metric_fields))

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(label for label, _ in self.metric_fields)

    def __call__(self, name: str | None, metadata: Mapping[str, Any] | None) -> Attribution:
        if name is None and not metadata:
            return self.anonymous
        metadata = metadata or {}
        labels = tuple(_text(metadata.get(key)) for _, key in self.metric_fields)
        fields: dict[str, Any] = {"agw.consumer": name} if name else {}
        fields.update({field_name: metadata.get(key) for field_name, key in self.log_fields})
        return Attribution(name or "", labels, fields)


def _text(value: Any) -> str:
    return "" if value is None else str(value)
