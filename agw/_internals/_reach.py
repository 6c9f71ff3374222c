"""What a reach into Autobahn, Twisted or prometheus_client is (L{Reach}), and the versions they were checked with."""

from __future__ import annotations

from attrs import frozen

CHECKED_WITH = {"autobahn": "26.10.2", "twisted": "26.10.0", "prometheus_client": "0.26.0"}


@frozen
class Reach:
    """C{attribute} of C{module.owner}: a method or class attribute, or one the owner's code uses on instances."""

    module: str
    owner: str
    attribute: str
    why: str
