"""The published warm-up + cosine schedule, checked against values printed by ALMT's own scheduler."""

import pytest

from eca_msa.schedule import lr_factor, warmup_cosine_factor

# Printed by Haoyu-ha/ALMT core/scheduler.py get_scheduler (GradualWarmupScheduler + CosineAnnealingLR), lr / base lr
# at the start of each epoch, for runs of 16 and 200 epochs.
REFERENCE_16_FIRST = [0.0, 0.625, 1.0, 0.988148, 0.953154]
REFERENCE_16_LAST = [0.066987, 0.023142]
REFERENCE_200_FIRST = [0.0, 0.05, 0.1, 0.15, 0.2]
REFERENCE_200_LAST = [0.000685, 0.000305]


@pytest.mark.parametrize("epochs, first, last", [(16, REFERENCE_16_FIRST, REFERENCE_16_LAST),
                                                 (200, REFERENCE_200_FIRST, REFERENCE_200_LAST)])
def test_warmup_cosine_matches_almt_scheduler(epochs, first, last):
    f = warmup_cosine_factor(epochs)
    assert [f(e) for e in range(5)] == pytest.approx(first, abs=1e-6)
    assert [f(e) for e in range(epochs - 2, epochs)] == pytest.approx(last, abs=1e-6)
    values = [f(e) for e in range(epochs)]
    assert max(values) == pytest.approx(1.0) and values[0] == 0.0


def test_constant_and_unknown():
    assert lr_factor("constant", 10)(7) == 1.0
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_factor("step", 10)
