"""Spatial-transcriptomics loaders on the real her2st sections and on tiny legacy-ST / Visium folders."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from eca_bio.inputs.st import STError, detect_layout, exclude_outside_image, find_sections, read_10x_h5, read_legacy_st, read_section, read_visium

from tests.bio.conftest import HER2ST_SPOTS, make_legacy_st, make_visium


def test_her2st_sections_load_with_the_selected_spot_counts(her2st):
    sections = find_sections(her2st)
    assert [s.section_id for s in sections] == ["B4", "C2", "C3", "C4"]
    assert {s.format for s in sections} == {"legacy_st"}
    for sec in sections:
        adata = read_section(sec)
        assert adata.n_obs == HER2ST_SPOTS[sec.section_id]
        assert adata.n_vars > 15000
        sel = pd.read_csv(sec.path / f"{sec.section_id}_selection.tsv", sep="\t")
        sel.index = sel["x"].astype(str) + "x" + sel["y"].astype(str)
        # obsm['spatial'] is exactly the selection file's full-resolution pixel (x, y)
        np.testing.assert_array_equal(adata.obsm["spatial"], sel.loc[adata.obs_names, ["pixel_x", "pixel_y"]].to_numpy())
        counts = pd.read_csv(sec.path / f"{sec.section_id}.tsv.gz", sep="\t", index_col=0)
        np.testing.assert_array_equal(adata.X[:3].toarray(), counts.loc[adata.obs_names[:3]].to_numpy())
        # the selection spots without a counts row are reported, not silently dropped
        excluded = adata.uns["st"]["excluded"]
        assert len(excluded["no_counts"]) == len(sel) - adata.n_obs
        # mpp from the 200 um array spacing: ~290.8 px per step -> ~0.688 um/px
        assert 0.68 < adata.uns["st"]["array_mpp"] < 0.70


def test_subset_of_sections_and_unknown_section(her2st):
    assert [s.section_id for s in find_sections(her2st, sections=["C3", "B4"])] == ["B4", "C3"]
    with pytest.raises(STError, match="Z9"):
        find_sections(her2st, sections=["Z9"])


def test_legacy_mpp_follows_the_array_spacing(tmp_path):
    make_legacy_st(tmp_path / "S1", spacing_px=80.0)
    adata = read_legacy_st(tmp_path / "S1")
    assert adata.uns["st"]["array_mpp"] == pytest.approx(200.0 / 80.0, rel=1e-3)
    assert adata.n_obs == 25


def test_zero_count_spots_are_excluded_and_reported(tmp_path):
    make_legacy_st(tmp_path / "S1", zero_spot=True)
    adata = read_legacy_st(tmp_path / "S1")
    assert adata.n_obs == 24
    assert adata.uns["st"]["excluded"]["zero_counts"] == ["1x1"]
    assert "1x1" not in adata.obs_names


def test_counts_and_spot_files_that_do_not_match(tmp_path):
    make_legacy_st(tmp_path / "S1", extra_rows=2)
    with pytest.raises(STError) as err:
        read_legacy_st(tmp_path / "S1")
    msg = str(err.value)
    assert "S1.tsv.gz" in msg and "S1_selection.tsv" in msg and "do not match" in msg


def test_spot_coordinates_outside_the_image(tmp_path):
    make_legacy_st(tmp_path / "S1", shift=(2000.0, 0.0))
    adata = read_legacy_st(tmp_path / "S1")
    with pytest.raises(STError) as err:
        exclude_outside_image(adata, 800, 800)
    assert "S1_selection.tsv" in str(err.value) and "outside" in str(err.value)


def test_a_few_spots_outside_the_image_are_excluded_and_reported(tmp_path):
    make_legacy_st(tmp_path / "S1", n=5, origin=150.0, spacing_px=150.0, image_size=(800, 800))
    adata = read_legacy_st(tmp_path / "S1")  # last column/row at 750 px: inside; shrink the image instead
    outside = exclude_outside_image(adata, 740, 800, max_outside_fraction=0.25)
    assert sorted(outside) == [f"5x{y}" for y in range(1, 6)]
    assert adata.n_obs == 20 and adata.uns["st"]["excluded"]["outside_image"] == outside


def test_directory_that_is_not_a_visium_or_st_layout(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    with pytest.raises(STError) as err:
        find_sections(tmp_path / "junk")
    assert str(tmp_path / "junk") in str(err.value) and "Visium" in str(err.value)
    assert detect_layout(tmp_path / "junk") is None


def test_legacy_layout_with_two_images_needs_a_choice(tmp_path):
    make_legacy_st(tmp_path / "S1", image_name="scan_a.jpg")
    (tmp_path / "S1" / "scan_b.png").write_bytes((tmp_path / "S1" / "scan_a.jpg").read_bytes())
    with pytest.raises(STError, match="several candidate"):
        read_legacy_st(tmp_path / "S1")
    adata = read_legacy_st(tmp_path / "S1", image=tmp_path / "S1" / "scan_b.png")
    assert adata.uns["st"]["image"].endswith("scan_b.png")


@pytest.mark.parametrize("header", [True, False])
def test_visium_folder_loads_like_scanpy(tmp_path, header):
    import scanpy as sc

    folder = make_visium(tmp_path / "V1", header=header)
    assert detect_layout(folder) == "visium"
    adata = read_visium(folder)
    ref = sc.read_10x_h5(folder / "filtered_feature_bc_matrix.h5")
    ref.var_names_make_unique()
    # barcode AAAC0000-1 is not in tissue, AAAC0001-1 has zero counts: both reported, not silently dropped
    excluded = adata.uns["st"]["excluded"]
    assert excluded["not_in_tissue"] == ["AAAC0000-1"] and excluded["zero_counts"] == ["AAAC0001-1"]
    assert adata.n_obs == 18
    assert list(adata.var_names) == list(ref.var_names) and "G0-1" in adata.var_names
    np.testing.assert_array_equal(adata.X.toarray(), ref[adata.obs_names].X.toarray())
    # obsm['spatial'] = (pxl_col_in_fullres, pxl_row_in_fullres) as scanpy.read_visium stores it
    i = list(adata.obs_names).index("AAAC0102-1")
    np.testing.assert_array_equal(adata.obsm["spatial"][i], [100 + 2 * 100 + 50, 120 + 100])
    assert adata.uns["st"]["array_mpp"] == pytest.approx(55.0 / 55.0)
    lib = adata.uns["spatial"]["V1"]
    assert lib["scalefactors"]["tissue_hires_scalef"] == 0.5 and lib["images"]["hires"].shape == (280, 320, 3)
    assert adata.uns["st"]["image"].endswith("tissue_fullres.tif")


def test_visium_missing_positions_is_a_clear_error(tmp_path):
    folder = make_visium(tmp_path / "V1")
    (folder / "spatial" / "tissue_positions.csv").unlink()
    with pytest.raises(STError, match="tissue_positions"):
        read_visium(folder)


def test_visium_broken_h5(tmp_path):
    folder = make_visium(tmp_path / "V1")
    (folder / "filtered_feature_bc_matrix.h5").write_bytes(b"not hdf5")
    with pytest.raises(STError, match="filtered_feature_bc_matrix.h5"):
        read_10x_h5(folder / "filtered_feature_bc_matrix.h5")


def test_every_layout_has_a_message_when_a_folder_is_not_one(tmp_path):
    import typing

    from eca_bio.configs import LAYOUT_NAMES, PredictConfig, PreprocessConfig
    from eca_bio.inputs.st import LAYOUTS

    assert set(LAYOUT_NAMES) == set(LAYOUTS)  # the light configs' names are the table's
    for cfg in (PreprocessConfig, PredictConfig):
        assert set(typing.get_args(typing.get_type_hints(cfg)["st_format"])) == {"auto", *LAYOUTS}

    (tmp_path / "empty").mkdir()
    for fmt in (*LAYOUTS, "auto"):
        with pytest.raises(STError, match="not a .*folder"):  # visium_hd was a KeyError ('error: visium_hd')
            find_sections(tmp_path / "empty", fmt)
