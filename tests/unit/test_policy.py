"""The policy file: the shipped default, and errors that name the file and key to fix."""

from __future__ import annotations

import pytest

from referral_bridge.core.events import CaseKind, Relationship, VictimKind
from referral_bridge.core.policy import Policy, PolicyError, Regime, load_policy_text
from tests.unit.factories import POLICY_FILE

SOURCE = "config/policy.toml"
SHIPPED = POLICY_FILE.read_text(encoding="utf-8")
UNKNOWN = "is not a known setting (check the spelling against the shipped policy)"


def edited(old: str, new: str, *, text: str = SHIPPED) -> str:
    """The shipped policy with one exact edit; fails loudly if the edit no longer applies."""
    assert text.count(old) == 1, f"edit target {old!r} not found exactly once"
    return text.replace(old, new)


def problems(text: str) -> tuple[str, ...]:
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text, source=SOURCE)
    return caught.value.problems


def shipped() -> Policy:
    return load_policy_text(SHIPPED, source=SOURCE)


class TestShippedPolicy:
    def test_has_the_rules_of_rules_md_in_order(self) -> None:
        names = [(rule.id, rule.name) for rule in shipped().rules]
        assert names == [
            ("1", "organisation"),
            ("2", "deceased"),
            ("3", "bereaved_homicide"),
            ("4", "bereaved"),
            ("5", "sexual"),
            ("6", "domestic_abuse"),
            ("7", "child"),
            ("8", "other_crime"),
            ("9", "domestic_incident"),
            ("10", "incident"),
        ]

    def test_routes_and_regimes_match_rules_md(self) -> None:
        table = [(r.provider, r.service, r.regime) for r in shipped().rules]
        lvs = "lancashire-victim-services"
        assert table == [
            (lvs, "business", Regime.EXPLICIT),
            (None, None, Regime.NONE),
            ("homicide-service", "homicide", Regime.EXPLICIT),
            (lvs, "bereaved", Regime.EXPLICIT),
            (lvs, "sexual_violence", Regime.EXPLICIT),
            (lvs, "domestic_abuse", Regime.EXPLICIT),
            (lvs, "children_young_people", Regime.EXPLICIT),
            (lvs, "general", Regime.OPT_OUT),
            (lvs, "domestic_abuse", Regime.INCIDENT),
            (lvs, "general", Regime.INCIDENT),
        ]

    def test_match_conditions_match_rules_md(self) -> None:
        rules = shipped().rules
        assert rules[0].when.victim_kind is VictimKind.ORGANISATION
        assert rules[0].requires_contact_person
        assert rules[1].when.deceased is True
        assert rules[1].bereaved_task_provider == "lancashire-victim-services"
        assert rules[2].match == "all"
        assert rules[2].when.categories == ("homicide",)
        assert rules[2].when.relationships == (Relationship.BEREAVED_RELATIVE,)
        assert rules[3].when.relationships == (Relationship.BEREAVED_RELATIVE,)
        assert rules[4].when.categories == ("sexual",)
        assert rules[5].when.flags == ("domestic_abuse",)
        assert rules[5].requires_safe_to_contact
        assert (rules[6].when.under_age, rules[6].when.guardian_of_under_age) == (18, 18)
        assert rules[7].is_catch_all()
        assert rules[8].when.categories == ("domestic_incident",)
        assert rules[8].requires_safe_to_contact
        assert rules[9].is_catch_all()

    def test_every_rule_that_discloses_names_its_lawful_basis(self) -> None:
        for rule in shipped().rules:
            if rule.regime is Regime.NONE:
                assert rule.lawful_basis is None
            else:
                assert rule.lawful_basis is not None
                assert "Art 6(1)(e)" in rule.lawful_basis
        special = {r.name: r.lawful_basis for r in shipped().rules}
        assert "Art 9(2)(g)" in (special["sexual"] or "")
        assert "Art 9(2)(g)" in (special["domestic_abuse"] or "")
        assert "no_objection" not in SHIPPED.replace("# ", "")

    def test_incidents_match_only_victim_kind_and_deceased_rules_before_their_own(self) -> None:
        incident_rules = [r.name for r in shipped().rules if CaseKind.INCIDENT in r.applies_to]
        assert incident_rules == ["organisation", "deceased", "domestic_incident", "incident"]

    def test_rape_and_sexual_assault_classes_map_to_sexual_compared_normalised(self) -> None:
        policy = shipped()
        for ho_class in ("N100", "17A", "019c", "19H", "20b", "21", "22B"):
            assert policy.category_of_class(ho_class) == "sexual", ho_class
        assert policy.category_of_class("28E") is None
        assert policy.category_of_class(None) is None

    def test_incident_categories_map_to_crime_flags(self) -> None:
        assert shipped().incident_flags == {
            "domestic_incident": "domestic_abuse",
            "hate_incident": "hate",
        }

    def test_crime_recording_review_is_after_24_hours_due_in_a_working_day(self) -> None:
        recording = shipped().crime_recording
        assert (recording.review_after_hours, recording.review_due_working_days) == (24, 1)

    def test_deadlines_match_rules_md(self) -> None:
        deadlines = shipped().deadlines
        assert (
            deadlines.referral_working_days,
            deadlines.consent_wait_working_days,
            deadlines.leaflet_working_days,
            deadlines.leaflet_enhanced_working_days,
        ) == (2, 5, 5, 1)

    def test_enhanced_rights_match_rules_md(self) -> None:
        rights = shipped().enhanced_rights
        assert set(rights.categories) == {"homicide", "sexual"}
        assert set(rights.flags) == {
            "domestic_abuse",
            "hate",
            "terrorism",
            "trafficking",
            "modern_slavery",
        }
        assert rights.relationships == (Relationship.BEREAVED_RELATIVE,)
        assert {"2", "5A", "36", "56A"} <= set(rights.ho_classes)
        assert rights.under_age == 18
        assert set(rights.needs) == {"vulnerable", "intimidated", "persistently_targeted"}

    def test_providers_are_the_ones_the_rules_refer_to(self) -> None:
        assert shipped().providers() == frozenset(
            {"lancashire-victim-services", "homicide-service"}
        )


class TestPolicyErrors:
    def test_an_unknown_regime_names_the_file_and_key(self) -> None:
        text = edited('regime = "opt_out"', 'regime = "opt-out"')
        (problem,) = problems(text)
        assert problem.startswith(f"{SOURCE}: rules[8].regime: ")
        assert "'opt_out'" in problem

    def test_a_missing_provider_names_the_rule(self) -> None:
        (problem,) = problems(edited('provider = "homicide-service"\n', ""))
        assert (
            problem == f"{SOURCE}: rules[3]: regime 'explicit' needs both a provider and a service"
        )

    def test_an_unknown_key_is_an_error_not_ignored(self) -> None:
        found = problems(edited("leaflet_working_days = 5", "leaflet_workingdays = 5"))
        assert f"{SOURCE}: deadlines.leaflet_workingdays: {UNKNOWN}" in found

    def test_an_unknown_condition_names_its_path(self) -> None:
        (problem,) = problems(edited("when.under_age = 18", "when.age_under = 18"))
        assert problem == f"{SOURCE}: rules[7].when.age_under: {UNKNOWN}"

    def test_a_missing_key_is_reported(self) -> None:
        (problem,) = problems(edited("consent_wait_working_days = 5\n", ""))
        assert problem == f"{SOURCE}: deadlines.consent_wait_working_days: is required but missing"

    def test_a_version_1_key_says_what_replaced_it(self) -> None:
        found = problems(
            edited("consent_wait_working_days = 5", "hold_working_days = 1"),
        )
        assert (
            f"{SOURCE}: deadlines.hold_working_days: was renamed in policy version 2: write "
            "consent_wait_working_days instead"
        ) in found

    def test_a_rule_that_discloses_without_a_lawful_basis_is_rejected(self) -> None:
        text = edited(
            'regime = "opt_out"\nlawful_basis = "UK GDPR Art 6(1)(e); DPA 2018 s8 (Victims\' '
            'Code duty)"\n',
            'regime = "opt_out"\n',
        )
        (problem,) = problems(text)
        assert problem == (
            f"{SOURCE}: rules[8]: regime 'opt_out' discloses personal data, so name its "
            "lawful_basis"
        )

    def test_a_class_mapped_to_two_categories_names_the_key(self) -> None:
        text = edited("[class_categories]\n", '[class_categories]\nother = ["019C"]\n')
        (problem,) = problems(text)
        assert problem == (
            f"{SOURCE}: class_categories.sexual: class '19C' is already mapped to 'other'"
        )

    def test_a_bereaved_task_on_a_rule_that_sends_is_rejected(self) -> None:
        text = edited(
            'service = "general"\nregime = "opt_out"',
            'service = "general"\nregime = "opt_out"\nbereaved_task_provider = "x"',
        )
        (problem,) = problems(text)
        assert "rules[8]: bereaved_task_provider only makes sense with regime 'none'" in problem

    def test_an_out_of_range_deadline_is_reported(self) -> None:
        (problem,) = problems(edited("referral_working_days = 2", "referral_working_days = 0"))
        assert problem.startswith(f"{SOURCE}: deadlines.referral_working_days: ")

    def test_invalid_toml_is_reported_with_the_file(self) -> None:
        (problem,) = problems(edited('name = "sexual"', 'name = "sexual'))
        assert problem.startswith(f"{SOURCE}: (file): not valid TOML: ")

    def test_duplicate_rule_ids_are_reported(self) -> None:
        (problem,) = problems(edited('id = "2"', 'id = "1"'))
        assert problem == f"{SOURCE}: rules[2].id: '1' is already used by rules[1]"

    def test_duplicate_rule_names_are_reported(self) -> None:
        (problem,) = problems(edited('name = "child"', 'name = "sexual"'))
        assert problem == f"{SOURCE}: rules[7].name: 'sexual' is already used by rules[5]"

    def test_a_policy_without_a_catch_all_for_incidents_is_rejected(self) -> None:
        text = edited(
            'service = "general"\nregime = "incident"\n',
            'service = "general"\nregime = "incident"\nwhen.categories = ["asb"]\n',
        )
        (problem,) = problems(text)
        assert problem.startswith(
            f"{SOURCE}: rules: no rule without conditions applies to 'incident'"
        )

    def test_a_rule_after_a_catch_all_is_unreachable(self) -> None:
        text = (
            SHIPPED
            + '\n[[rules]]\nid = "11"\nname = "late"\napplies_to = ["crime"]\nregime = "none"\n'
        )
        (problem,) = problems(text)
        assert problem.startswith(f"{SOURCE}: rules[11]: can never match: rules[8]")

    def test_a_provider_on_a_none_regime_rule_is_rejected(self) -> None:
        text = edited(
            "when.deceased = true\n", 'when.deceased = true\nprovider = "x"\nservice = "y"\n'
        )
        (problem,) = problems(text)
        assert problem.startswith(f"{SOURCE}: rules[2]: regime 'none' sends nothing")

    def test_requires_contact_person_needs_the_explicit_regime(self) -> None:
        text = edited(
            'service = "business"\nregime = "explicit"', 'service = "business"\nregime = "opt_out"'
        )
        (problem,) = problems(text)
        assert (
            "rules[1]: requires_contact_person only makes sense with regime 'explicit'" in problem
        )

    def test_a_provider_id_must_be_usable_as_a_routing_key(self) -> None:
        (problem,) = problems(edited('provider = "homicide-service"', 'provider = "homicide.#"'))
        assert problem.startswith(f"{SOURCE}: rules[3].provider: ")

    def test_every_problem_is_reported_at_once(self) -> None:
        text = edited('regime = "opt_out"', 'regime = "maybe"')
        text = edited("consent_wait_working_days = 5\n", "", text=text)
        assert len(problems(text)) == 2

    def test_the_message_lists_each_problem_on_its_own_line(self) -> None:
        text = edited('regime = "opt_out"', 'regime = "maybe"')
        text = edited("consent_wait_working_days = 5\n", "", text=text)
        with pytest.raises(PolicyError) as caught:
            load_policy_text(text, source=SOURCE)
        lines = str(caught.value).splitlines()
        assert [line.strip() for line in lines[1:]] == list(caught.value.problems)

    def test_an_invalid_value_is_never_echoed(self) -> None:
        marker = "Test Person 07700 900999"
        text = edited(
            'service = "general"\nregime = "opt_out"', f'service = "general"\nregime = "{marker}"'
        )
        text = edited('ho_classes = [\n  "2",', f'ho_classes = [\n  "{marker}",', text=text)
        with pytest.raises(PolicyError) as caught:
            load_policy_text(text, source=SOURCE)
        assert marker not in str(caught.value)
        assert len(caught.value.problems) == 2
