"""mitmproxy's DNS and WireGuard modes: ``DnsSinkhole.dns_request`` answers a blocked name the way ``enforcer dns``
does (A 0.0.0.0, AAAA ::, NODATA otherwise; ``responses.sinkhole``), replacing the answer mitmproxy's own resolver
(which runs before script addons) has already put there. A policy error answers REFUSED (fail closed).
"""

from __future__ import annotations

from mitmproxy import dns
from mitmproxy.net.dns import response_codes, types

from enforcer.proxy import responses
from enforcer.proxy.decide import ALLOWED, ERROR
from enforcer.proxy.runtime import Runtime, mark


class DnsSinkhole:
    name = "enforcer_dns"

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    def dns_request(self, flow: dns.DNSFlow) -> None:
        # Unlike the HTTP hooks, an existing answer is NOT a reason to skip: mitmproxy's own DnsResolver runs before
        # script addons and has already resolved the name by now (its lookup cannot be prevented from here), so a
        # blocked name always gets the sinkhole answer, replacing whatever was there.
        rt = self.rt
        try:
            question = flow.request.question
            if question is None:
                return
            match = rt.policy().match_name(question.name)
            if match is None:
                rt.flows.inc((ALLOWED,))
                return
            verdict = rt.judge(match, flow.client_conn)
            rt.record(
                verdict,
                "dns-block",
                flow.client_conn,
                dns_question_name=question.name,
                dns_question_type=types.to_str(question.type),
            )
            flow.metadata["enforcer"] = mark(verdict, "dns-block")
            if verdict.blocked:
                flow.error = None
                flow.response = responses.sinkhole(flow.request)
        except Exception:
            rt.hook_error("dns_request")
            flow.metadata["enforcer"] = {"outcome": ERROR}
            flow.error = None
            flow.response = flow.request.fail(response_codes.REFUSED)
