"""Schema versions of stored records (issue 33, item 3): how a version is read, and what the
plan lineage does with a latest plan in a state this version does not know."""

from __future__ import annotations

import pytest

from harvest.domain.models import Action
from harvest.domain.plans import LatestPlan, next_attempt
from harvest.store.records import SCHEMA, NewerVersion, Unreadable, check_version, version_of


@pytest.mark.parametrize("raw, v", [(None, 1), ("", 1), ("1", 1), (1, 1), ("2", 2), (" 3", 3)])
def test_a_version_as_stored(raw, v):
    assert version_of(raw) == v


@pytest.mark.parametrize("raw", ["0", "-1", "1.5", "two", True, "01x"])
def test_a_version_that_does_not_parse_is_an_error(raw):
    with pytest.raises(ValueError) as e:
        version_of(raw)
    assert not isinstance(e.value, NewerVersion)


def test_a_newer_version_is_named_and_an_older_or_missing_one_reads():
    for kind, v in SCHEMA.items():
        assert check_version(kind, None) == 1 and check_version(kind, str(v)) == v
        with pytest.raises(NewerVersion, match=rf"written by a newer version \(v={v + 1}\)"):
            check_version(kind, str(v + 1))
    u = Unreadable.of("ns:plan:abc", NewerVersion("written by a newer version (v=2); this version reads plan v<=1"))
    assert u.newer and u.error.startswith("written by a newer version (v=2)")
    assert not Unreadable.of("k", ValueError("bad")).newer


def test_a_lineage_whose_latest_plan_is_in_an_unknown_state_is_left_to_its_version():
    latest = LatestPlan(attempt=0, state="PAUSED", reason="paused", updated_at=0.0)
    got = next_attempt(Action.PARTIAL_25, latest, now=1e9, base_s=5, cap_s=300, max_attempts=5)
    assert (got.kind, got.attempt, got.reason) == ("repeat", 0, "newer_version")
    ended = LatestPlan(attempt=0, state="EXPIRED", reason="ttl_expired", updated_at=0.0)
    assert next_attempt(Action.PARTIAL_25, ended, now=1e9, base_s=5, cap_s=300, max_attempts=5).kind == "retry"
