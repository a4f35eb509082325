"""core.leases: which lease holders are dead when a run starts or an actor restarts."""

from __future__ import annotations

import pytest

from core.leases import LeaseOwner, earlier_incarnations, stale_owners


def test_an_owner_round_trips_through_its_text():
    owner = LeaseOwner("3f2a9c", "a/validator-1", "4242.deadbeef")
    assert LeaseOwner.parse(str(owner)) == owner


@pytest.mark.parametrize("text", ["", "validator:812:ab", "r1|validator", "r1||812.ab", "r1|a|b|c"])
def test_text_not_in_the_owner_form_is_no_owner(text):
    assert LeaseOwner.parse(text) is None


@pytest.mark.parametrize("part", ["", "a|b"])
def test_an_owner_part_may_not_be_empty_or_hold_the_separator(part):
    with pytest.raises(ValueError, match="without '|'"):
        LeaseOwner(part, "validator", "1.a")


def test_a_starting_run_takes_back_every_other_run_and_every_foreign_owner():
    owners = ["new|router|1.a", "old|router|2.b", "old|a/validator-1|3.c", "assembler-evidence:7f", "", "new|x|9.z"]
    assert stale_owners(owners, "new") == ["assembler-evidence:7f", "old|a/validator-1|3.c", "old|router|2.b"]
    assert stale_owners(["new|router|1.a"], "new") == []


def test_a_restarted_actor_takes_back_only_its_own_earlier_incarnations_in_this_run():
    me = LeaseOwner("run", "a/router-1", "20.new")
    owners = [
        "run|a/router-1|10.old",  # this actor before Ray restarted it
        "run|a/router-1|20.new",  # itself
        "run|a/router-2|11.x",  # another actor of the same stage
        "run|b/router-1|12.y",  # the same stage in another cell
        "other|a/router-1|13.z",  # another run: the composition root's business
        "foreign",
    ]
    assert earlier_incarnations(owners, me) == ["run|a/router-1|10.old"]
