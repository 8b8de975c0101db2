"""Reliability round 3, bio: the surface added last turn (feature files, external tests, manifests, images) holds."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from eca_bio.features.preprocess import run_preprocess
from tests.bio.conftest import make_legacy_st
from tests.bio.features.test_preprocess import CPU, cfg_for


def test_an_edited_slide_file_is_recomputed_not_blessed(tmp_path):
    make_legacy_st(tmp_path / "st" / "S1", section="S1", n=4)
    out = tmp_path / "out"
    cfg = cfg_for(st_dir=str(tmp_path / "st"))
    run_preprocess(cfg, out, CPU, progress=False)
    h5 = out / "slides" / "S1.h5"
    with h5py.File(h5, "r") as f:
        original = f["features"][3, 5]
    with h5py.File(h5, "r+") as f:  # same size, one value changed in place
        f["features"][3, 5] = original + 100.0
    run_preprocess(cfg, out, CPU, progress=False)
    with h5py.File(h5, "r") as f:
        assert f["features"][3, 5] == pytest.approx(original, abs=1e-5)


@pytest.mark.parametrize("field, value, message", [
    ("slide_id", "../../../../X", r"slides\[1\]\.slide_id: '\.\./\.\./\.\./\.\./X' is not a plain name"),
    ("slide_id", "S0", r"slides\[1\]\.slide_id: 'S0' listed twice"),
    ("h5", "/etc/passwd", r"slides\[1\]\.h5: '/etc/passwd' is not a path inside"),
    ("h5ad", "../../elsewhere.h5ad", r"slides\[1\]\.h5ad: '\.\./\.\./elsewhere\.h5ad' is not a path inside"),
])
def test_manifest_ids_are_plain_names_and_files_stay_inside(tmp_path, field, value, message, capsys):
    import json

    from eca_bio.cli import main
    from tests.bio.fixtures_model import make_preprocess_dir

    pre = make_preprocess_dir(tmp_path / "pre", n_slides=3, n_spots=10, n_genes=6)
    manifest = json.loads((pre / "manifest.json").read_text())
    manifest["slides"][1][field] = value
    (pre / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    code = main(["train", "--preprocess", str(pre), "--out", str(tmp_path / "train"), "--methods", "ridge"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    import re

    assert re.search(message, err), err
    assert not (tmp_path.parent / "X").exists() and not list(tmp_path.parent.glob("X*"))


def test_evaluate_refuses_a_plan_whose_slide_id_leaves_the_folder(tmp_path):
    import json

    from eca_bio.report.evaluate import EvaluateConfig, evaluate_run
    from eca_bio.features.feature_set import DataError
    from eca_bio.training.train import train_all
    from tests.bio.fixtures_model import make_preprocess_dir
    from tests.bio.training.test_train import tiny_config

    pre = make_preprocess_dir(tmp_path / "pre", n_slides=3, n_spots=10, n_genes=6)
    train_all(tiny_config(methods=["ridge"], final_method=None, transforms=["egn"]), pre, tmp_path / "train", progress=False)
    plan_path = tmp_path / "train" / "folds.json"
    plan = json.loads(plan_path.read_text())
    plan["folds"][0]["test"] = ["../../escaped"]
    plan_path.write_text(json.dumps(plan))
    with pytest.raises(DataError, match=r"folds.json: fold 0 test slide: '\.\./\.\./escaped' is not a plain name"):
        evaluate_run(tmp_path / "train", tmp_path / "eval", EvaluateConfig(export_images=False), pre)
    assert not (tmp_path / "escaped.h5ad").exists() and not list(tmp_path.rglob("escaped*"))


def _png_claiming(path, width: int, height: int) -> None:
    """A small PNG whose header claims width x height (a decompression bomb's header, without its bytes)."""
    import io
    import struct
    import zlib

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 120, 160)).save(buf, format="PNG")
    raw = bytearray(buf.getvalue())
    ihdr = 8  # after the signature: length (4) + b"IHDR" (4) + data (13) + crc (4)
    raw[ihdr + 8:ihdr + 16] = struct.pack(">II", width, height)
    raw[ihdr + 21:ihdr + 25] = struct.pack(">I", zlib.crc32(bytes(raw[ihdr + 4:ihdr + 21])) & 0xFFFFFFFF)
    path.write_bytes(bytes(raw))


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path, capsys):
    import resource

    from eca_bio.cli import main
    from tests.bio.conftest import tissue_image

    bomb = tmp_path / "bomb.png"
    _png_claiming(bomb, 100_000, 30_000)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    capsys.readouterr()
    code = main(["preprocess", "--slides", str(bomb), "--mpp", "0.5", "--out", str(tmp_path / "o"),
                 "--encoder.name", "vit_tiny_patch16_224", "--no-encoder.pretrained", "--accelerator", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "bomb.png: 100000 x 30000 px = 3000 megapixels would be decoded whole (~9.0 GB), over the limit of 1000" in err
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000  # KiB: nothing near 9 GB was allocated
    small = tmp_path / "small.png"
    tissue_image(300, 200).save(small)
    from eca_bio.inputs.slides import SlideError, open_slide

    with pytest.raises(SlideError, match="over the limit of 0.01 for plain images"):
        open_slide(small, mpp=1.0, max_megapixels=0.01).thumbnail(64)
    assert open_slide(small, mpp=1.0).thumbnail(64).size[0] == 64  # under the default limit: read as before


def _feature_file(path, how: str, secret) -> None:
    """A TRIDENT-style feature file whose 'features' read other local bytes (``how``) or not (``plain``)."""
    import h5py

    n, d = 4, 8
    with h5py.File(path, "w") as f:
        f["coords"] = np.arange(n * 2, dtype=np.int64).reshape(n, 2)
        if how == "external_storage":
            f.create_dataset("features", shape=(n, d), dtype="<f4", external=[(str(secret), 0, n * d * 4)])
        elif how == "external_link":
            with h5py.File(secret.with_suffix(".h5"), "w") as g:
                g["data"] = np.ones((n, d), np.float32)
            f["features"] = h5py.ExternalLink(str(secret.with_suffix(".h5")), "/data")
        elif how == "virtual":
            with h5py.File(secret.with_suffix(".v.h5"), "w") as g:
                g["data"] = np.ones((n, d), np.float32)
            layout = h5py.VirtualLayout(shape=(n, d), dtype="<f4")
            layout[:] = h5py.VirtualSource(str(secret.with_suffix(".v.h5")), "data", shape=(n, d))
            f.create_virtual_dataset("features", layout)
        else:
            f["features"] = np.ones((n, d), np.float32)
        f["coords"].attrs["patch_size_level0"] = 64


@pytest.mark.parametrize("how, message", [
    ("external_storage", r"/features stores its data in external file\(s\) \['.*secret.bin'\]; HDF5 inputs must be self-contained"),
    ("external_link", r"/features is an external link to .*secret.h5:/data; HDF5 inputs must be self-contained"),
    ("virtual", r"/features is a virtual dataset \(reads other files\); HDF5 inputs must be self-contained"),
])
def test_feature_files_that_read_other_files_are_refused(tmp_path, how, message):
    from eca_bio.features.slide_h5 import FeatureFileError, read_slide_h5

    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"PRIVATE KEY " * 20)
    _feature_file(tmp_path / "ok.h5", "plain", secret)
    assert read_slide_h5(tmp_path / "ok.h5").features.shape == (4, 8)
    _feature_file(tmp_path / "S1.h5", how, secret)
    with pytest.raises(FeatureFileError, match=message):
        read_slide_h5(tmp_path / "S1.h5")


def test_a_10x_matrix_with_external_storage_is_refused(tmp_path):
    import shutil

    import h5py

    from eca_bio.inputs.st import STError, read_10x_h5
    from tests.bio.conftest import DATA

    real = DATA / "visium" / "scanpy_1.0.0"
    src = next(real.rglob("filtered_feature_bc_matrix.h5"), None) if real.is_dir() else None
    if src is None:
        pytest.skip("scanpy's Visium test folder is not present")
    h5 = tmp_path / "filtered_feature_bc_matrix.h5"
    shutil.copy(src, h5)
    assert read_10x_h5(h5).n_obs > 0
    secret = tmp_path / "secret.bin"
    with h5py.File(h5, "r+") as f:
        n = f["matrix/data"].shape[0]
        dtype = f["matrix/data"].dtype
        secret.write_bytes(b"\x01" * (n * dtype.itemsize))
        del f["matrix/data"]
        f.create_dataset("matrix/data", shape=(n,), dtype=dtype, external=[(str(secret), 0, n * dtype.itemsize)])
    with pytest.raises(STError, match=r"/matrix/data stores its data in external file"):
        read_10x_h5(h5)


def test_visium_hd_without_microns_per_pixel_uses_the_bin_size(tmp_path):
    """A 16 um bin is never read as a 55 um Visium spot: mpp = bin_size_um / the bin's side in pixels."""
    import json

    from eca_bio.inputs.st import STError, read_visium_hd
    from tests.bio.inputs.test_visium_hd import make_visium_hd

    root = make_visium_hd(tmp_path / "hd_run")
    sf_path = root / "binned_outputs" / "square_016um" / "spatial" / "scalefactors_json.json"
    sf = json.loads(sf_path.read_text())
    del sf["microns_per_pixel"]
    sf_path.write_text(json.dumps(sf))
    adata = read_visium_hd(root, bin_name="square_016um")
    st = adata.uns["st"]
    assert st["array_mpp"] == pytest.approx(0.25)  # 16 um / 64 px, not 55 um / 64 px = 0.859
    assert "bin_size_um 16 / spot_diameter_fullres 64.00 px (no microns_per_pixel" in st["array_mpp_source"]
    del sf["bin_size_um"]
    sf_path.write_text(json.dumps(sf))
    with pytest.raises(STError, match=r"scalefactors_json.json: a Visium HD bin folder without a positive 'bin_size_um'"):
        read_visium_hd(root, bin_name="square_016um")


def test_visium_hd_with_two_microscope_images_says_so(tmp_path):
    import shutil

    from eca_bio.inputs.st import STError, read_visium_hd
    from tests.bio.inputs.test_visium_hd import make_visium_hd

    root = make_visium_hd(tmp_path / "hd_run")
    shutil.copy(root / "microscope.tif", root / "microscope_10x.tif")
    with pytest.raises(STError, match=r"hd_run: 2 microscope images \(microscope\.tif, microscope_10x\.tif\); name the one "
                                      r"the run was aligned to with images: \{hd_run: PATH\}"):
        read_visium_hd(root, bin_name="square_016um")
    assert read_visium_hd(root, image=root / "microscope.tif", bin_name="square_016um").n_obs == 36


def test_an_implausible_hest_mpp_names_the_metadata_file(tmp_path):
    from eca_bio.features.preprocess import PreprocessError
    from tests.bio.inputs.test_hest import make_hest

    root = make_hest(tmp_path / "hest", mpp=25.0)
    with pytest.raises(PreprocessError, match=r"a 112 um patch is only 4 px at 25 um/px \(HEST metadata "
                                              r"pixel_size_um_estimated \(.*hest/metadata/TENX99\.json\)\)"):
        run_preprocess(cfg_for(st_dir=str(root)), tmp_path / "pre", CPU, progress=False)
