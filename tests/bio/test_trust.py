"""Trustworthy bio runs: no code from files, no stale results, sane microns per pixel, bad data refused at read time."""

from __future__ import annotations

import gzip
import logging
import os

import h5py
import pytest
import torch

from eca_bio.features.preprocess import PreprocessError, run_preprocess
from eca_bio.inputs.slides import SlideError, open_slide
from eca_bio.inputs.st import STError, read_legacy_st
from eca_bio.features.feature_set import DataError, FeatureSet
from eca_bio.model.checkpoint import load_trained
from eca_bio.training.train import train_all
from tests.bio.conftest import make_legacy_st, tissue_image
from tests.bio.fixtures_model import make_preprocess_dir
from tests.bio.features.test_preprocess import CPU, cfg_for
from tests.bio.training.test_train import tiny_config


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_crafted_model_file_is_refused_without_running(tmp_path, capsys):
    from eca_bio.cli import main as cli_main

    pre = make_preprocess_dir(tmp_path / "pre", n_slides=3, n_spots=12, n_genes=8)
    train_all(tiny_config(methods=["ridge"], final_method="eca"), pre, tmp_path / "train", progress=False)
    final = tmp_path / "train" / "final"
    assert load_trained(final).model is not None  # the real file loads with weights_only=True
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {}, "hparams": _Payload(marker)}, final / "model.pt")
    with pytest.raises(DataError, match=r"model\.pt: not a model written by eca-bio train, refused without running it"):
        load_trained(final)
    slide = tmp_path / "new.png"
    tissue_image(200, 200).save(slide)
    capsys.readouterr()
    assert cli_main(["predict", "--model", str(tmp_path / "train"), "--slides", str(slide), "--mpp", "1",
                     "--out", str(tmp_path / "pred")]) == 2
    err = capsys.readouterr().err
    assert "refused without running it" in err and err.count("\n") == 1
    assert not marker.exists()


def test_absurd_mpp_is_refused_and_an_explicit_mpp_wins_with_a_warning(tmp_path, cmu_svs, caplog):
    png = tmp_path / "s.png"
    tissue_image(300, 200).save(png)
    with pytest.raises(SlideError, match=r"s\.png: 1e\+06 um/px \(--mpp\) is outside the plausible range 0\.05-50"):
        run_preprocess(cfg_for(slides=[str(png)], mpp=1e6), tmp_path / "o", CPU, progress=False)
    with pytest.raises(PreprocessError, match=r"a 112 um patch is only 3 px at 40 um/px"):
        run_preprocess(cfg_for(slides=[str(png)], mpp=40.0), tmp_path / "o", CPU, progress=False)
    assert not (tmp_path / "o").exists()
    assert open_slide(png, mpp=40.0, allow_unusual_mpp=True).mpp == 40.0  # an explicit override still works

    with caplog.at_level(logging.WARNING):
        s = open_slide(cmu_svs, mpp=0.25)
    assert s.mpp == 0.25 and s.mpp_source == "--mpp"
    assert "using the given mpp 0.25 um/px; the slide's metadata says 0.499 um/px" in caplog.text
    assert open_slide(cmu_svs).mpp == pytest.approx(0.499) and open_slide(cmu_svs, fallback_mpp=2.0).mpp_source == "slide metadata"


def test_legacy_st_mpp_ignores_spots_outside_the_image(tmp_path):
    folder = make_legacy_st(tmp_path / "S1", n=9, spacing_px=100.0, origin=20.0, image_size=(800, 800))
    sel = folder / "S1_selection.tsv"
    lines = sel.read_text().splitlines()
    for i in range(1, 6):  # 5 of 81 spots recorded at off-image pixel positions (a mis-registered corner)
        cols = lines[i].split("\t")
        cols[4], cols[5] = f"{1500 + 37 * i:.2f}", f"{1900 + 11 * i:.2f}"
        lines[i] = "\t".join(cols)
    sel.write_text("\n".join(lines) + "\n")
    adata = read_legacy_st(folder)
    assert adata.uns["st"]["array_mpp"] == pytest.approx(2.0, rel=1e-6)  # 200 um / 100 px, from the 76 in-image spots


@pytest.mark.parametrize("value, kind", [("nan", "NaN"), ("inf", "infinite"), ("-3", "negative")])
def test_bad_counts_are_refused_when_read(tmp_path, value, kind):
    folder = make_legacy_st(tmp_path / "S1", n=4)
    path = folder / "S1.tsv.gz"
    with gzip.open(path, "rt") as fh:
        lines = fh.read().splitlines()
    cols = lines[3].split("\t")
    cols[5] = value
    lines[3] = "\t".join(cols)
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    with pytest.raises(STError, match=rf"S1\.tsv\.gz: 1 count\(s\) are NaN, infinite or negative; first: spot '{cols[0]}', "
                                      rf"gene 'GENE4' = .* \({kind}\)"):
        run_preprocess(cfg_for(st_dir=str(tmp_path)), tmp_path / "o", CPU, progress=False)
    assert not (tmp_path / "o").exists()


def test_missing_pixel_coordinate_names_the_file_and_spot(tmp_path):
    folder = make_legacy_st(tmp_path / "S1", n=4)
    sel = folder / "S1_selection.tsv"
    lines = sel.read_text().splitlines()
    cols = lines[2].split("\t")
    cols[4] = "NaN"
    lines[2] = "\t".join(cols)
    sel.write_text("\n".join(lines) + "\n")
    with pytest.raises(STError, match=r"S1_selection\.tsv: 1 spot\(s\) have missing or non-numeric pixel coordinates; "
                                      r"first: spot '1x2'"):
        read_legacy_st(folder)


def test_truncated_embeddings_file_is_named(tmp_path):
    pre = make_preprocess_dir(tmp_path / "pre", n_slides=3, n_spots=10)
    h5 = pre / "slides" / "S1.h5"
    h5.write_bytes(h5.read_bytes()[:1000])
    from eca_bio.features.slide_h5 import FeatureFileError

    with pytest.raises(FeatureFileError, match=r"S1\.h5: not a readable HDF5 file \(truncated or corrupt\?\)"):
        FeatureSet(pre).slides()


def test_changed_inputs_and_outputs_are_redone_per_slide(tmp_path):
    make_legacy_st(tmp_path / "st" / "S1", section="S1", n=4)
    make_legacy_st(tmp_path / "st" / "S2", section="S2", n=4)
    out = tmp_path / "out"
    cfg = cfg_for(st_dir=str(tmp_path / "st"))
    run_preprocess(cfg, out, CPU, progress=False)
    slides = out / "slides"

    def stamps() -> dict[str, int]:
        return {p.name: p.stat().st_mtime_ns for p in sorted(slides.glob("S*.h5*"))}

    before = stamps()
    run_preprocess(cfg, out, CPU, progress=False)
    assert stamps() == before  # nothing changed: nothing rewritten

    image = tmp_path / "st" / "S1" / "HE_S1.jpg"  # the same-size image, other pixels
    raw = bytearray(image.read_bytes())
    raw[-200:-100] = bytes(100)
    image.write_bytes(bytes(raw))
    run_preprocess(cfg, out, CPU, progress=False)
    after = stamps()
    assert after["S1.h5"] != before["S1.h5"] and after["S2.h5"] == before["S2.h5"]

    counts = tmp_path / "st" / "S2" / "S2.tsv.gz"  # a corrected counts table: S2's expression file is rewritten
    with gzip.open(counts, "rt") as fh:
        text = fh.read()
    with gzip.open(counts, "wt") as fh:
        fh.write(text.replace("\t1\t", "\t2\t", 1))
    before = stamps()
    run_preprocess(cfg, out, CPU, progress=False)
    assert stamps()["S2.h5ad"] != before["S2.h5ad"]

    (slides / "S1.h5").write_bytes((slides / "S1.h5").read_bytes()[:500])  # a truncated output
    (slides / "S2.thumb.png").unlink()  # a deleted output
    manifest = run_preprocess(cfg, out, CPU, progress=False)
    with h5py.File(slides / "S1.h5") as f:
        assert f["features"].shape[0] == 16
    assert (slides / "S2.thumb.png").is_file() and [s["n_patches"] for s in manifest["slides"]] == [16, 16]


def test_train_removes_what_a_killed_run_left(tmp_path):
    pre = make_preprocess_dir(tmp_path / "pre", n_slides=3, n_spots=10, n_genes=6)
    stale = tmp_path / "train" / "egn" / "fold_0" / ".ridge.tmp-k1ll3d"
    stale.mkdir(parents=True)
    (stale / "best.ckpt").write_bytes(b"half a checkpoint")
    train_all(tiny_config(methods=["ridge"], final_method=None, transforms=["egn"]), pre, tmp_path / "train", progress=False)
    assert not stale.exists()
    assert not list((tmp_path / "train").rglob(".*tmp-*"))


def test_skip_errors_reports_an_unreadable_slide_and_goes_on(tmp_path, cmu_svs):
    broken = tmp_path / "broken.svs"
    broken.write_bytes(cmu_svs.read_bytes()[:5000])  # a truncated download
    good = tmp_path / "good.png"
    tissue_image(300, 200).save(good)
    with pytest.raises(SlideError, match="broken.svs"):
        run_preprocess(cfg_for(slides=[str(broken), str(good)], mpp=1.0), tmp_path / "strict", CPU, progress=False)
    manifest = run_preprocess(cfg_for(slides=[str(broken), str(good)], mpp=1.0, skip_errors=True), tmp_path / "cohort", CPU,
                              progress=False)
    assert [s["slide_id"] for s in manifest["slides"]] == ["good"]
    assert manifest["skipped"][0]["slide"] == str(broken) and "broken.svs" in manifest["skipped"][0]["error"]
