"""
L{Secret}: a credential from the config that never shows its value.
"""

from __future__ import annotations

from attrs import field, frozen


@frozen(repr=False)
class Secret:
    """
    A credential from the config. Its C{repr} and C{str} never show the value,
    so it cannot leak through a log line or an error message by accident.
    """

    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "Secret(<redacted>)"

    __str__ = __repr__
