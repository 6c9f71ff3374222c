"""
C{policies.ai.promptGuard} and C{policies.ai.prompts} as data: guards on
requests and responses (regex, webhook, OpenAI moderation) and the
messages added around a request's own. What they do is
L{agw.decisions}'s business.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Any

from attrs import field, frozen

from agw.config._secret import Secret


class Builtin(str, Enum):
    """The built-in recognizers (C{rules[].builtin}): agentgateway's five, then agw's own."""

    SSN = "ssn"
    CREDIT_CARD = "creditCard"
    PHONE_NUMBER = "phoneNumber"
    EMAIL = "email"
    CA_SIN = "caSin"
    # agw's own (a config that uses them does not run on agentgateway).
    IPV4 = "ipv4"
    AWS_ACCESS_KEY = "awsAccessKey"
    GITHUB_TOKEN = "githubToken"
    API_KEY = "apiKey"


class GuardAction(str, Enum):
    """C{regex.action}: what a match does (agentgateway's default: mask)."""

    MASK = "mask"
    REJECT = "reject"


#: agentgateway's default rejection text (its C{rejection.body} default).
DEFAULT_REJECTION = "The request was rejected due to inappropriate content"


@frozen
class RegexRule:
    """
    One C{rules[]} entry: a built-in recognizer or a compiled pattern,
    exactly one. C{partial}: the pattern compiled by the C{regex} module,
    which finds a match that may be starting at the end of a stream's text
    (C{None}: it would not compile there; a stream then holds C{holdChars}).
    """

    builtin: Builtin | None = None
    pattern: re.Pattern[str] | None = None
    partial: Any = field(default=None, eq=False, repr=False)


@frozen
class Rejection:
    """
    C{rejection}: the answer to a rejected request. C{body} C{None} is
    agw's OpenAI-shaped error with agentgateway's default text; a
    configured body is sent as it is.
    """

    status: int = 403
    body: str | None = None
    # HeaderModifier of the answer: (name, value) pairs added, set; names removed.
    add: tuple[tuple[str, str], ...] = ()
    set: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@frozen
class RegexGuard:
    """A guard's C{regex}: its rules, in order, and what a match does."""

    rules: tuple[RegexRule, ...]
    action: GuardAction = GuardAction.MASK


class Scope(str, Enum):
    """C{scope[]}: which parts of a request a guard reads (agentgateway's ContentScope)."""

    SYSTEM_PROMPT = "systemPrompt"
    MESSAGES = "messages"
    TOOL_INPUT = "toolInput"
    TOOL_OUTPUT = "toolOutput"


#: agentgateway's default C{scope}: the system prompt and the messages.
DEFAULT_SCOPE = (Scope.SYSTEM_PROMPT, Scope.MESSAGES)


class FailureMode(str, Enum):
    """C{webhook.failureMode}: what a guard backend that fails (unreachable, error, bad answer) means."""

    FAIL_CLOSED = "failClosed"
    FAIL_OPEN = "failOpen"


@frozen
class HeaderMatch:
    """A C{forwardHeaderMatches[]} entry: a header name and an exact value or a pattern its value must match."""

    name: str
    exact: str | None = None
    pattern: re.Pattern[str] | None = None

    def matches(self, value: str) -> bool:
        """Whether C{value} (of a header named C{name}) is forwarded."""
        if self.exact is not None:
            return value == self.exact
        assert self.pattern is not None
        return self.pattern.fullmatch(value) is not None


@frozen
class Webhook:
    """
    C{webhook}: agentgateway's guardrail webhook, C{POST /request} or
    C{/response} to C{host} (host:port, plain HTTP as agentgateway's
    C{target.host}); C{timeout} is agw's (agentgateway's is 10 s).
    """

    host: str
    forward_header_matches: tuple[HeaderMatch, ...] = ()
    failure_mode: FailureMode = FailureMode.FAIL_CLOSED
    timeout: float = 10.0


#: Where agentgateway sends moderation requests (it has no field to change it; agw's C{url} does).
MODERATION_URL = "https://api.openai.com/v1/moderations"


@frozen
class Moderation:
    """
    C{openAIModeration}: OpenAI's moderation endpoint; a flagged input
    rejects. C{url} and C{timeout} are agw's own fields; C{key} and
    C{tls_root} come from C{policies.backendAuth}/C{backendTLS}.
    """

    model: str = "omni-moderation-latest"
    url: str = MODERATION_URL
    key: Secret | None = None
    tls_root: str | None = None
    timeout: float = 10.0
    # agentgateway fails open when the moderation call fails; agw's failureMode can say otherwise.
    failure_mode: FailureMode = FailureMode.FAIL_OPEN


@frozen
class Guard:
    """
    One C{promptGuard.request[]} or C{response[]} entry: exactly one of
    C{regex}, C{webhook}, C{moderation}; the parts it reads and the answer
    to what it rejects.
    """

    regex: RegexGuard | None = None
    webhook: Webhook | None = None
    moderation: Moderation | None = None
    scope: tuple[Scope, ...] = DEFAULT_SCOPE
    rejection: Rejection = field(factory=Rejection)

    @property
    def kind(self) -> str:
        """agentgateway's name for this guard's kind (metric and log values)."""
        if self.regex is not None:
            return "regex"
        return "webhook" if self.webhook is not None else "openAIModeration"

    @property
    def failure_mode(self) -> FailureMode:
        """What this guard's backend failing means (a regex guard cannot fail)."""
        if self.webhook is not None:
            return self.webhook.failure_mode
        if self.moderation is not None:
            return self.moderation.failure_mode
        return FailureMode.FAIL_OPEN


@frozen
class PromptGuard:
    """
    C{policies.ai.promptGuard}. C{streaming} (agentgateway's C{Enabled}) turns
    response guards on for streamed answers (SSE and Realtime output);
    request guards read Realtime client events whatever it says (agw's
    choice: a session's input is a request). C{hold_chars} is agw's: the
    most of a stream's newest text held back so that a match split
    across deltas is caught before any of it is sent.
    """

    request: tuple[Guard, ...] = ()
    response: tuple[Guard, ...] = ()
    streaming: bool = False
    hold_chars: int = 64
    # agw's holdForTranscript: seconds a server-VAD response waits for its turn's transcript to pass (0: not held).
    hold_for_transcript: float = 0.0

    def __bool__(self) -> bool:
        return bool(self.request or self.response)


@frozen
class PromptMessage:
    """A C{prompts.prepend[]}/C{append[]} entry: a chat message."""

    role: str
    content: str


@frozen
class Prompts:
    """C{policies.ai.prompts}: messages put before and after the client's own."""

    prepend: tuple[PromptMessage, ...] = ()
    append: tuple[PromptMessage, ...] = ()
