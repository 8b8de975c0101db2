"""The preprocess folder's owner: EmbeddingSpec identity, reading older folders, and predict's config built from it."""

import json

import pytest

from eca_core.runner.config import to_dict
from eca_bio.configs import EncoderConfig, InputSpec, PredictConfig, PreprocessConfig
from eca_bio.features.feature_set import DataError, EmbeddingSpec, FeatureSet
from eca_bio.predict import preprocess_config_for
from tests.bio.fixtures_model import make_preprocess_dir

ENC = {"name": "vit_tiny_patch16_224", "pretrained": False, "weights": None, "kwargs": {}, "seed": 0, "backend": "timm"}


def test_key_is_the_identity_and_ignores_storage_and_precision():
    cfg = PreprocessConfig(patch_um=112, patch_px=224, encoder=EncoderConfig(name="uni"))
    spec = EmbeddingSpec.of(cfg)
    assert spec.patch_um == 112.0 and isinstance(spec.patch_um, float)  # a YAML int and a float are one key
    same = EmbeddingSpec.of(PreprocessConfig(patch_um=112.0, patch_px=224, encoder=EncoderConfig(name="uni"),
                                             precision="bf16-mixed", store_tokens=False))
    assert same.key() == spec.key()
    for other in (PreprocessConfig(patch_um=56, encoder=EncoderConfig(name="uni")),
                  PreprocessConfig(patch_px=448, encoder=EncoderConfig(name="uni")),
                  PreprocessConfig(token_grid=4, encoder=EncoderConfig(name="uni")),
                  PreprocessConfig(encoder=EncoderConfig(name="conch"))):
        assert EmbeddingSpec.of(other).key() != spec.key()
    legacy = {k: v for k, v in to_dict(cfg.encoder).items() if k != "backend"}  # written before `backend` existed
    assert EmbeddingSpec(legacy, 112.0, 224).key() == spec.key()


def test_older_folders_and_models_are_read_from_encoder_and_params(tmp_path):
    saved = {"encoder": ENC, "params": {"patch_um": 32, "patch_px": 64, "token_grid": None, "precision": "32-true"}}
    spec = EmbeddingSpec.from_saved(saved, "model/preprocess.json")
    assert spec == EmbeddingSpec(ENC, 32.0, 64, None, "32-true", True)
    assert EmbeddingSpec.from_saved({"embedding": spec.to_dict()}, "x") == spec
    with pytest.raises(DataError, match=r"model/preprocess\.json: no embedding"):
        EmbeddingSpec.from_saved({"params": {}}, "model/preprocess.json")
    pre = make_preprocess_dir(tmp_path / "pre", n_slides=2, n_spots=6)  # a manifest without 'embedding'
    fs = FeatureSet(pre)
    assert fs.spec.patch_um == 32.0 and fs.spec.encoder["name"] == json.loads((pre / "manifest.json").read_text())["encoder"]["name"]
    assert [s.slide_id for s in fs.slides()] == ["S0", "S1"]


def test_predict_reads_any_layout_with_the_models_embedding(tmp_path):
    """A model trained on legacy ST (st_format: legacy_st) predicts a Visium folder: the inputs are predict's, the
    embedding, tissue and grid settings the model's; no field is copied from the training run's inputs."""
    train = PreprocessConfig(st_dir="her2st", st_format="legacy_st", sections=["A1"], mpp=0.7, patch_um=100, patch_px=64,
                             token_grid=2, encoder=EncoderConfig(name="vit_tiny_patch16_224", pretrained=False),
                             min_tissue=0.5, skip_errors=True)
    saved = {"embedding": EmbeddingSpec.of(train).to_dict(), "encoder": to_dict(train.encoder), "params": to_dict(train)}
    new = PredictConfig(st_dir="visium_folder", st_format="visium", batch_size=3)
    cfg = preprocess_config_for(tmp_path, new, saved)
    for f in InputSpec.__dataclass_fields__:
        assert getattr(cfg, f) == getattr(new, f), f  # st_format, sections, mpp, skip_errors: predict's own
    assert EmbeddingSpec.of(cfg).key() == EmbeddingSpec.of(train).key()
    assert cfg.min_tissue == 0.5 and cfg.batch_size == 3
