"""``ortho-node synth``, ``train ...`` and ``infer``: the commands that import torch, the generator or training
code, each only when it runs (the flags of a deferred command come from its module's ``add_arguments``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ortho_node.app.cli.context import settings_of


def register(sub) -> None:
    synth = sub.add_parser("synth", help="generate synthetic MSK MRI studies with ground truth")
    _defer(synth, "ortho_node.app.cli.synth")
    train = sub.add_parser("train", help="train models")
    train_sub = train.add_subparsers(dest="train_command", required=True)
    for name, help_text in (("pretrain", "self-supervised diffusion pretraining of a backbone"),
                            ("finetune", "train a task's heads (segmentation or diagnosis)"),
                            ("bundle", "train the bundled model on synthetic studies, end to end"),
                            ("evaluate", "validation report of a task model on labelled DICOM studies")):
        _defer(train_sub.add_parser(name, help=help_text), f"ortho_node.training.{name}")
    infer = sub.add_parser("infer", help="run the model on a folder of DICOM files (NIfTI masks + findings JSON)")
    infer.set_defaults(handler=cmd_infer, argument_module="ortho_node.inference.offline")


def _defer(parser: argparse.ArgumentParser, module_name: str) -> None:
    """``module_name``'s ``add_arguments`` and ``run`` serve this command; ``main`` imports it only for it."""
    parser.set_defaults(handler=_deferred(module_name), argument_module=module_name)


def _deferred(module_name: str):
    def handler(args: argparse.Namespace) -> int:
        import importlib

        return importlib.import_module(module_name).run(args)

    return handler


def cmd_infer(args: argparse.Namespace) -> int:
    from ortho_node.inference import offline

    settings = settings_of(args)

    def write_dicom_results(out: Path, prediction) -> None:
        from reports.results import build_results, write_result_objects

        write_result_objects(build_results(prediction, settings).datasets, out)

    return offline.run(args, write_dicom_results=write_dicom_results)
