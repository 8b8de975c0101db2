"""The per-slide feature file: read as TRIDENT's and CLAM's code reads it, and TRIDENT files trained on."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from eca_bio.features.preprocess import run_preprocess
from eca_bio.features.slide_h5 import read_slide_h5
from eca_core.errors import InputError

from tests.bio.conftest import make_legacy_st
from tests.bio.features.test_preprocess import CPU, cfg_for


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """Three small legacy-ST sections embedded by the project (tiny random encoder)."""
    root = tmp_path_factory.mktemp("slide_h5")
    for k in range(3):
        make_legacy_st(root / "st" / f"S{k}", section=f"S{k}", n=6, origin=150.0 + 10 * k, seed=k + 1)  # three sections, three images
    manifest = run_preprocess(cfg_for(st_dir=str(root / "st")), root / "pre", CPU, progress=False)
    return root, manifest


def test_trident_and_clam_read_the_projects_files(embedded):
    root, manifest = embedded
    for entry in manifest["slides"]:
        path = root / "pre" / entry["h5"]
        # TRIDENT (trident/IO.py read_coords + WSI.visualize_coords / slide encoders): coords attrs and float features
        with h5py.File(path, "r") as f:
            attrs, coords = dict(f["coords"].attrs), f["coords"][:]
            patch_features = torch.from_numpy(f["features"][:]).float()
        assert None not in (attrs.get("patch_size"), attrs.get("level0_magnification"), attrs.get("target_magnification"))
        assert int(attrs["patch_size_level0"]) == entry["patch_size_px"] and attrs["name"] == entry["slide_id"]
        assert attrs["patch_size"] * attrs["level0_magnification"] / attrs["target_magnification"] == \
            pytest.approx(attrs["patch_size_level0"], abs=0.5)
        assert coords.dtype == np.int64 and patch_features.shape == (entry["n_patches"], 64)
        # CLAM (datasets/dataset_h5.py): features = torch.from_numpy(h5['features'][:]) straight into an nn.Linear
        with h5py.File(path, "r") as f:
            features = torch.from_numpy(f["features"][:])
        out = torch.nn.Linear(64, 8)(features)  # float16 here raised "expected ... Half but found Float"
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
        # CLAM (datasets/dataset_h5.py Whole_Slide_Bag_FP): reads coords.attrs['patch_level'] and ['patch_size'] and a
        # patch_size box at that level; our patch_size is TRIDENT's target size, so that box would be wrong: CLAM stops
        with h5py.File(path, "r") as f, pytest.raises(KeyError):
            f["coords"].attrs["patch_level"]


def _write_trident_file(path, coords, features, attrs, encoder="uni_v1", barcodes=None):
    """As TRIDENT's save_h5 writes features_<encoder>/<slide>.h5: row-chunked datasets, attrs on coords and features."""
    with h5py.File(path, "w") as f:
        for key, val in (("features", features), ("coords", coords)):
            ds = f.create_dataset(key, shape=val.shape, maxshape=(None,) + val.shape[1:], chunks=(1,) + val.shape[1:], dtype=val.dtype)
            ds[:] = val
        for k, v in attrs.items():
            f["coords"].attrs[k] = v
        f["features"].attrs.update({"name": path.stem, "savetodir": str(path.parent), "encoder": encoder})
        if barcodes is not None:
            f.create_dataset("barcodes", data=np.array(barcodes, dtype=object), dtype=h5py.string_dtype("utf-8"))


def test_trident_feature_files_are_joined_to_spots_trained_and_predicted_on(embedded, tmp_path, cmu_svs):
    from eca_bio.training.train import BioTrainConfig, train_all
    from eca_bio.model.expression import ModelConfig

    root, manifest = embedded
    trident = tmp_path / "features_uni_v1"
    trident.mkdir()
    rng = np.random.default_rng(0)
    expected = {}
    for entry in manifest["slides"]:
        ours = read_slide_h5(root / "pre" / entry["h5"])
        feats = rng.normal(size=(len(ours.coords) + 3, 24)).astype(np.float32)  # 3 extra tissue tiles: not spots
        coords = np.concatenate([ours.coords, ours.coords[:3] + 5000]).astype(np.int64)
        order = rng.permutation(len(coords))  # rows in TRIDENT's own order
        _write_trident_file(trident / f"{entry['slide_id']}.h5", coords[order], feats[order],
                            {k: v for k, v in ours.coords_attrs.items()})
        expected[entry["slide_id"]] = (ours.barcodes, feats[: len(ours.coords)])
    out = tmp_path / "pre_trident"
    m = run_preprocess(cfg_for(st_dir=str(root / "st"), features_dir=str(trident)), out, CPU, progress=False)
    assert m["encoder"]["name"] == "uni_v1" and m["feature_dim"] == 24
    for entry in m["slides"]:
        got = read_slide_h5(out / entry["h5"])
        barcodes, feats = expected[entry["slide_id"]]
        assert got.barcodes == barcodes  # every spot found its spot-centred row
        np.testing.assert_array_equal(got.features, feats)
        assert got.tokens is None and json.loads(json.dumps(got.attrs["encoder_config"]))["name"] == "uni_v1"
    cfg = BioTrainConfig(methods=["ridge", "eca"], transforms=["egn"], n_genes=5, k=2, epochs=1, patience=1, min_epochs=1,
                      batch_size=8, model=ModelConfig(hidden=8, heads=2), final_method="eca", threads=1)
    result = train_all(cfg, out, tmp_path / "train", CPU, progress=False)
    assert (tmp_path / "train" / "final" / "result.json").is_file() and result

    # predict on a real WSI from its TRIDENT file (tissue tiles, no barcodes); without the file: a one-line error
    import anndata as ad

    from eca_bio.predict import PredictConfig, predict_slides
    from eca_bio.features.slide_h5 import coords_attrs
    from eca_bio.inputs.slides import open_slide

    svs = cmu_svs
    reader = open_slide(svs)
    wsi_dir = tmp_path / "features_wsi"
    wsi_dir.mkdir()
    tiles = np.array([[x, y] for x in range(0, 1500, 500) for y in range(0, 1000, 500)], dtype=np.int64)
    _write_trident_file(wsi_dir / f"{svs.stem}.h5", tiles, rng.normal(size=(len(tiles), 24)).astype(np.float32),
                        coords_attrs(svs.stem, 224, 448, reader.mpp, *reader.dimensions))
    pred = predict_slides(tmp_path / "train", PredictConfig(slides=[str(svs)], features_dir=str(wsi_dir), export_images=False),
                          tmp_path / "pred", CPU, progress=False)
    adata = ad.read_h5ad(pred["slides"][svs.stem]["h5ad"])
    assert adata.shape == (len(tiles), 5) and np.isfinite(adata.X).all()
    np.testing.assert_allclose(adata.obsm["spatial"], tiles + 224)  # tile centres
    with pytest.raises(InputError, match="the model expects .*give features_dir"):
        predict_slides(tmp_path / "train", PredictConfig(slides=[str(svs)], export_images=False), tmp_path / "pred2", CPU,
                       progress=False)


def test_a_trident_file_that_misses_the_spots_is_refused(embedded, tmp_path):
    root, manifest = embedded
    trident = tmp_path / "features_x"
    trident.mkdir()
    for entry in manifest["slides"]:
        ours = read_slide_h5(root / "pre" / entry["h5"])
        _write_trident_file(trident / f"{entry['slide_id']}.h5", ours.coords + 777, ours.features, ours.coords_attrs)
    with pytest.raises(InputError, match=r"S0\.h5: its 36 rows do not cover the spots: 36 of 36 spots have no row"):
        run_preprocess(cfg_for(st_dir=str(root / "st"), features_dir=str(trident)), tmp_path / "p", CPU, progress=False)
    assert not (tmp_path / "p" / "manifest.json").exists()


@pytest.mark.parametrize("case, message", [
    ("nan_rows", r"S1\.h5: features contain NaN/inf in 2 row\(s\), e\.g\. rows \[\d+, \d+\]"),
    ("two_sizes", r"features_x: the feature files have different feature sizes \{'S0\.h5': 64, 'S1\.h5': 96, 'S2\.h5': 64\}"),
    ("other_encoder", r"features_encoder is 'conch' but S0\.h5 names 'uni_v1', S1\.h5 names 'uni_v1', S2\.h5 names 'uni_v1'"),
])
def test_feature_files_that_cannot_go_together_are_refused_at_preprocess(embedded, tmp_path, case, message):
    """NaN rows, two feature sizes, or a features_encoder other than the files' own: one line, nothing written."""
    root, manifest = embedded
    trident = tmp_path / "features_x"
    trident.mkdir()
    rng = np.random.default_rng(1)
    for entry in manifest["slides"]:
        ours = read_slide_h5(root / "pre" / entry["h5"])
        d = 96 if case == "two_sizes" and entry["slide_id"] == "S1" else 64
        feats = rng.normal(size=(len(ours.coords), d)).astype(np.float32)
        if case == "nan_rows" and entry["slide_id"] == "S1":
            feats[[3, 7]] = np.nan
        _write_trident_file(trident / f"{entry['slide_id']}.h5", ours.coords, feats, ours.coords_attrs)
    extra = {"features_encoder": "conch"} if case == "other_encoder" else {}
    from eca_core.errors import ECAError

    with pytest.raises(ECAError, match=message):
        run_preprocess(cfg_for(st_dir=str(root / "st"), features_dir=str(trident), **extra), tmp_path / "p", CPU, progress=False)
    assert not list((tmp_path / "p").rglob("*.h5")) and not (tmp_path / "p" / "manifest.json").exists()


def _grid(width: int, height: int, tile: int) -> np.ndarray:
    return np.array([(x, y) for y in range(0, height - tile + 1, tile) for x in range(0, width - tile + 1, tile)], np.int64)


def test_trident_grid_files_named_by_image_join_the_tile_under_each_spot(embedded, tmp_path):
    """TRIDENT's standard output: a tissue grid (here 256 px tiles), files named by the image stem."""
    import anndata as ad

    root, manifest = embedded
    trident = tmp_path / "20x_256px_0px_overlap" / "features_uni_v1"
    trident.mkdir(parents=True)
    for entry in manifest["slides"]:
        ours = read_slide_h5(root / "pre" / entry["h5"])
        w, h = int(ours.coords_attrs["level0_width"]), int(ours.coords_attrs["level0_height"])
        coords = _grid(w, h, 256)
        feats = np.random.default_rng(0).normal(size=(len(coords), 32)).astype(np.float32)
        attrs = dict(ours.coords_attrs) | {"patch_size_level0": 256, "patch_size": 256}
        _write_trident_file(trident / f"HE_{entry['slide_id']}.h5", coords, feats, attrs)  # TRIDENT: <image stem>.h5
    m = run_preprocess(cfg_for(st_dir=str(root / "st"), features_dir=str(trident)), tmp_path / "pre", CPU, progress=False)
    entry = m["slides"][0]
    got = read_slide_h5(tmp_path / "pre" / entry["h5"])
    adata = ad.read_h5ad(tmp_path / "pre" / entry["h5ad"])
    spots = np.asarray(adata.obsm["spatial"])
    assert entry["n_patches"] == 36 and got.features.shape == (36, 32)
    assert ((spots >= got.coords) & (spots < got.coords + 256)).all()  # each spot's tile contains its centre
    join = adata.uns["slide"]["feature_join"]
    assert join["how"] == "the grid tile containing the spot centre" and 0 < join["max_offset_px"] <= 128 * np.sqrt(2)
    assert entry["feature_join"]["how"] == join["how"]
    from eca_bio.report.evaluate import _feature_join_lines

    assert "- S0: the grid tile containing the spot centre (tiles of 256 level-0 px; spot centre to tile centre mean" \
        in _feature_join_lines(tmp_path / "pre")


def test_clam_files_without_attributes_take_the_patch_size_given(embedded, tmp_path):
    """CLAM's extract_features_fp -> save_hdf5: features + int32 coords and no attributes at all."""
    import h5py

    root, manifest = embedded
    clam = tmp_path / "h5_files"
    clam.mkdir()
    for entry in manifest["slides"]:
        ours = read_slide_h5(root / "pre" / entry["h5"])
        with h5py.File(clam / f"{entry['slide_id']}.h5", "w") as f:
            f["features"] = np.random.default_rng(1).normal(size=(len(ours.coords), 16)).astype(np.float32)
            f["coords"] = ours.coords.astype(np.int32)
    with pytest.raises(InputError, match=r"no patch size .*give features_patch_size"):
        run_preprocess(cfg_for(st_dir=str(root / "st"), features_dir=str(clam), features_encoder="resnet50_trunc"),
                       tmp_path / "p1", CPU, progress=False)
    size = int(read_slide_h5(root / "pre" / manifest["slides"][0]["h5"]).attrs["patch_size_px"])
    m = run_preprocess(cfg_for(st_dir=str(root / "st"), features_dir=str(clam), features_encoder="resnet50_trunc",
                               features_patch_size=size), tmp_path / "p2", CPU, progress=False)
    assert m["encoder"]["name"] == "resnet50_trunc" and all(s["n_patches"] == 36 for s in m["slides"])
