"""Every standard code in reports/codes.py exists in DICOM PS3.16 with exactly that meaning."""

from __future__ import annotations

import pydicom.sr._concepts_dict as concepts
from pydicom.sr.coding import Code

from ortho_node.labels import DIAGNOSIS_LABELS, KNEE_STRUCTURES
from reports import codes


def _all_codes() -> list[Code]:
    found = [value for value in vars(codes).values() if isinstance(value, Code)]
    found += list(codes.PLANE_WEIGHT.values()) + list(codes.JOINT_SITE.values()) + list(codes.OPERATING_RULES.values())
    for concept in codes.STRUCTURES.values():
        found += [c for c in (concept.category, concept.type, concept.modifier, concept.region) if c]
    for concept in codes.FINDINGS.values():
        found += [c for c in (concept.code, concept.site, concept.site_modifier) if c]
    return found


def test_standard_codes_have_their_ps3_16_meaning():
    for code in _all_codes():
        if code.scheme_designator == codes.PRIVATE_SCHEME:
            continue
        meanings = {meaning for table in concepts.concepts[code.scheme_designator].values()
                    for value, (meaning, _cids) in table.items() if value == code.value}
        assert code.meaning in meanings, f"{code} not in PS3.16 with that meaning (known: {meanings})"


def test_private_codes_are_unique_and_printable():
    private = {c.value: c.meaning for c in _all_codes() if c.scheme_designator == codes.PRIVATE_SCHEME}
    assert len(set(private.values())) == len(private)
    for value, meaning in private.items():
        assert len(value) <= 16 and meaning.isprintable() and meaning == meaning.strip() and len(meaning) <= 64


def test_every_structure_and_label_is_coded():
    assert set(codes.STRUCTURES) == set(KNEE_STRUCTURES[1:])
    assert set(codes.FINDINGS) == {label for labels in DIAGNOSIS_LABELS.values() for label in labels}
    for concept in codes.FINDINGS.values():
        assert concept.key_structure is None or concept.key_structure in codes.STRUCTURES
