"""run_preprocess / eca-bio preprocess / the pipeline stage: contract layout, resume, bad input with no output."""

from __future__ import annotations

import json
import os
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pytest

import eca_bio.features.embed as embed_mod
from eca_bio.features.preprocess import PreprocessConfig, PreprocessError, config_from_params, run_preprocess
from eca_bio.inputs.slides import SlideError
from eca_bio.inputs.st import STError

from tests.bio.conftest import HER2ST_SPOTS, TINY_ENCODER, make_legacy_st, make_visium, tissue_image

CPU = {"accelerator": "cpu", "devices": 1}


def cfg_for(**over) -> PreprocessConfig:
    params = {"patch_px": 32, "batch_size": 16, "num_workers": 0, "encoder": TINY_ENCODER, **over}
    return config_from_params(params)


@pytest.fixture(scope="module")
def her2st_run(tmp_path_factory, her2st, cmu_svs):
    out = tmp_path_factory.mktemp("pp") / "out"
    cfg = cfg_for(st_dir=str(her2st), sections=["C3"], slides=[str(cmu_svs)], token_grid=1, num_workers=2)
    return out, run_preprocess(cfg, out, CPU, progress=False)


def test_her2st_and_svs_files_follow_the_contract(her2st_run, her2st, cmu_svs):
    out, manifest = her2st_run
    assert json.loads((out / "manifest.json").read_text()) == json.loads(json.dumps(manifest))
    assert manifest["feature_dim"] == 64 and manifest["encoder"]["name"] == TINY_ENCODER["name"]
    assert manifest["params"]["patch_px"] == 32
    st, wsi = manifest["slides"]
    assert st["slide_id"] == "C3" and st["has_expression"] and st["h5ad"] == "slides/C3.h5ad"
    assert st["n_patches"] == HER2ST_SPOTS["C3"] and 0.68 < st["mpp"] < 0.70
    assert len(st["excluded"]["no_counts"]) == 2
    assert wsi["slide_id"] == "cmu_small_region" and wsi["h5ad"] is None and not wsi["has_expression"]
    assert wsi["mpp"] == pytest.approx(0.499) and wsi["image"] == str(cmu_svs.resolve())
    for entry in manifest["slides"]:
        with h5py.File(out / entry["h5"]) as f:
            n = entry["n_patches"]
            assert f["coords"].shape == (n, 2) and f["coords"].dtype == np.int64
            assert f["features"].shape == (n, 64) and f["features"].dtype == np.float32
            assert f["tokens"].shape == (n, 1, 64) and f["tokens"].dtype == np.float16
            c = f["coords"].attrs  # TRIDENT's coords attributes: its slide encoders read patch_size_level0
            assert c["patch_size_level0"] == entry["patch_size_px"] and c["patch_size"] == 32 and c["name"] == entry["slide_id"]
            assert c["level0_magnification"] == pytest.approx(10 / entry["mpp"], abs=1e-3)
            assert c["target_magnification"] == pytest.approx(c["level0_magnification"] * 32 / entry["patch_size_px"], abs=1e-3)
            assert (c["level0_width"], c["level0_height"]) == tuple(entry["dimensions"]) and c["overlap"] == 0
            assert np.isfinite(f["features"][()]).all() and f["features"][()].std() > 0
            a = f.attrs
            assert a["mpp"] == pytest.approx(entry["mpp"]) and a["patch_size_px"] == entry["patch_size_px"]
            assert a["patch_size_um"] == 112.0 and a["encoder"] == TINY_ENCODER["name"] and a["feature_dim"] == 64
            assert json.loads(a["encoder_config"])["kwargs"] == TINY_ENCODER["kwargs"]
            assert a["slide"] == entry["image"] and a["slide_id"] == entry["slide_id"] and len(a["params_hash"]) == 64
            assert round(112.0 / a["mpp"]) == a["patch_size_px"]
        assert (out / entry["thumbnail"]).stat().st_size > 1000
    with h5py.File(out / "slides/C3.h5") as f:
        barcodes = [b.decode() for b in f["barcodes"][()]]
        coords, size = f["coords"][()], int(f.attrs["patch_size_px"])
    adata = ad.read_h5ad(out / "slides/C3.h5ad")
    assert list(adata.obs_names) == barcodes and adata.n_obs == 180 and adata.n_vars > 15000
    np.testing.assert_allclose(coords + size / 2, adata.obsm["spatial"], atol=0.5)  # patch centred on the spot
    assert float(adata.X.sum()) == pytest.approx(float(np.round(adata.X.sum())))  # raw integer counts
    assert adata.uns["slide"]["inputs"]["image"] == Path(st["image"]).name and adata.uns["slide"]["mpp"] == pytest.approx(st["mpp"])
    assert len(adata.uns["slide"]["input_sha256"]["counts"]) == 64
    host = str(Path(st["image"]).parent)  # no host path anywhere in the file's uns
    assert host not in repr(dict(adata.uns["slide"])) and host not in repr(dict(adata.uns["spatial"]["C3"]["metadata"]))


def test_rerun_skips_complete_slides(her2st_run, her2st, cmu_svs):
    out, _ = her2st_run
    before = {p.name: p.stat().st_mtime_ns for p in (out / "slides").iterdir()}
    cfg = cfg_for(st_dir=str(her2st), sections=["C3"], slides=[str(cmu_svs)], token_grid=1, batch_size=7)
    run_preprocess(cfg, out, CPU, progress=False)  # batch size / workers do not change the files
    assert {p.name: p.stat().st_mtime_ns for p in (out / "slides").iterdir()} == before


def _two_slide_inputs(tmp_path: Path) -> dict:
    make_legacy_st(tmp_path / "st" / "S1", section="S1", n=4)
    make_legacy_st(tmp_path / "st" / "S2", section="S2", n=5)
    return {"st_dir": str(tmp_path / "st")}


def test_killed_midway_run_resumes_to_identical_files(tmp_path, monkeypatch, cmu_svs):
    params = {**_two_slide_inputs(tmp_path), "slides": [str(cmu_svs)]}
    reference = tmp_path / "reference"
    run_preprocess(cfg_for(**params), reference, CPU, progress=False)

    resumed = tmp_path / "resumed"
    finish = embed_mod.SlideH5Writer._finish

    def finish_then_die(self, job_idx):
        finish(self, job_idx)
        raise KeyboardInterrupt("killed after the first slide")

    monkeypatch.setattr(embed_mod.SlideH5Writer, "_finish", finish_then_die)
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        run_preprocess(cfg_for(**params), resumed, CPU, progress=False)
    monkeypatch.setattr(embed_mod.SlideH5Writer, "_finish", finish)
    h5s = sorted(p.name for p in (resumed / "slides").glob("*.h5"))
    assert len(h5s) == 1 and not (resumed / "manifest.json").exists()
    assert not [p for p in (resumed / "slides").iterdir() if ".tmp-" in p.name]  # no half-written file
    first = resumed / "slides" / h5s[0]
    stamp = (first.stat().st_ino, first.stat().st_mtime_ns)

    embedded = []
    real_embed = embed_mod.embed_slides

    def spy(jobs, *a, **k):
        embedded.extend(j.slide_id for j in jobs)
        return real_embed(jobs, *a, **k)

    monkeypatch.setattr(embed_mod, "embed_slides", spy)
    manifest = run_preprocess(cfg_for(**params), resumed, CPU, progress=False)
    assert h5s[0][:-3] not in embedded and len(embedded) == 2       # only the unfinished slides were embedded
    assert (first.stat().st_ino, first.stat().st_mtime_ns) == stamp   # the finished slide was not rewritten
    for entry in manifest["slides"]:
        assert (resumed / entry["h5"]).read_bytes() == (reference / entry["h5"]).read_bytes(), entry["slide_id"]
    ref_manifest = json.loads((reference / "manifest.json").read_text())
    assert json.loads((resumed / "manifest.json").read_text())["slides"] == ref_manifest["slides"]


def test_leftovers_of_a_hard_kill_are_cleaned_and_blank_slides_give_empty_files(tmp_path):
    blank = tmp_path / "blank.png"
    from PIL import Image

    Image.new("RGB", (400, 300), (242, 242, 242)).save(blank)
    slides = tmp_path / "out" / "slides"
    slides.mkdir(parents=True)
    stale = slides / ".blank.h5.tmp-abc123.h5"
    stale.write_bytes(b"half a file")
    os.utime(stale, (1_000_000_000, 1_000_000_000))
    manifest = run_preprocess(cfg_for(slides=[str(blank)], mpp=0.5), tmp_path / "out", CPU, progress=False)
    assert not stale.exists()
    assert manifest["slides"][0]["n_patches"] == 0
    with h5py.File(slides / "blank.h5") as f:
        assert f["coords"].shape == (0, 2) and f["features"].shape == (0, 64) and f["tokens"].shape == (0, 4, 64)


def test_changed_parameters_recompute(tmp_path):
    params = _two_slide_inputs(tmp_path)
    out = tmp_path / "out"
    run_preprocess(cfg_for(**params), out, CPU, progress=False)
    with h5py.File(out / "slides/S1.h5") as f:
        assert f["tokens"].shape[1] == 4
    run_preprocess(cfg_for(token_grid=1, **params), out, CPU, progress=False)
    with h5py.File(out / "slides/S1.h5") as f:
        assert f["tokens"].shape[1] == 1


def test_visium_folder_end_to_end(tmp_path):
    make_visium(tmp_path / "visium" / "V1")
    out = tmp_path / "out"
    manifest = run_preprocess(cfg_for(st_dir=str(tmp_path / "visium"), st_format="visium"), out, CPU, progress=False)
    (entry,) = manifest["slides"]
    assert entry["slide_id"] == "V1" and entry["n_patches"] == 18 and entry["mpp"] == pytest.approx(1.0)
    assert entry["excluded"]["not_in_tissue"] == ["AAAC0000-1"] and entry["excluded"]["zero_counts"] == ["AAAC0001-1"]
    adata = ad.read_h5ad(out / entry["h5ad"])
    with h5py.File(out / entry["h5"]) as f:
        assert [b.decode() for b in f["barcodes"][()]] == list(adata.obs_names)
        assert f.attrs["patch_size_px"] == 112


def test_visium_image_given_explicitly(tmp_path):
    folder = make_visium(tmp_path / "visium" / "V1")
    moved = tmp_path / "elsewhere.tif"
    (folder / "tissue_fullres.tif").rename(moved)
    hires = folder / "spatial" / "tissue_hires_image.png"
    if hires.exists():  # without the full-resolution image the hires PNG is tiled (tests/bio/test_visium_real.py) ...
        hires.rename(tmp_path / "hires.png")
    (folder / "spatial" / "tissue_lowres_image.png").unlink(missing_ok=True)
    with pytest.raises(STError, match="no full-resolution image .* and no spatial/tissue_hires_image.png"):
        run_preprocess(cfg_for(st_dir=str(folder)), tmp_path / "a", CPU, progress=False)  # ... without any: an error
    with pytest.raises(PreprocessError, match="V9"):
        run_preprocess(cfg_for(st_dir=str(folder), images={"V9": str(moved)}), tmp_path / "b", CPU, progress=False)
    manifest = run_preprocess(cfg_for(st_dir=str(folder), images={"V1": str(moved)}), tmp_path / "c", CPU, progress=False)
    assert manifest["slides"][0]["image"] == str(moved.resolve())


def _assert_nothing_written(out: Path) -> None:
    assert not out.exists() or not any(out.rglob("*")), sorted(map(str, out.rglob("*")))


def test_bad_input_truncated_slide(tmp_path, her2st):
    bad = tmp_path / "cut.jpg"
    tissue_image(600, 600).save(bad, quality=95)
    bad.write_bytes(bad.read_bytes()[:4000])
    out = tmp_path / "out"
    with pytest.raises(SlideError) as err:
        run_preprocess(cfg_for(st_dir=str(her2st), sections=["C2"], slides=[str(bad)], mpp=0.5), out, CPU, progress=False)
    assert str(bad) in str(err.value)
    _assert_nothing_written(out)


def test_bad_input_unreadable_slide(tmp_path):
    bad = tmp_path / "broken.svs"
    bad.write_bytes(os.urandom(4096))
    out = tmp_path / "out"
    with pytest.raises(SlideError, match="broken.svs"):
        run_preprocess(cfg_for(slides=[str(bad)], mpp=0.5), out, CPU, progress=False)
    _assert_nothing_written(out)


def test_bad_input_slide_without_mpp(tmp_path, cmu_svs):
    plain = tmp_path / "plain.png"
    tissue_image(300, 300).save(plain)
    out = tmp_path / "out"
    with pytest.raises(SlideError) as err:
        run_preprocess(cfg_for(slides=[str(cmu_svs), str(plain)]), out, CPU, progress=False)
    assert str(plain) in str(err.value) and "--mpp" in str(err.value)
    _assert_nothing_written(out)


def test_bad_input_spots_outside_the_image(tmp_path):
    make_legacy_st(tmp_path / "st" / "S1", section="S1", shift=(5000.0, 5000.0))
    out = tmp_path / "out"
    with pytest.raises(STError) as err:
        run_preprocess(cfg_for(st_dir=str(tmp_path / "st")), out, CPU, progress=False)
    assert "S1_selection.tsv" in str(err.value) and "outside the image" in str(err.value)
    _assert_nothing_written(out)


def test_bad_input_counts_and_spots_do_not_match(tmp_path):
    make_legacy_st(tmp_path / "st" / "S1", section="S1")
    make_legacy_st(tmp_path / "st" / "S2", section="S2", extra_rows=3)
    out = tmp_path / "out"
    with pytest.raises(STError) as err:
        run_preprocess(cfg_for(st_dir=str(tmp_path / "st")), out, CPU, progress=False)
    assert "S2.tsv.gz" in str(err.value) and "S2_selection.tsv" in str(err.value)
    _assert_nothing_written(out)  # S1 was fine but nothing is written before every input is checked


def test_bad_input_not_an_st_directory(tmp_path):
    (tmp_path / "photos").mkdir()
    tissue_image(50, 50).save(tmp_path / "photos" / "a.jpg")
    out = tmp_path / "out"
    with pytest.raises(STError) as err:
        run_preprocess(cfg_for(st_dir=str(tmp_path / "photos")), out, CPU, progress=False)
    assert str(tmp_path / "photos") in str(err.value) and "legacy ST" in str(err.value)
    _assert_nothing_written(out)


def test_config_errors():
    with pytest.raises(ValueError, match="patch_size_um"):
        config_from_params({"patch_size_um": 3})
    with pytest.raises(PreprocessError, match="nothing to do"):
        run_preprocess(PreprocessConfig(), Path("/nonexistent/out"), progress=False)


def test_cli_and_pipeline_stage(tmp_path, capsys):
    from eca_bio.cli import main
    from eca_core.runner.pipeline import PipelineSpec, run_pipeline

    params = _two_slide_inputs(tmp_path)
    kwargs = json.dumps(TINY_ENCODER["kwargs"])
    argv = ["preprocess", "--out", str(tmp_path / "cli"), "--st-dir", params["st_dir"], "--patch-px", "32",
            "--encoder.name", TINY_ENCODER["name"], "--no-encoder.pretrained", "--encoder.kwargs", kwargs, "--token-grid", "1",
            "--accelerator", "cpu", "--devices", "1", "--num-workers", "0", "--no-progress"]
    assert main(argv) == 0
    assert "2 slide(s), 41 patches, feature_dim 64" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "cli" / "manifest.json").read_text())
    assert [s["slide_id"] for s in manifest["slides"]] == ["S1", "S2"] and manifest["params"]["token_grid"] == 1

    assert main(["preprocess", "--out", str(tmp_path / "bad"), "--slides", str(tmp_path / "missing.svs")]) == 2
    assert "missing.svs" in capsys.readouterr().err

    spec = PipelineSpec.from_dict({"name": "t", "stages_module": "eca_bio.stages", "run_dir": str(tmp_path / "run"),
                                   "stages": {"preprocess": {**params, "patch_px": 32, "num_workers": 0,
                                                             "encoder": TINY_ENCODER}}})
    records = run_pipeline(spec, runtime=CPU, log=lambda *_: None)
    assert {k: records["preprocess"]["summary"][k] for k in ("slides", "patches", "feature_dim")} == \
        {"slides": 2, "patches": 41, "feature_dim": 64}
    assert (tmp_path / "run" / "preprocess" / "manifest.json").exists()
    logs = []
    run_pipeline(spec, runtime=CPU, log=logs.append)
    assert any("up to date" in line for line in logs)


def test_cli_with_the_pipeline_yaml_as_config(tmp_path, monkeypatch, her2st, capsys):
    from eca_bio.cli import main

    monkeypatch.setenv("HER2ST", str(her2st))
    yaml_path = Path(__file__).resolve().parents[3] / "pipelines" / "bio_preprocess_her2st.yaml"
    argv = ["preprocess", "--config", str(yaml_path), "--out", str(tmp_path / "o"), "--sections", "C2", "--patch-px", "32",
            "--encoder.name", TINY_ENCODER["name"], "--encoder.kwargs", json.dumps(TINY_ENCODER["kwargs"]), "--token-grid", "2",
            "--accelerator", "cpu", "--devices", "1", "--num-workers", "1", "--no-progress"]
    assert main(argv) == 0
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["params"]["st_dir"] == str(her2st) and manifest["params"]["token_grid"] == 2
    assert manifest["encoder"]["pretrained"] is False  # from the YAML
    assert [(s["slide_id"], s["n_patches"]) for s in manifest["slides"]] == [("C2", HER2ST_SPOTS["C2"])]


def test_pipeline_yaml_parses():
    from eca_core.runner.pipeline import PipelineSpec

    spec = PipelineSpec.from_yaml(Path(__file__).resolve().parents[3] / "pipelines" / "bio_preprocess_her2st.yaml")
    cfg = config_from_params(spec.stages["preprocess"])
    assert cfg.st_format == "legacy_st" and cfg.encoder.name == "vit_small_patch16_224" and cfg.token_grid == 4
