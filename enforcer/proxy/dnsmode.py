"""mitmproxy's DNS and WireGuard modes: ``DnsSinkhole.dns_request`` answers a blocked name the way ``enforcer dns``
does (A 0.0.0.0, AAAA ::, NODATA otherwise; ``responses.sinkhole``), replacing the answer mitmproxy's own resolver
(which runs before script addons) has already put there. A policy error answers REFUSED (fail closed).

``dns_response`` judges the answer of a name no rule blocked with the resolver's own response policy
(enforcer/dns/response_policy.py: addresses in the blocked ranges, CNAME targets and HTTPS/SVCB targets and hints
under blocked names), so that both front ends refuse the same answers; a blocked answer becomes the sinkhole answer
(event action ``dns-response-block``), and an answer that cannot be read is SERVFAIL.
"""

from __future__ import annotations

from mitmproxy import dns
from mitmproxy.net.dns import response_codes, types

from enforcer.dns import response_policy
from enforcer.dns.wire import WireError
from enforcer.policy import Match, fast_key
from enforcer.policy.addresses import parse_ip_literal
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
            self._decide(flow, match, "dns-block")
        except Exception:
            rt.hook_error("dns_request")
            flow.metadata["enforcer"] = {"outcome": ERROR}
            flow.error = None
            flow.response = flow.request.fail(response_codes.REFUSED)

    def _decide(self, flow: dns.DNSFlow, match: Match, action: str) -> None:
        """The verdict on ``match`` for this client now: counted, recorded (one event), marked on the flow, and the
        sinkhole answer when it is enforced."""
        rt, question = self.rt, flow.request.question
        assert question is not None
        verdict = rt.judge(match, flow.client_conn)
        rt.record(
            verdict,
            action,
            flow.client_conn,
            dns_question_name=question.name,
            dns_question_type=types.to_str(question.type),
        )
        flow.metadata["enforcer"] = mark(verdict, action)
        if verdict.blocked:
            flow.error = None
            flow.response = responses.sinkhole(flow.request)

    def dns_response(self, flow: dns.DNSFlow) -> None:
        rt = self.rt
        response, question = flow.response, flow.request.question
        meta = flow.metadata.get("enforcer")
        if response is None or question is None or (meta is not None and meta.get("outcome") != ALLOWED):
            return  # decided by its name in dns_request (blocked, monitored, or an error answered there)
        try:
            policy = rt.policy()
            # An allow exception (WeCom) keeps its aliases, as in the resolver; its addresses are still judged.
            names = not (meta is not None and meta.get("rule"))
            try:
                found = response_policy.check(policy, response.packed, fast_key(question.name), names)
            except WireError:
                flow.response = flow.request.fail(response_codes.SERVFAIL)
                return
            if found is None:
                return
            matched = found[1]
            match = policy.match_ip(addr) if (addr := parse_ip_literal(matched)) else policy.match_name(matched)
            if match is None:  # the check found a rule the matcher does not: never serve what it refused
                flow.response = responses.sinkhole(flow.request)
                return
            self._decide(flow, match, "dns-response-block")
        except Exception:
            rt.hook_error("dns_response")
            flow.metadata["enforcer"] = {"outcome": ERROR}
            flow.response = flow.request.fail(response_codes.REFUSED)
