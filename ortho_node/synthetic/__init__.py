"""Synthetic knee, ankle and shoulder MRI studies with exact ground truth (issue 4).

Public API::

    study = generate_study("knee", seed=7, findings=["ACL", "EFFU"])   # or findings="random" / None
    write_study(study, "out/", "both")                                  # DICOM + NIfTI + findings.json
    write_labels_csv([label_row(study)], Joint.KNEE, "out/labels.csv")

Module map: ``shapes`` (signed-distance primitives) -> ``anatomy/<joint>`` (parametric anatomy) ->
``findings/<joint>`` (lesions with regions) -> ``scene`` (label + appearance volumes) -> ``render``
(MR contrast, noise, bias) and ``acquisition`` (2D multi-slice geometry, resampling) -> ``study``
(``generate_study``) -> ``dicom_writer`` / ``nifti_writer`` / ``export`` (``write_study``, CSV) -> ``cli``.
Beside the realistic render: ``deformation`` (random affine + smooth warps) and ``randomization`` (SynthSeg-style
random contrast and resolution) -> ``randomized_study`` (``randomize_study``, ``generate_randomized_study``;
``generate_contrast_study``: one seed in the benches' sweep contrasts, ``StudyContrast``).
"""

from ortho_node.synthetic.deformation import RandomDeformation
from ortho_node.synthetic.domain import DomainRandomization
from ortho_node.synthetic.export import OutputFormat, label_row, write_labels_csv, write_study
from ortho_node.synthetic.randomization import RandomizedAppearance
from ortho_node.synthetic.randomized_study import (StudyContrast, choose_randomized, generate_contrast_study,
                                                  generate_randomized_study, randomize_study, training_weightings)
from ortho_node.synthetic.render import SequencePreset
from ortho_node.synthetic.structures import Structure, structure_names
from ortho_node.synthetic.generator import SyntheticSeries, SyntheticStudy, generate_study

__all__ = [
    "DomainRandomization", "OutputFormat", "Structure", "SyntheticSeries", "SyntheticStudy", "SequencePreset",
    "generate_study", "label_row", "structure_names", "write_labels_csv", "write_study",
    "RandomDeformation", "RandomizedAppearance", "choose_randomized", "generate_randomized_study", "randomize_study",
    "StudyContrast", "generate_contrast_study", "training_weightings",
]
