"""Study assembly: series -> volumes -> one chosen volume per plane, joint, laterality, completeness.

The public contract is :class:`~ortho_node.assembly.study.AssembledStudy` (what the predictor consumes)
and :class:`~ortho_node.assembly.assembler.Assembler` (what builds it from a stored study).
"""
