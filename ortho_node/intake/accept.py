"""Accept rules (``[accept]``): which received instances go to analysis, are only kept, or are refused.

Rules are tried in order and the first that matches an instance decides (``accept.default`` when none does).
Intake applies :meth:`AcceptRules.decide` to every instance, whichever way it came in; the Storage SCP asks
:meth:`AcceptRules.refused_sop_classes` at association negotiation, so that a SOP class refused whatever its
content has its presentation context rejected instead of its instances failing one by one.
"""

from __future__ import annotations

import enum
import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ortho_node.config.schema import ACCEPT_CONTENT_FIELDS, REGEX_PREFIX, AcceptRule, AcceptSettings, sop_class_uid
from ortho_node.dicom_status import Status
from ortho_node.intake.header import InstanceHeader

#: Names the default in reasons and audit events (rule names are letters, digits, '.', '_' and '-').
DEFAULT_RULE = "accept.default"


class Action(str, enum.Enum):
    ANALYSE = "analyse"
    IGNORE = "ignore"  # stored and recorded, never queued for analysis
    REFUSE = "refuse"  # not stored; the sender gets a failure status


@dataclass(frozen=True)
class Decision:
    action: Action
    rule: str  # the deciding rule's name, or DEFAULT_RULE

    @property
    def reason(self) -> str:
        """``ignored by accept rule 'no-ct'``: what a study's state, the logs and the audit trail say."""
        done = {Action.ANALYSE: "accepted", Action.IGNORE: "ignored", Action.REFUSE: "refused"}[self.action]
        if self.rule == DEFAULT_RULE:
            return f"{done} by {DEFAULT_RULE} (no accept rule matched)"
        return f"{done} by accept rule '{self.rule}'"


ANALYSE_ALL = Decision(Action.ANALYSE, DEFAULT_RULE)


@dataclass(frozen=True)
class InstanceFacts:
    """What rules look at: the header facts intake records, and the sender."""

    sop_class_uid: str
    modality: str | None
    body_part_examined: str | None
    series_description: str | None
    study_description: str | None
    calling_ae: str | None  # None for files indexed at start-up (their association is unknown)

    @classmethod
    def of(cls, header: InstanceHeader, calling_ae: str | None) -> InstanceFacts:
        return cls(header.sop_class_uid or "", header.series.get("modality"), header.series.get("body_part_examined"),
                   header.series.get("series_description"), header.study.get("study_description"), calling_ae)


class _Pattern:
    """A glob, or with the ``re:`` prefix a regular expression (searched); both ignore case."""

    def __init__(self, text: str) -> None:
        if text.startswith(REGEX_PREFIX):
            self._regex = re.compile(text[len(REGEX_PREFIX):], re.IGNORECASE)
        else:
            self._regex = re.compile(fnmatch.translate(text), re.IGNORECASE)
        self._search = text.startswith(REGEX_PREFIX)

    def matches(self, value: str | None) -> bool:
        if value is None:
            return False  # an absent element matches no pattern (a rule for it names no pattern)
        return bool(self._regex.search(value) if self._search else self._regex.match(value))


class CompiledRule:
    """An :class:`AcceptRule` ready to match: SOP class keywords resolved, patterns compiled."""

    def __init__(self, rule: AcceptRule) -> None:
        self.name = rule.name
        self.action = Action(rule.action)
        self.sop_classes = frozenset(sop_class_uid(value) for value in rule.sop_classes)
        self.calling_aets = frozenset(ae.strip() for ae in rule.calling_aets)
        self.modalities = frozenset(m.strip().upper() for m in rule.modalities)
        self.body_parts = [_Pattern(p) for p in rule.body_parts]
        self.series_descriptions = [_Pattern(p) for p in rule.series_descriptions]
        self.study_descriptions = [_Pattern(p) for p in rule.study_descriptions]
        #: Matching needs the data set, not just the association's calling AE and the SOP class.
        self.reads_content = any(getattr(rule, key) for key in ACCEPT_CONTENT_FIELDS)

    def matches_association(self, calling_ae: str | None, sop_class: str) -> bool:
        """The conditions known at negotiation: calling AE title and SOP class."""
        if self.calling_aets and (calling_ae or "").strip() not in self.calling_aets:
            return False
        return not self.sop_classes or sop_class in self.sop_classes

    def matches(self, facts: InstanceFacts) -> bool:
        if not self.matches_association(facts.calling_ae, facts.sop_class_uid):
            return False
        if self.modalities and (facts.modality or "").strip().upper() not in self.modalities:
            return False
        return all(not patterns or any(p.matches(value) for p in patterns) for patterns, value in (
            (self.body_parts, facts.body_part_examined), (self.series_descriptions, facts.series_description),
            (self.study_descriptions, facts.study_description)))


class AcceptRules:
    """The configured rules; without any (the default) every instance goes to analysis."""

    def __init__(self, rules: Iterable[AcceptRule] = (), default: str = Action.ANALYSE.value) -> None:
        self._rules = [CompiledRule(rule) for rule in rules]
        self._default = Decision(Action(default), DEFAULT_RULE)

    @classmethod
    def from_settings(cls, settings: AcceptSettings) -> AcceptRules:
        return cls(settings.rules, settings.default)

    @property
    def analyse_all(self) -> bool:
        return not self._rules and self._default.action is Action.ANALYSE

    def decide(self, facts: InstanceFacts) -> Decision:
        for rule in self._rules:
            if rule.matches(facts):
                return Decision(rule.action, rule.name)
        return self._default

    def decide_at_negotiation(self, calling_ae: str | None, sop_class: str) -> Decision | None:
        """The decision for every instance of ``sop_class`` from ``calling_ae``, or None when content decides
        (a rule that could match reads the data set before any rule that matches the SOP class as a whole)."""
        for rule in self._rules:
            if not rule.matches_association(calling_ae, sop_class):
                continue
            if rule.reads_content:
                return None
            return Decision(rule.action, rule.name)
        return self._default

    def refused_sop_classes(self, calling_ae: str, sop_classes: Iterable[str]) -> dict[str, Decision]:
        """Of ``sop_classes``, those whose every instance from ``calling_ae`` is refused, with the decision."""
        refused: dict[str, Decision] = {}
        if self.analyse_all:
            return refused
        for sop_class in sop_classes:
            decision = self.decide_at_negotiation(calling_ae, sop_class)
            if decision is not None and decision.action is Action.REFUSE:
                refused[sop_class] = decision
        return refused

    def refusal_status(self, facts: InstanceFacts) -> Status:
        """0x0122 when the SOP class alone (for this sender) is refused, else the content status (C230)."""
        at_negotiation = self.decide_at_negotiation(facts.calling_ae, facts.sop_class_uid)
        if at_negotiation is not None and at_negotiation.action is Action.REFUSE:
            return Status.SOP_CLASS_NOT_SUPPORTED
        return Status.CANNOT_UNDERSTAND_NOT_ACCEPTED
