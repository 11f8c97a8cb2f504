"""The one fit loop of fine-tuning: keeps the best epoch's weights, never prefers a NaN score, stops early,
resumes a stopped run, and keeps each epoch's model where asked."""

from __future__ import annotations

import math
import types

import pytest
import torch

from ortho_node.labels import Joint
from ortho_node.model.system import OrthoModel, load_system, new_card
from ortho_node.model.unet import UNetConfig
from ortho_node.training import finetune
from ortho_node.training.finetune import EpochCheckpoint, FinetuneSettings, fit, trained_seconds


def _run(scores: list[float], patience: int = 3) -> tuple[int, list[int], float]:
    model = torch.nn.Linear(1, 1, bias=False)
    seen: list[int] = []

    def epoch(n: int) -> tuple[float, int]:
        seen.append(n)
        with torch.no_grad():
            model.weight.fill_(float(n))
        return scores[n - 1], n

    kept = fit(model, FinetuneSettings(epochs=len(scores), patience=patience), "test", epoch)
    return kept, seen, float(model.weight.detach())


def test_a_nan_score_never_beats_a_number():
    assert _run([math.nan, 0.4, math.nan, 0.3])[::2] == (2, 2.0)  # weights of the kept epoch restored


def test_training_stops_after_patience_epochs_without_improvement():
    kept, seen, _ = _run([0.5, 0.6, 0.1, 0.2, 0.9], patience=2)
    assert kept == 2 and seen == [1, 2, 3, 4]


class _Stopped(Exception):
    """The run is killed (a stopped piece of a long training run)."""


def _trained(checkpoint: EpochCheckpoint | None, stop_before: int | None = None, patience: int = 10):
    # A real optimiser, schedule and random stream, so that a resume which lost any of them would differ.
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=5)
    generator = torch.Generator().manual_seed(1)
    seen: list[int] = []

    def epoch(n: int) -> tuple[float, int]:
        if n == stop_before:
            raise _Stopped
        seen.append(n)
        x = torch.randn(8, 4, generator=generator) + torch.randn(8, 4)  # the generator and the global stream
        loss = (model(x) - 1).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        return [0.1, 0.5, 0.3, 0.6, 0.2][n - 1], n

    if checkpoint is not None:
        checkpoint = EpochCheckpoint(checkpoint.path, (optimizer, schedule), generator)
    kept = fit(model, FinetuneSettings(epochs=5, patience=patience), "test", epoch, checkpoint)
    return kept, seen, model.state_dict()


def test_a_stopped_fit_resumes_at_the_next_epoch_as_if_never_stopped(tmp_path):
    whole_kept, whole_seen, whole = _trained(None)
    checkpoint = EpochCheckpoint(tmp_path / "fit.pt")
    with pytest.raises(_Stopped):
        _trained(checkpoint, stop_before=3)
    kept, seen, resumed = _trained(checkpoint)
    assert seen == [3, 4, 5] and kept == whole_kept == 4 and whole_seen == [1, 2, 3, 4, 5]
    assert all(torch.equal(resumed[k], whole[k]) for k in whole)  # the kept epoch's weights, bit for bit


def test_an_early_stopped_fit_resumed_trains_no_further_epoch(tmp_path):
    checkpoint = EpochCheckpoint(tmp_path / "fit.pt")
    kept, seen, _ = _trained(checkpoint, patience=1)  # 0.1, 0.5, then 0.3 is stale: stops after epoch 3
    assert kept == 2 and seen == [1, 2, 3]
    assert _trained(checkpoint, patience=1)[:2] == (2, [])


def test_a_resumed_fit_counts_the_seconds_of_its_epochs_not_the_pause(tmp_path, monkeypatch):
    # The card's training seconds are what the recipe costs: each epoch's time, summed over the processes that
    # trained them; the hours a stopped run waited before its resume are not part of it.
    now = [0.0]
    monkeypatch.setattr(finetune, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))

    def epoch(n: int) -> tuple[float, int]:
        if n == 3 and not (tmp_path / "resumed").exists():
            raise _Stopped
        now[0] += 10.0 * n  # epoch n takes 10 n seconds
        return 0.1 * n, n

    model, settings = torch.nn.Linear(1, 1), FinetuneSettings(epochs=4, patience=10)
    with pytest.raises(_Stopped):
        fit(model, settings, "test", epoch, EpochCheckpoint(tmp_path / "fit.pt"))
    assert trained_seconds(tmp_path / "fit.pt") == 30.0
    now[0] += 3600.0
    (tmp_path / "resumed").touch()
    assert fit(model, settings, "test", epoch, EpochCheckpoint(tmp_path / "fit.pt")) == 4
    assert trained_seconds(tmp_path / "fit.pt") == 100.0


def test_snapshots_keep_each_epochs_model_as_a_model_folder(tmp_path):
    # A long run is watched on real images while it learns (bench/real_knee.py --model FOLDER): each epoch's
    # weights, not only the best one's, as a folder the node loads.
    model = OrthoModel(new_card(UNetConfig.reduced(), joints=(Joint.KNEE,)))
    weights: dict[int, torch.Tensor] = {}
    first = next(iter(model.head_parameters()))

    def epoch(n: int) -> tuple[float, int]:
        with torch.no_grad():
            first.fill_(float(n))
        weights[n] = first.detach().clone()
        return [0.5, 0.9, 0.1][n - 1], n

    checkpoint = EpochCheckpoint(tmp_path / "finetune.epochs.pt", snapshots=tmp_path / "snapshots")
    assert fit(model, FinetuneSettings(epochs=3, patience=10), "test", epoch, checkpoint) == 2
    assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == [f"finetune-epoch-00{n}" for n in (1, 2, 3)]
    for n in (1, 3):
        kept = load_system(tmp_path / "snapshots" / f"finetune-epoch-00{n}")
        assert torch.equal(next(iter(kept.head_parameters())), weights[n])
