"""HARVEST_EGRESS: parsing, the accounts' stable assignment, and the adapter's cheaper form by
Binance's table (issue 32)."""

from __future__ import annotations

from collections import Counter

import pytest

from harvest.venues.binance import BinanceVenue, SourceAddressAdapter, bind_session
from settings import SettingsError, load_settings
from settings.egress import Egress, egress_for, parse_egress


def test_entries_parse_to_named_egresses():
    got = parse_egress(["127.0.0.2", "b=10.0.0.7", "http://user:pw@proxy.example:3128", "default", "v6=2001:db8::7"])
    assert got == [
        Egress("127.0.0.2", source="127.0.0.2"),
        Egress("b", source="10.0.0.7"),
        Egress("proxy.example:3128", proxy="http://user:pw@proxy.example:3128"),
        Egress("default"),
        Egress("v6", source="2001:db8::7"),
    ]
    assert parse_egress([]) == [Egress("default")]


@pytest.mark.parametrize(
    "entries, words",
    [
        (["eth0"], "neither 'default'"),
        (["ftp://h:1"], "http(s)://host:port"),
        (["http://proxy.example"], "http(s)://host:port"),
        (["127.0.0.2", "127.0.0.2"], "two egresses"),
        (["a b=127.0.0.2"], "must match"),
    ],
)
def test_a_bad_entry_is_refused_naming_the_variable(entries, words):
    with pytest.raises(ValueError) as e:
        parse_egress(entries)
    assert "HARVEST_EGRESS" in str(e.value) and words in str(e.value)


def test_settings_refuse_a_bad_egress_without_echoing_a_proxy_password():
    with pytest.raises(SettingsError) as e:
        load_settings(egress="http://user:s3cret@proxy.example")
    assert "HARVEST_EGRESS" in str(e.value) and "s3cret" not in str(e.value)
    s = load_settings(egress="127.0.0.2,127.0.0.3", account="alpha")
    assert s.account_egress in s.egresses and len(s.egresses) == 2


def test_assignment_is_stable_spread_and_moves_few_accounts_when_an_egress_is_added():
    three = parse_egress(["127.0.0.2", "127.0.0.3", "127.0.0.4"])
    accounts = [f"acct-{i}" for i in range(3000)]
    first = {a: egress_for(a, three) for a in accounts}
    assert first == {a: egress_for(a, list(reversed(three))) for a in accounts}  # order does not matter
    spread = Counter(e.name for e in first.values())
    assert min(spread.values()) > 800  # about a third each
    four = three + parse_egress(["127.0.0.5"])
    moved = [a for a in accounts if egress_for(a, four) != first[a]]
    assert all(egress_for(a, four).name == "127.0.0.5" for a in moved)  # only to the new one
    assert 500 < len(moved) < 1000  # about a quarter


def test_a_source_address_egress_mounts_its_adapter():
    import requests

    s = requests.Session()
    bind_session(s, Egress("lo-2", source="127.0.0.2"))
    adapter = s.get_adapter("https://fapi.binance.com/fapi/v1/time")
    assert isinstance(adapter, SourceAddressAdapter) and adapter.source_address == ("127.0.0.2", 0)
    plain = requests.Session()
    bind_session(plain, Egress("default"))
    assert not isinstance(plain.get_adapter("https://fapi.binance.com"), SourceAddressAdapter)


def test_the_cheaper_form_by_binances_table():
    fn = "futures_get_open_orders"
    assert BinanceVenue.per_symbol(fn, ["BTCUSDT"] * 3)  # 1 < 40
    assert BinanceVenue.per_symbol(fn, [f"S{i}USDT" for i in range(39)], conditional=True)  # 39 < 40
    assert not BinanceVenue.per_symbol(fn, [f"S{i}USDT" for i in range(40)])  # a tie: one request
    assert not BinanceVenue.per_symbol(fn, None)  # unknown symbols: only the all-symbol form finds them
    assert BinanceVenue.per_symbol(fn, [])  # nothing asked: nothing sent
