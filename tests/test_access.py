"""The broker's config and its access decisions: who publishes, who reads what (pure)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import msgspec
import pytest

from exchange.broker.checks import registry_groups
from exchange.core.access import (
    Agreement,
    BrokerConfig,
    DatasetConfig,
    Limits,
    Policy,
    check_config,
    parse_config,
)
from exchange.core.errors import Forbidden, InputError, NotFound

GROUPS = registry_groups()  # name -> version -> groups

POP_OWNER = "vn.gov.mps.population"
TAX_OWNER = "vn.gov.mof.tax"
LAND_OWNER = "vn.gov.monre.land"
BANK = "vn.gov.sbv.credit"
NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)

TOML = f"""
node_id = "vn.gov.ndc.broker"
listen = "127.0.0.1:9443"

[limits]
max_batch_records = 100
ack_timeout_s = 5.0

[[datasets]]
name = "population"
owner = "{POP_OWNER}"

[[datasets]]
name = "tax"
owner = "{TAX_OWNER}"

[[agreements]]
subscriber = "{TAX_OWNER}"
dataset = "population"
purpose = "verify taxpayers' identity"
groups = ["identity", "residence"]
expires = 2027-01-01T00:00:00Z

[[agreements]]
subscriber = "{BANK}"
dataset = "tax"
purpose = "credit scoring"
"""


def _json_config() -> dict[str, Any]:
    return {
        "node_id": "vn.gov.ndc.broker",
        "listen": "127.0.0.1:9443",
        "limits": {"max_batch_records": 100, "ack_timeout_s": 5.0},
        "datasets": [{"name": "population", "owner": POP_OWNER},
                     {"name": "tax", "owner": TAX_OWNER}],
        "agreements": [
            {"subscriber": TAX_OWNER, "dataset": "population",
             "purpose": "verify taxpayers' identity", "groups": ["identity", "residence"],
             "expires": "2027-01-01T00:00:00Z"},
            {"subscriber": BANK, "dataset": "tax", "purpose": "credit scoring"},
        ],
    }


def _policy(*agreements: Agreement, **extra: Any) -> Policy:
    config = BrokerConfig(
        datasets=[DatasetConfig("population", POP_OWNER), DatasetConfig("tax", TAX_OWNER),
                  DatasetConfig("land", LAND_OWNER)],
        agreements=list(agreements), **extra)
    return Policy(config, GROUPS)


# -- parsing ---------------------------------------------------------------------------------


def test_parse_toml() -> None:
    c = parse_config(TOML)
    assert c.listen == "127.0.0.1:9443"
    assert c.limits == Limits(max_batch_records=100, ack_timeout_s=5.0)
    assert c.limits.max_fields == Limits().max_fields  # unspecified limits keep their defaults
    assert c.datasets == [DatasetConfig("population", POP_OWNER),
                          DatasetConfig("tax", TAX_OWNER)]
    first, second = c.agreements
    assert first.groups == ["identity", "residence"]
    assert first.expires == dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
    assert second.groups == []
    assert second.expires is None


def test_parse_json_equals_toml() -> None:
    assert parse_config(json.dumps(_json_config()), fmt="json") == parse_config(TOML)


def test_defaults() -> None:
    c = parse_config("")
    assert c == BrokerConfig()
    assert c.store == "sqlite"
    assert c.datasets == []


@pytest.mark.parametrize("where, text", [
    ("top level", 'listne = "127.0.0.1:1"\n'),
    ("limits", '[limits]\nmax_batch_record = 1\n'),
    ("datasets", '[[datasets]]\nname = "tax"\nowner = "vn.gov.mof.tax"\nowners = []\n'),
    ("agreements", '[[agreements]]\nsubscriber = "vn.gov.a.b"\ndataset = "tax"\n'
                   'purpose = "abc"\nexpire = 2027-01-01T00:00:00Z\n'),
])
def test_typo_fails_naming_the_key(where: str, text: str) -> None:
    typo = text.split("\n")[-2].split(" =")[0]
    with pytest.raises(InputError) as info:
        parse_config(text)
    assert info.value.code == "bad_config"
    assert typo in info.value.message, where


def test_typo_in_json_fails_naming_the_key() -> None:
    raw = _json_config()
    raw["agreements"][1]["purpse"] = raw["agreements"][1].pop("purpose")
    with pytest.raises(InputError) as info:
        parse_config(json.dumps(raw), fmt="json")
    assert info.value.code == "bad_config"
    assert "purpse" in info.value.message


@pytest.mark.parametrize("text, fmt", [("listen = ", "toml"), ("{", "json"), ("[1]", "json")])
def test_malformed_config(text: str, fmt: str) -> None:
    with pytest.raises(InputError) as info:
        parse_config(text, fmt=fmt)
    assert info.value.code == "bad_config"


@pytest.mark.parametrize("text", [
    '[[datasets]]\nname = "Tax"\nowner = "vn.gov.mof.tax"\n',  # dataset names are lower case
    '[[datasets]]\nname = "tax"\nowner = "not a node id"\n',
    '[limits]\nmax_fields = "many"\n',
    '[[agreements]]\nsubscriber = "vn.gov.a.b"\ndataset = "tax"\npurpose = "x"\n',  # too short
])
def test_invalid_values(text: str) -> None:
    with pytest.raises(InputError) as info:
        parse_config(text)
    assert info.value.code == "bad_config"


@pytest.mark.parametrize("text, fmt", [
    ('[[agreements]]\nsubscriber = "vn.gov.a.b"\ndataset = "tax"\npurpose = "audit"\n'
     'expires = 2027-01-01T00:00:00\n', "toml"),
    ('{"agreements": [{"subscriber": "vn.gov.a.b", "dataset": "tax", "purpose": "audit", '
     '"expires": "2027-01-01T00:00:00"}]}', "json"),
])
def test_expiry_without_time_zone_is_refused(text: str, fmt: str) -> None:
    # a naive expiry cannot be compared with the broker's UTC clock
    with pytest.raises(InputError) as info:
        parse_config(text, fmt=fmt)
    assert info.value.code == "bad_config"
    assert "expires" in info.value.message


# -- publishing ------------------------------------------------------------------------------


def test_only_the_owner_publishes() -> None:
    p = _policy()
    p.check_publish(POP_OWNER, "population")
    p.check_publish(TAX_OWNER, "tax")
    with pytest.raises(Forbidden) as info:
        p.check_publish(TAX_OWNER, "population")
    assert info.value.code == "not_owner"
    assert info.value.status == 403


def test_publish_to_unknown_dataset() -> None:
    with pytest.raises(NotFound) as info:
        _policy().check_publish(POP_OWNER, "vehicle")  # a dataset this broker does not serve
    assert (info.value.code, info.value.status) == ("unknown_dataset", 404)


def test_an_agreement_does_not_grant_publishing() -> None:
    p = _policy(Agreement(subscriber=BANK, dataset="tax", purpose="credit scoring"))
    with pytest.raises(Forbidden) as info:
        p.check_publish(BANK, "tax")
    assert info.value.code == "not_owner"


# -- subscribing -----------------------------------------------------------------------------


def test_subscribe_needs_an_agreement() -> None:
    with pytest.raises(Forbidden) as info:
        _policy().check_subscribe(BANK, "population", NOW)
    assert info.value.code == "no_agreement"


def test_agreement_is_per_subscriber_and_dataset() -> None:
    p = _policy(Agreement(subscriber=BANK, dataset="tax", purpose="credit scoring"))
    p.check_subscribe(BANK, "tax", NOW)
    with pytest.raises(Forbidden) as info:
        p.check_subscribe(BANK, "population", NOW)
    assert info.value.code == "no_agreement"
    with pytest.raises(Forbidden) as info:
        p.check_subscribe(LAND_OWNER, "tax", NOW)
    assert info.value.code == "no_agreement"


def test_subscribe_to_unknown_dataset() -> None:
    with pytest.raises(NotFound) as info:
        _policy().check_subscribe(BANK, "vehicle", NOW)
    assert (info.value.code, info.value.status) == ("unknown_dataset", 404)


def test_expired_agreement_is_refused() -> None:
    expires = NOW + dt.timedelta(days=1)
    p = _policy(Agreement(subscriber=BANK, dataset="tax", purpose="credit scoring",
                          expires=expires))
    agreement, _ = p.check_subscribe(BANK, "tax", NOW)
    assert agreement.expires == expires
    for later in (expires, expires + dt.timedelta(seconds=1)):
        with pytest.raises(Forbidden) as info:
            p.check_subscribe(BANK, "tax", later)
        assert info.value.code == "no_agreement"


def test_a_live_agreement_wins_over_an_expired_one() -> None:
    old = Agreement(subscriber=BANK, dataset="population", purpose="old contract",
                    groups=["identity", "residence"], expires=NOW - dt.timedelta(days=1))
    new = Agreement(subscriber=BANK, dataset="population", purpose="new contract",
                    groups=["identity"], expires=NOW + dt.timedelta(days=365))
    agreement, groups = _policy(old, new).check_subscribe(BANK, "population", NOW)
    # the config's agreements are marked as such, by their place in the file
    assert agreement == msgspec.structs.replace(new, id="config:1")
    assert groups == ["identity"]


def test_owner_reads_its_own_dataset_with_all_groups() -> None:
    agreement, groups = _policy().check_subscribe(POP_OWNER, "population", NOW)
    # the owner reads every group of its latest version
    assert groups == list(GROUPS["population"][2])
    assert agreement.version == 2
    assert agreement.subscriber == POP_OWNER
    assert agreement.dataset == "population"


def test_agreement_groups_default_to_all_groups() -> None:
    p = _policy(Agreement(subscriber=BANK, dataset="tax", purpose="credit scoring"))
    _, groups = p.check_subscribe(BANK, "tax", NOW)
    assert groups == list(GROUPS["tax"][1])


def test_an_agreement_grants_at_most_the_groups_of_its_version() -> None:
    v1 = _policy(Agreement(subscriber=BANK, dataset="population", purpose="credit scoring"))
    assert v1.check_subscribe(BANK, "population", NOW)[1] == list(GROUPS["population"][1])
    assert "household" not in GROUPS["population"][1]
    v2 = _policy(Agreement(subscriber=BANK, dataset="population", purpose="credit scoring",
                           version=2))
    assert v2.check_subscribe(BANK, "population", NOW)[1] == list(GROUPS["population"][2])
    # a v1 agreement naming a group only v2 has, and a version that does not exist, are
    # refused with their paths
    for bad, path in ((Agreement(subscriber=BANK, dataset="population", purpose="credit",
                                 groups=["household"]), "agreements[0].groups[0]"),
                      (Agreement(subscriber=BANK, dataset="population", purpose="credit",
                                 version=7), "agreements[0].version")):
        config = BrokerConfig(datasets=[DatasetConfig("population", POP_OWNER)],
                              agreements=[bad])
        assert [p.path for p in check_config(config, groups=GROUPS)] == [path]


def test_agreement_grants_only_its_groups() -> None:
    p = _policy(Agreement(subscriber=TAX_OWNER, dataset="population", purpose="identity",
                          groups=["identity"]))
    _, groups = p.check_subscribe(TAX_OWNER, "population", NOW)
    assert groups == ["identity"]


def test_config_file_to_decisions() -> None:
    p = Policy(parse_config(TOML), GROUPS)
    _, groups = p.check_subscribe(TAX_OWNER, "population", NOW)
    assert groups == ["identity", "residence"]
    _, groups = p.check_subscribe(BANK, "tax", NOW)
    assert groups == list(GROUPS["tax"][1])
    with pytest.raises(Forbidden):
        p.check_subscribe(TAX_OWNER, "population", dt.datetime(2027, 1, 1, tzinfo=dt.UTC))


def test_agreement_naming_an_unknown_group_fails_at_construction() -> None:
    with pytest.raises(InputError) as info:
        _policy(Agreement(subscriber=BANK, dataset="population", purpose="scoring",
                          groups=["identity", "salary"]))
    assert info.value.code == "bad_config"
    assert "salary" in info.value.message


def test_agreement_naming_an_unknown_dataset_fails_at_construction() -> None:
    with pytest.raises(InputError) as info:
        _policy(Agreement(subscriber=BANK, dataset="vehicle", purpose="scoring"))
    assert info.value.code == "bad_config"
    assert "vehicle" in info.value.message


def test_operators_are_a_certificate_role_not_a_config_list() -> None:
    """Operators are named by their certificates (``exchange operator init``); a config that
    still lists node ids as operators is refused, not silently ignored."""
    with pytest.raises(InputError) as err:
        parse_config('operators = ["vn.gov.ndc.ops"]\n' + TOML)
    assert "operators" in err.value.message
