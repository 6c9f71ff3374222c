"""
HTTP forwarding: C{completions}, C{embeddings}, C{responses} (usage read on
the way through) and C{passthrough}, over one persistent connection pool
per gateway; the calls of guards that ask a webhook or OpenAI's
moderation endpoint (L{GuardCalls}, L{check_guards}). Imports L{agw.routing}, L{agw.metering} and L{agw.config}.
"""

from agw.http._arriving import ArrivingBody, BodyBroken
from agw.http._body import BodyRelay
from agw.http._deadline import AnswerDeadline, AnswerDeadlines
from agw.http._client import HTTPOptions, TargetEndpoints, UpstreamClient
from agw.http._forward import HTTPForwarder
from agw.http._answer import AnswerTooLarge, read_answer
from agw.http._guard_calls import MAX_ANSWER, GuardCallFailed, GuardCalls, check_guards, check_response_texts
from agw.http._request_body import BytesBodyProducer, Refused, json_object

__all__ = [
    "MAX_ANSWER", "AnswerDeadline", "AnswerDeadlines", "ArrivingBody", "BodyBroken", "BodyRelay", "GuardCallFailed", "GuardCalls", "HTTPForwarder", "HTTPOptions", "TargetEndpoints", "UpstreamClient",
    "check_guards", "check_response_texts", "read_answer", "AnswerTooLarge", "BytesBodyProducer", "Refused", "json_object",
]
