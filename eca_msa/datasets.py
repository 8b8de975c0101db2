"""What the three MMSA data sets look like: split sizes, sequence shapes, label ranges, text model.

Shapes are those of MMSA's released feature files (``unaligned_50.pkl`` for MOSI and MOSEI,
``unaligned_39.pkl`` for CH-SIMS) as ALMT's configs (Haoyu-ha/ALMT ``configs/*.yaml``) and MMSA's
``config_regression.json`` give them; split sizes are MMSA's (its README and ``train_samples``).
The synthetic generator builds schema-faithful stand-ins from these, and training checks that the
labels fit the named data set's range.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetSpec:
    """One MMSA data set: clips per split, (length, features) per modality, label range and rounding."""

    name: str
    splits: tuple[int, int, int]  # train, valid, test clips
    text: tuple[int, int]  # BERT tokens × 768
    audio: tuple[int, int]  # frames × features (COVAREP / librosa)
    vision: tuple[int, int]  # frames × features (Facet / OpenFace)
    label_max: float  # labels lie in [-label_max, label_max]
    label_step: float  # labels are averages of annotator ratings: multiples of this step
    bert: str  # the BERT that ALMT fine-tunes on ``text_bert``
    metrics: str  # MMSA's metric rules: "mosi" (MOSI/MOSEI) or "sims"


DATASETS: dict[str, DatasetSpec] = {
    "mosi": DatasetSpec("mosi", (1284, 229, 686), (50, 768), (375, 5), (500, 20), 3.0, 0.2, "bert-base-uncased", "mosi"),
    "mosei": DatasetSpec("mosei", (16326, 1871, 4659), (50, 768), (500, 74), (500, 35), 3.0, 1 / 3, "bert-base-uncased", "mosi"),
    "sims": DatasetSpec("sims", (1368, 456, 457), (39, 768), (400, 33), (55, 709), 1.0, 0.2, "bert-base-chinese", "sims"),
}


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of ``name`` (mosi, mosei or sims); ValueError listing the choices otherwise."""
    try:
        return DATASETS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown data set {name!r}: expected one of {list(DATASETS)}") from None
