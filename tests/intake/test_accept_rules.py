"""Accept rules without a network: the [accept] section's checks, first-match decisions, what negotiation can
decide, and the refusal statuses."""

from __future__ import annotations

import re

import pytest
from pydicom.uid import ComprehensiveSRStorage, CTImageStorage, MRImageStorage

from ortho_node.audit.views import ignored_reason
from ortho_node.config import AcceptRule, ConfigError, describe, load_settings
from ortho_node.intake.accept import DEFAULT_RULE, AcceptRules, Action, Decision, InstanceFacts


def facts(*, sop_class=MRImageStorage, modality="MR", body_part="KNEE", series="SAG PD FS", study="MR KNEE RIGHT",
          calling_ae="PACS") -> InstanceFacts:
    return InstanceFacts(sop_class, modality, body_part, series, study, calling_ae)


def rules(*tables: dict, default: str = "analyse") -> AcceptRules:
    return AcceptRules([AcceptRule(**table) for table in tables], default)


def test_without_rules_everything_is_analysed_as_before():
    accept = AcceptRules()
    assert accept.analyse_all
    assert accept.decide(facts(sop_class=CTImageStorage, modality="CT")).action is Action.ANALYSE
    assert accept.refused_sop_classes("PACS", [CTImageStorage, MRImageStorage]) == {}
    assert load_settings(environ={}).accept.rules == ()


def test_first_matching_rule_decides_and_conditions_combine():
    accept = rules({"name": "knee-mr", "action": "analyse", "modalities": ["mr"], "body_parts": ["*knee*"]},
                   {"name": "no-ct", "action": "ignore", "modalities": ["CT"]},
                   {"name": "scouts", "action": "ignore", "series_descriptions": ["re:^(loc|scout)"]},
                   default="refuse")
    assert accept.decide(facts()) == Decision(Action.ANALYSE, "knee-mr")
    assert accept.decide(facts(body_part="Left Knee")).rule == "knee-mr"  # glob, any case
    assert accept.decide(facts(sop_class=CTImageStorage, modality="ct", body_part="ANKLE")).rule == "no-ct"
    assert accept.decide(facts(body_part="ANKLE", series="LOCALIZER 3 PLANE")).rule == "scouts"  # regex searched
    assert accept.decide(facts(body_part="ANKLE")) == Decision(Action.REFUSE, DEFAULT_RULE)
    assert accept.decide(facts(body_part=None, series=None)).rule == DEFAULT_RULE  # absent: no pattern matches


def test_calling_ae_and_sop_class_keywords():
    accept = rules({"name": "mr1-only", "action": "refuse", "calling_aets": ["MR1"], "sop_classes": ["CTImageStorage"]})
    ct = facts(sop_class=CTImageStorage, modality="CT", calling_ae="MR1")
    assert accept.decide(ct).rule == "mr1-only"
    assert accept.decide(facts(sop_class=CTImageStorage, modality="CT", calling_ae="PACS")).action is Action.ANALYSE


def test_negotiation_decides_only_what_content_cannot_change():
    accept = rules({"name": "knee-ct", "action": "analyse", "sop_classes": [CTImageStorage], "body_parts": ["KNEE"]},
                   {"name": "no-ct", "action": "refuse", "sop_classes": [CTImageStorage]},
                   {"name": "no-sr", "action": "refuse", "sop_classes": ["ComprehensiveSRStorage"]})
    refused = accept.refused_sop_classes("PACS", [CTImageStorage, ComprehensiveSRStorage, MRImageStorage])
    # CT: a knee CT would be analysed, so only its content can decide; the SR class is refused as a whole.
    assert refused == {ComprehensiveSRStorage: Decision(Action.REFUSE, "no-sr")}
    sr = facts(sop_class=ComprehensiveSRStorage, modality="SR")
    ankle_ct = facts(sop_class=CTImageStorage, modality="CT", body_part="ANKLE")
    assert accept.refusal_status(sr) == 0x0122
    assert accept.refusal_status(ankle_ct) == 0xC230
    assert not 0xA700 <= accept.refusal_status(ankle_ct) <= 0xA7FF  # never an invitation to retry
    # A content rule for any SOP class comes first: nothing can be decided before the data set arrives.
    first = rules({"name": "knee", "action": "analyse", "body_parts": ["KNEE"]},
                  {"name": "no-sr", "action": "refuse", "sop_classes": [ComprehensiveSRStorage]})
    assert first.refused_sop_classes("PACS", [ComprehensiveSRStorage]) == {}
    assert first.refusal_status(sr) == 0xC230


def test_default_refuse_rejects_every_class_no_rule_lets_through():
    accept = rules({"name": "mr", "action": "analyse", "sop_classes": [MRImageStorage]}, default="refuse")
    assert set(accept.refused_sop_classes("PACS", [CTImageStorage, MRImageStorage])) == {CTImageStorage}


def test_reasons_say_which_rule_and_views_word_them_the_same():
    assert Decision(Action.IGNORE, "no-ct").reason == "ignored by accept rule 'no-ct'" == ignored_reason("no-ct")
    assert Decision(Action.IGNORE, DEFAULT_RULE).reason == ignored_reason(DEFAULT_RULE)
    assert Decision(Action.REFUSE, "no-ct").reason == "refused by accept rule 'no-ct'"


def _settings(tmp_path, text: str):
    path = tmp_path / "node.toml"
    path.write_text(text)
    return load_settings(path, environ={})


def test_rules_load_from_the_file_in_order_and_show_in_config_show(tmp_path):
    settings = _settings(tmp_path, """
[accept]
default = "ignore"
[[accept.rules]]
name = "knee"
action = "analyse"
body_parts = ["KNEE", "re:knie"]
[[accept.rules]]
name = "no-sr"
action = "refuse"
sop_classes = ["ComprehensiveSRStorage", "1.2.840.10008.5.1.4.1.1.88.22"]
""")
    assert [r.name for r in settings.accept.rules] == ["knee", "no-sr"] and settings.accept.default == "ignore"
    shown = {key: (value, doc) for key, value, doc in describe(settings)}
    assert shown["accept.rules.no-sr"][0] == "refuse"
    assert "body_parts KNEE, re:knie" in shown["accept.rules.knee"][1]
    assert "accept.rules" not in shown


@pytest.mark.parametrize(("table", "message"), [
    ('name = "x"\naction = "drop"', "action: must be one of analyse, ignore, refuse"),
    ('name = "x"\nsop_classes = ["CTImage"]', "neither a SOP Class UID nor the keyword"),
    ('name = "x"\nbody_parts = ["re:(knee"]', "not a valid regular expression"),
    ('name = "bad name"', "rule name must be"),
    ('name = "x"\nmodality = ["CT"]', "unknown setting 'modality'"),
])
def test_bad_rules_name_the_rule_and_key(tmp_path, table, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        _settings(tmp_path, f"[[accept.rules]]\n{table}\n")
    assert str(error.value).startswith("accept.rules[0] in ")


def test_duplicate_names_and_rules_outside_the_file_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="used twice"):
        _settings(tmp_path, '[[accept.rules]]\nname = "x"\n[[accept.rules]]\nname = "x"\n')
    with pytest.raises(ConfigError, match="only in the configuration file"):
        load_settings(environ={"ORTHO_NODE_ACCEPT_RULES": "x"})
    assert load_settings(environ={"ORTHO_NODE_ACCEPT_DEFAULT": "ignore"}).accept.default == "ignore"
