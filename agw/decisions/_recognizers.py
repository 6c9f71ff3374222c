"""
The built-in recognizers of C{rules[].builtin}: a simple pattern each, and
for numbers that carry a check digit (card numbers, Canadian SINs) the
Luhn check too, so that an order number of the right length is not
masked. Each replaces what it finds with agentgateway's token.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import regex

from attrs import frozen

from agw.config import Builtin


def luhn_valid(digits: str) -> bool:
    """Whether C{digits} (digits only) pass the Luhn (mod 10) check."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


@frozen
class Recognizer:
    """
    A pattern, an optional check of each match, and the token a match
    becomes; C{partial} is the same pattern for the C{regex} module, which
    says where a match may be starting at the end of a stream's text.
    """

    pattern: re.Pattern[str]
    token: str
    check: Callable[[str], bool] | None = None
    partial: Any = None

    def mask(self, text: str) -> tuple[str, int]:
        """C{text} with each accepted match replaced by the token, and how many were."""
        if self.check is None:
            return self.pattern.subn(self.token, text)
        masked = 0

        def replace(match: re.Match[str]) -> str:
            nonlocal masked
            if self.check is not None and self.check(match.group(0)):
                masked += 1
                return self.token
            return match.group(0)  # fails the check: not what it looked like

        return self.pattern.sub(replace, text), masked


def _recognizer(pattern: str, token: str, check: Callable[[str], bool] | None = None) -> Recognizer:
    """A recognizer of C{pattern}, compiled for C{re} (masking) and for C{regex} (partial matches in streams)."""
    return Recognizer(re.compile(pattern), token, check, regex.compile(pattern))


RECOGNIZERS: dict[Builtin, Recognizer] = {
    # US SSN written AAA-GG-SSSS, without the numbers never issued (area 000, 666, 9xx; group 00; serial 0000).
    Builtin.SSN: _recognizer(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])", "<SSN>"),
    # 13 to 19 digits, optionally grouped by single spaces or dashes, passing the Luhn check.
    Builtin.CREDIT_CARD: _recognizer(
        r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])", "<CREDIT_CARD>", lambda found: luhn_valid(_digits(found)),
    ),
    # North American numbers with separators: (555) 123-4567, 555-123-4567, +1 555.123.4567; or E.164: +15551234567.
    Builtin.PHONE_NUMBER: _recognizer(
        r"(?<![\w+])(?:(?:\+1[ .-]?)?(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}|\+[1-9]\d{7,14})(?!\d)", "<PHONE_NUMBER>",
    ),
    # local@domain.tld. A match starts only where a run of local-part characters starts: tried
    # from inside a long run too, the scan would be quadratic in the run's length.
    Builtin.EMAIL: _recognizer(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}", "<EMAIL_ADDRESS>"),
    # Canadian SIN: 9 digits (3-3-3, with the same separator or none), not starting 0 or 8, passing the Luhn check.
    Builtin.CA_SIN: _recognizer(
        r"(?<![\d-])[1-79]\d{2}([ -]?)\d{3}\1\d{3}(?![\d-])", "<CA_SIN>", lambda found: luhn_valid(_digits(found)),
    ),
    # agw's own. Dotted-quad IPv4 addresses, each part 0-255, not inside a longer dotted number (a version string).
    Builtin.IPV4: _recognizer(
        r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d]|\.\d)",
        "<IP_ADDRESS>",
    ),
    # AWS access key ids: a four-letter kind (AKIA long-term, ASIA temporary...) and 16 characters of base32.
    Builtin.AWS_ACCESS_KEY: _recognizer(r"(?<![A-Z0-9])(?:AKIA|ASIA|ABIA|ACCA|AIDA|AROA|ANPA|ANVA|AGPA)[A-Z2-7]{16}(?![A-Z0-9])", "<AWS_ACCESS_KEY>"),
    # GitHub tokens: ghp_/gho_/ghu_/ghs_/ghr_ and 36 characters, or fine-grained github_pat_ tokens.
    Builtin.GITHUB_TOKEN: _recognizer(
        r"(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{22,255})(?![A-Za-z0-9_])", "<GITHUB_TOKEN>",
    ),
    # Generic secret keys by their common prefixes: OpenAI (sk-, sk-proj-), Anthropic (sk-ant-), Stripe
    # (sk_live_, rk_live_), Slack (xoxb-, xoxp-), Google (AIza): at least 20 characters after the prefix.
    Builtin.API_KEY: _recognizer(
        r"(?<![A-Za-z0-9_-])(?:sk-(?:proj-|ant-)?|sk_live_|rk_live_|xox[bpas]-|AIza)[A-Za-z0-9_-]{20,}", "<API_KEY>",
    ),
}

#: What a custom C{pattern} match becomes (agentgateway's token).
PATTERN_TOKEN = "<masked>"
