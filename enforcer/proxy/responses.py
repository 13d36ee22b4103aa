"""The answers the proxy gives instead of the origin's: mitmproxy response objects around ``blockpage``.

- ``block(match, target, lang)``: the 403 block page of a rule in ``lang`` (``blockpage.choose_language``);
  ``error(target)``: the 403 "could not decide" page
  (fail closed); ``bad_request(why)``: the 400 for a Host that reads two ways (``Connection: close``).
- ``sinkhole(request)``: the resolver's default ``null`` DNS answer (A 0.0.0.0, AAAA ::, NODATA otherwise).
"""

from __future__ import annotations

import ipaddress
import time

from mitmproxy import dns, http
from mitmproxy.net.dns import types

from enforcer.policy import Match
from enforcer.proxy import blockpage

SINKHOLE_TTL = 60


def _response(
    status: int, reason: bytes, rule_id: str, body: bytes, *extra: tuple[bytes, bytes], lang: str = "en"
) -> http.Response:
    # Built directly rather than with Response.make: make() re-encodes the body and re-derives the headers on every
    # call, which is most of what a blocked flow costs.
    now = time.time()
    fields = [(k.encode(), v.encode()) for k, v in blockpage.headers(rule_id, lang).items()]
    fields += [(b"content-length", str(len(body)).encode()), *extra]
    return http.Response(b"HTTP/1.1", status, reason, http.Headers(fields), body, None, now, now)


def block(match: Match, target: str, lang: str = blockpage.DEFAULT_LANGUAGE) -> http.Response:
    body = blockpage.render(match, target, lang)
    return _response(blockpage.STATUS, b"Forbidden", match.rule.id, body, lang=lang)


def error(target: str) -> http.Response:
    return _response(blockpage.STATUS, b"Forbidden", blockpage.ERROR_RULE, blockpage.render_error(target))


def bad_request(why: str) -> http.Response:
    body = blockpage.render_bad_request(why)
    return _response(400, b"Bad Request", blockpage.BAD_REQUEST_RULE, body, (b"connection", b"close"))


def path_too_long(why: str, limit: int) -> http.Response:
    body = blockpage.render_path_too_long(why, limit)
    return _response(414, b"URI Too Long", blockpage.PATH_TOO_LONG_RULE, body, (b"connection", b"close"))


def sinkhole(request: dns.Message) -> dns.Message:
    """The resolver's default ``null`` answer: A 0.0.0.0 / AAAA ::, NODATA for every other type."""
    question = request.question
    assert question is not None
    if question.type == types.A:
        return request.succeed([dns.ResourceRecord.A(question.name, ipaddress.IPv4Address(0), ttl=SINKHOLE_TTL)])
    if question.type == types.AAAA:
        return request.succeed([dns.ResourceRecord.AAAA(question.name, ipaddress.IPv6Address(0), ttl=SINKHOLE_TTL)])
    return request.succeed([])
