"""Checks that need a CUDA GPU (CI has none): run them on a machine with one and read the printed table.

    ORTHO_TEST_SHARED=/path/to/shared python3 bench/cuda_checks.py [--device cpu: dry run of the script itself]

1. The official UNet with the golden-file weights on CUDA, float32 (TF32 off): every golden activation
   (in_9, mid_0..2, final at t = 50..200) within 1e-4, as on the CPU; with bf16 autocast, the relative
   error of each activation against float32 (reported, bf16 is not expected to meet 1e-4).
2. The bundled model on the stored golden study: ``deterministic=True`` on CUDA meets the CPU golden test
   (Dice >= 0.99, probabilities within 1e-3) and repeats itself exactly; the default bf16 path is reported.
3. bf16 training steps: a reduced backbone overfits four volumes (held-out loss falls tenfold), and
   ``ortho-node train pretrain --device cuda`` writes, refuses to overwrite, and resumes its state.

Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ortho_node.inference.predictor import Predictor  # noqa: E402
from ortho_node.model.checkpoint import build_model, load_checkpoint  # noqa: E402
from ortho_node.model.diffusion import cosine_betas  # noqa: E402
from ortho_node.training.scores import dice_per_structure  # noqa: E402
from ortho_node.training.pretrain import BACKBONE_DIR, STATE_FILE, add_arguments, run  # noqa: E402
from ortho_node.model.runtime import autocast  # noqa: E402
from ortho_node.model.unet import UNet, UNetConfig  # noqa: E402
from tests.inference.conftest import locate  # noqa: E402
from tests.inference.golden import BUNDLED, REFERENCE_CARD, REFERENCE_FILE, load_study  # noqa: E402
from tests.model.test_unet import GOLDEN_BLOCKS, _golden_weights  # noqa: E402
from tests.model.volumes import blob_volume  # noqa: E402

#: The reference files, where the test suite finds them (tests/conftest.py; not imported: it needs a database).
SHARED = Path(os.environ.get("ORTHO_TEST_SHARED", Path(__file__).resolve().parents[2] / "shared"))
failures: list[str] = []


def check(name: str, passed: bool, detail: str) -> None:
    print(f"{'PASS' if passed else 'FAIL'}  {name:<44} {detail}", flush=True)
    if not passed:
        failures.append(name)


def golden_activations(device: torch.device) -> None:
    manifest = json.loads((SHARED / "reference" / "orthodiffusion-checkpoint-manifest.json").read_text())
    golden = json.loads((SHARED / "reference" / "orthodiffusion-golden-features.json").read_text())
    unet = UNet(UNetConfig.official()).eval()
    unet.load_state_dict(_golden_weights(unet, manifest))
    unet.to(device)
    d, h, w = np.meshgrid(np.arange(16), np.arange(64), np.arange(64), indexing="ij")
    x_0 = torch.from_numpy(np.sin(0.3 * d + 0.1 * h - 0.07 * w))[None, None]
    noise = torch.from_numpy(np.cos(0.2 * d + 0.05 * h + 0.11 * w))[None, None]
    abar = torch.cumprod(1 - cosine_betas(1000), dim=0)
    worst, worst_bf16 = 0.0, 0.0
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    for t_text, expected in golden["results"].items():
        t = int(t_text)
        x_t = (abar[t].sqrt() * x_0 + (1 - abar[t]).sqrt() * noise).float().to(device)
        steps = torch.tensor([t], device=device)
        with torch.inference_mode():
            found = unet.activations(x_t, steps, GOLDEN_BLOCKS)
            with autocast(device):
                low = unet.activations(x_t, steps, GOLDEN_BLOCKS)
        for block in GOLDEN_BLOCKS:
            act, ref = found[block].double().cpu(), expected[block]
            errors = [
                (act.flatten()[:8] - torch.tensor(ref["first8"], dtype=torch.float64)).abs().max().item(),
                abs(act.mean().item() - ref["mean"]), abs(act.std().item() - ref["std"]),
                abs(act.abs().mean().item() - ref["sum_abs"] / act.numel()),
            ]
            worst = max(worst, *errors)
            relative = (low[block].double() - found[block].double()).norm() / found[block].double().norm()
            worst_bf16 = max(worst_bf16, relative.item())
    check(f"golden activations, {device.type} float32", worst <= 1e-4, f"max abs error {worst:.2e} (tolerance 1e-4)")
    check(f"golden activations, {device.type} bf16 vs float32", worst_bf16 <= 5e-2,
          f"max relative error {worst_bf16:.2e} (bf16 operands: 1e-3..1e-2 expected)")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True


def golden_study(device: torch.device) -> None:
    reference = json.loads(REFERENCE_CARD.read_text())
    masks = np.load(REFERENCE_FILE)
    study = load_study()
    for deterministic in (True, False):
        predictor = Predictor.from_checkpoint(BUNDLED, device.type, locate=locate, deterministic=deterministic)
        first, again = predictor.predict(study), predictor.predict(study)
        dice = min(
            float(np.nanmin(np.nan_to_num(dice_per_structure(s.mask, masks[f"mask_{s.plane.value}"],
                                                             len(s.structures)), nan=1.0)))
            for s in first.segmentations
        )
        gap = max(abs(f.probability - reference["probabilities"][f.label]) for f in first.findings)
        repeat = all(np.array_equal(a.mask, b.mask) for a, b in zip(first.segmentations, again.segmentations)) and all(
            a.probability == b.probability for a, b in zip(first.findings, again.findings))
        mode = "deterministic float32" if deterministic else "bf16 autocast"
        detail = f"min Dice {dice:.4f}, max |dp| {gap:.2e}, repeat identical: {repeat}"
        if deterministic:
            check(f"golden study on {device.type}, {mode}", dice >= 0.99 and gap <= 1e-3 and repeat, detail)
        else:
            check(f"golden study on {device.type}, {mode} (reported)", dice >= 0.9 and gap <= 0.05, detail)
        torch.use_deterministic_algorithms(False)


def overfit_bf16(device: torch.device) -> None:
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(UNetConfig.reduced(), image_size=32)).to(device)
    volumes = torch.stack([torch.from_numpy(blob_volume((16, 32, 32), seed=k)) for k in range(4)])[:, None]
    volumes = (volumes / volumes.amax(dim=(1, 2, 3, 4), keepdim=True) * 2 - 1).to(device)
    generator = torch.Generator().manual_seed(1)
    eval_x0 = volumes.repeat(4, 1, 1, 1, 1)
    eval_t = torch.linspace(0, 999, len(eval_x0)).long().to(device)
    eval_noise = torch.randn(eval_x0.shape, generator=generator).to(device)

    def held_out() -> float:
        with torch.no_grad(), autocast(device):
            return model.training_losses(eval_x0, eval_t, eval_noise).item()

    initial = held_out()
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(180):
        with autocast(device):
            loss = model.training_losses(volumes)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    final = held_out()
    check("bf16 training: reduced backbone overfits", final < initial / 10,
          f"held-out loss {initial:.4f} -> {final:.4f}")


def pretrain_cli(device: torch.device, scratch: Path) -> None:
    affine = np.array([[0, 0, 3.0, 0], [0.4, 0, 0, 0], [0, 0.4, 0, 0], [0, 0, 0, 1]])
    for k in range(3):
        folder = scratch / "data" / f"study{k}"
        folder.mkdir(parents=True)
        nib.save(nib.Nifti1Image(blob_volume((64, 64, 18), seed=k), affine), folder / "t2_sag.nii.gz")

    def args(steps: int, resume: bool = False) -> argparse.Namespace:
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        return parser.parse_args(
            ["--plane", "sagittal", "--data", str(scratch / "data"), "--out", str(scratch / "out"), "--unet",
             "reduced", "--steps", str(steps), "--batch-size", "2", "--ema-start", "2", "--ema-every", "1",
             "--checkpoint-every", "2", "--device", device.type] + (["--resume"] if resume else []))  # fmt: skip

    codes = (run(args(2)), run(args(4)), run(args(4, resume=True)))
    state = torch.load(scratch / "out" / STATE_FILE, weights_only=True)
    _, card = load_checkpoint(scratch / "out" / BACKBONE_DIR)
    passed = codes == (0, 2, 0) and state["step"] == 4 and card.step == 4
    check(f"train pretrain --device {device.type}, resume", passed,
          f"exit codes {codes}, state step {state['step']}, card step {card.step}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    device = torch.device(parser.parse_args().device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 1
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (dry run)"
    print(f"torch {torch.__version__} on {name}", flush=True)
    golden_activations(device)
    golden_study(device)
    overfit_bf16(device)
    with tempfile.TemporaryDirectory() as scratch:
        pretrain_cli(device, Path(scratch))
    print(f"{len(failures)} failed" + (f": {failures}" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
