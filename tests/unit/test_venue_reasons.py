"""Binance's answers → harvest's venue-neutral reasons (:class:`harvest.venues.base.VenueReason`),
as the adapter classifies python-binance's exceptions (:func:`harvest.venues.binance.classify`).
The same answers over HTTP from the emulator: tests/contract."""

from __future__ import annotations

import json

import pytest
import requests
from binance.exceptions import BinanceAPIException

from harvest.venues import binance_facts as facts
from harvest.venues.base import VenueError, VenueReason
from harvest.venues.binance import classify


def api_error(status: int, code: int, msg: str, headers: dict | None = None) -> BinanceAPIException:
    """python-binance's exception for a JSON error answer, on a real ``requests.Response``."""
    resp = requests.Response()
    resp.status_code = status
    resp._content = json.dumps({"code": code, "msg": msg}).encode()
    resp.headers.update(headers or {})
    return BinanceAPIException(resp, status, resp.text)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("NO_SUCH_ORDER", VenueReason.ORDER_NOT_FOUND),
        ("CANCEL_REJECTED", VenueReason.CANCEL_REJECTED),
        ("REDUCE_ONLY_REJECT", VenueReason.REDUCE_ONLY_REJECTED),
        ("REDUCE_ONLY_FAILED", VenueReason.REDUCE_ONLY_REJECTED),
        ("BALANCE_NOT_SUFFICIENT", VenueReason.MARGIN_INSUFFICIENT),
        ("MIN_NOTIONAL", VenueReason.MIN_NOTIONAL),
        ("MAX_LEVERAGE_RATIO", VenueReason.MAX_NOTIONAL),
        ("DUPLICATED_CLIENT_ORDER_ID", VenueReason.DUPLICATE_CLIENT_ID),
        ("BAD_PRECISION", VenueReason.PRECISION),
        ("QTY_LESS_THAN_MIN_QTY", VenueReason.QTY_TOO_SMALL),
        ("BAD_SYMBOL", VenueReason.BAD_SYMBOL),
        ("INVALID_TIMESTAMP", VenueReason.CLOCK),
        ("REJECTED_MBX_KEY", VenueReason.AUTH),
        ("TOO_MANY_REQUESTS", VenueReason.RATE_LIMITED),
        ("TOO_MANY_ORDERS", VenueReason.RATE_LIMITED),
        ("IP_BANNED", VenueReason.IP_BANNED),
        ("DISCONNECTED", VenueReason.UNAVAILABLE),
        ("UNKNOWN", VenueReason.OUTCOME_UNKNOWN),
        ("PARAM_NOT_REQUIRED", VenueReason.OTHER),
    ],
)
def test_each_binance_answer_harvest_handles_has_its_reason(name, reason):
    status, code, msg = facts.ERRORS[name].fmt(*(["x"] * facts.ERRORS[name].msg.count("%s")))
    e = classify(api_error(status, code, msg, {"Retry-After": "3"}))
    assert (e.reason, e.code, e.http_status) == (reason, code, status)


def test_the_class_of_an_answer_decides_when_its_code_does_not():
    assert classify(api_error(503, 0, "Unknown error, please check your request or try again later.")).reason is (
        VenueReason.OUTCOME_UNKNOWN
    )
    assert classify(api_error(503, 0, "Service Unavailable.")).reason is VenueReason.UNAVAILABLE
    assert classify(api_error(502, 0, "Bad gateway")).reason is VenueReason.OUTCOME_UNKNOWN  # 5xx: unknown
    assert classify(requests.exceptions.ConnectTimeout()).reason is VenueReason.UNAVAILABLE  # never sent
    assert classify(requests.exceptions.ReadTimeout()).reason is VenueReason.OUTCOME_UNKNOWN
    assert classify(api_error(400, -9999, "a code harvest has no rule for")).reason is VenueReason.OTHER


def test_reduce_only_refused_in_hedge_mode_is_a_position_mode_change():
    # Binance's answer to reduceOnly sent to a hedge-mode account: the adapter re-reads the mode
    e = classify(api_error(400, -1106, "Parameter 'reduceOnly' sent when not required."))
    assert e.reason is VenueReason.POSITION_MODE
    assert classify(api_error(400, -1106, "Parameter 'foo' sent when not required.")).reason is VenueReason.OTHER


def test_a_venue_error_without_a_reason_gets_one_by_its_class():
    assert VenueError(1, "x", unknown=True).reason is VenueReason.OUTCOME_UNKNOWN
    assert VenueError(1, "x", retryable=True).reason is VenueReason.UNAVAILABLE
    assert VenueError(1, "x").reason is VenueReason.OTHER
    assert VenueError(1, "x", reason=VenueReason.PRECISION).reason is VenueReason.PRECISION


def test_every_code_the_reason_table_maps_is_one_binance_documents_or_harvest_meets():
    known = {f.code for f in facts.ERRORS.values()}
    # the few mapped codes not among the answers binance_facts spells out (Error Codes page)
    extra = {-1006, -1007, -1008, -2014, -2021, -4003, -4005, -4059, -4061}
    assert set(facts.REASONS) <= known | extra
