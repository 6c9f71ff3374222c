"""
The twistd plugin for agw: C{twistd -n agw -f config.yaml}.

Only names the service maker; everything heavy is imported by L{agw.serve} when
twistd actually runs it.
"""

from twisted.application.service import ServiceMaker

agw = ServiceMaker(
    "agw",
    "agw.serve",
    "An AI gateway: OpenAI Realtime and HTTP relay with token metrics.",
    "agw",
)
