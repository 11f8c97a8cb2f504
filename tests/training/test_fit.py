"""The one fit loop of fine-tuning: keeps the best epoch's weights, never prefers a NaN score, stops early."""

from __future__ import annotations

import math

import torch

from ortho_node.training.finetune import FinetuneSettings, fit


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
