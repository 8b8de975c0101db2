"""``eca-bio predict`` on the real CMU .svs crop with a tiny trained model."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest

from eca_core.runner.config import to_dict
from eca_bio.features.encoders import EncoderConfig
from eca_bio.predict import PredictConfig, find_model, predict_slides
from eca_bio.features.preprocess import PreprocessConfig
from eca_bio.features.feature_set import DataError
from eca_bio.training.train import train_all
from tests.bio.fixtures_model import make_preprocess_dir
from tests.bio.training.test_train import tiny_config

ENC = EncoderConfig(name="vit_tiny_patch16_224", pretrained=False,
                    kwargs={"img_size": 32, "patch_size": 16, "embed_dim": 32, "depth": 1, "num_heads": 2})


@pytest.fixture(scope="module")
def model_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    params = to_dict(PreprocessConfig(patch_um=224.0, patch_px=32, encoder=ENC, batch_size=64, num_workers=0))
    pre = make_preprocess_dir(root / "pre", n_slides=3, n_spots=20, n_genes=12, dim=32, n_tokens=4,
                              encoder=to_dict(ENC), params=params)
    train_all(tiny_config(methods=["ridge"], final_method="eca"), pre, root / "train", progress=False)
    return root


def test_predict_on_cmu_svs(model_run, cmu_svs):
    out = model_run / "pred"
    result = predict_slides(model_run / "train", PredictConfig(slides=[str(cmu_svs)], batch_size=64), out, progress=False)
    info = result["slides"]["cmu_small_region"]
    a = ad.read_h5ad(info["h5ad"])
    genes = json.loads((model_run / "train" / "final" / "targets.json").read_text())["genes"]
    assert a.n_obs == info["tiles"] > 10 and list(a.var_names) == genes
    assert "truth" not in a.layers and np.isfinite(a.X).all() and a.X.std() > 0
    # tiles cover the slide in level-0 pixels (2220 x 2967 at 0.499 um/px; 224 um tiles = 449 px)
    xy = a.obsm["spatial"]
    assert xy[:, 0].max() < 2220 and xy[:, 1].max() < 2967 and xy.min() > 0
    lib = a.uns["spatial"]["cmu_small_region"]
    assert lib["images"]["hires"].shape[0] == 2000 and lib["scalefactors"]["spot_diameter_fullres"] == pytest.approx(449, abs=2)
    assert a.uns["eca"]["method"] == "eca" and a.uns["eca"]["target_transform"] == "egn"
    assert (out / "cmu_small_region_genes.png").stat().st_size > 5000
    # the new slide was embedded with the training encoder settings
    manifest = json.loads((out / "preprocess" / "manifest.json").read_text())
    assert manifest["encoder"] == to_dict(ENC) and manifest["params"]["patch_px"] == 32


def test_predict_errors(model_run, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        predict_slides(model_run / "train", PredictConfig(slides=[str(tmp_path / "none.svs")]), tmp_path / "o", progress=False)
    with pytest.raises(DataError, match="no trained model found"):
        find_model(tmp_path)
    assert find_model(model_run / "train") == model_run / "train" / "final"
    assert not (tmp_path / "o").exists()


def test_loading_and_predicting_needs_no_training_code():
    import subprocess
    import sys

    code = ("import sys, eca_bio.predict, eca_bio.model.checkpoint, eca_bio.training.spots; "
            "from eca_bio.predict import predict_slides; "
            "training = {'eca_bio.training.train', 'eca_bio.training.fit', 'eca_bio.training.engine', 'eca_bio.training.task', 'lightning'} & set(sys.modules); "
            "assert not training, sorted(training)")
    subprocess.run([sys.executable, "-c", code], check=True)
