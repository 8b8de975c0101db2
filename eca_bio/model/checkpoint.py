"""Trained-model files: what ``model.pt`` / ``ridge.npz`` hold and how they load (no training code needed).

``model.pt`` is a plain dict of tensors and JSON-able values read with ``weights_only=True``: a file
from elsewhere never runs code here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from eca_core.io import read_json
from eca_bio.model.exemplars import ExemplarBank
from eca_bio.model.expression import ExpressionModel, RidgeBaseline, model_from_hparams
from eca_bio.features.feature_set import DataError
from eca_bio.training.targets import TargetSpec


@dataclass
class TrainedModel:
    """A trained model with everything prediction needs: targets, its embedding's key, k, exemplar bank."""

    method: str
    spec: TargetSpec
    embedding: str  # EmbeddingSpec key (models trained before it: the encoder's alone)
    k: int
    use_tokens: bool
    model: ExpressionModel | None
    ridge: RidgeBaseline | None
    bank: ExemplarBank | None


def load_trained(item_dir: Path, bank: ExemplarBank | None = None) -> TrainedModel:
    """Load ``model.pt``/``ridge.npz`` of a trained item; its bank must carry the same genes (else an error)."""
    item_dir = Path(item_dir)
    result_path = item_dir / "result.json"
    if not result_path.is_file():
        raise DataError(f"{item_dir}: not a trained model folder (no result.json)")
    if bank is None and (item_dir / "bank.npz").is_file():
        bank = ExemplarBank.load(item_dir / "bank.npz")
    if (item_dir / "ridge.npz").is_file():
        spec = TargetSpec.from_dict(read_json(item_dir / "targets.json", DataError))
        result = read_json(result_path, DataError)
        return TrainedModel(result["method"], spec, result.get("embedding", result.get("encoder", "")), 0, False, None, RidgeBaseline.load(item_dir / "ridge.npz"), bank)
    try:
        ckpt = torch.load(item_dir / "model.pt", map_location="cpu", weights_only=True)  # never runs code from the file
    except Exception as exc:  # noqa: BLE001 - pickle errors of every kind: refuse the file, name it
        raise DataError(f"{item_dir / 'model.pt'}: not a model written by eca-bio train, refused without running it "
                        f"({' '.join(str(exc).split())[:200]})") from exc
    spec = TargetSpec.from_dict(ckpt["targets"])
    hp = ckpt["hparams"]
    model = model_from_hparams(hp, ckpt["state_dict"])
    if bank is None:
        raise DataError(f"{item_dir}: no exemplar bank (bank.npz)")
    embedding = ckpt.get("embedding", ckpt.get("encoder", ""))
    bank.check_compatible(spec.genes, hp["in_dim"], embedding)
    return TrainedModel(ckpt["method"], spec, embedding, int(ckpt["k"]), bool(ckpt["use_tokens"]), model, None, bank)
