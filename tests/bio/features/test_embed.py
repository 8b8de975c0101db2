"""Lightning predict + HDF5 writer: per-slide batches, rows equal a direct encoder forward, no partial files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from eca_bio.features.embed import SlideBatchSampler, SlideJob, embed_slides
from eca_bio.features.slide_h5 import coords_attrs
from eca_bio.features.encoders import EncoderConfig, build_encoder
from eca_bio.inputs.slides import open_slide
from eca_bio.inputs.st import read_legacy_st
from eca_bio.inputs.tiling import patch_size_px, spot_patches

from tests.bio.conftest import TINY_ENCODER, make_legacy_st


def test_batches_never_mix_slides_and_each_worker_reads_few_slides():
    offsets = np.array([0, 100, 150, 400, 410, 470])
    for workers in (0, 1, 2, 3):
        batches = SlideBatchSampler(offsets, 32, workers).batches
        flat = sorted(i for b in batches for i in b)
        assert flat == list(range(470))
        slide_of = lambda i: int(np.searchsorted(offsets, i, side="right") - 1)  # noqa: E731
        assert all(len({slide_of(i) for i in b}) == 1 for b in batches)
        for b in batches:  # within a slide, batches are consecutive chunks starting at the slide's first row
            assert (b[0] - offsets[slide_of(b[0])]) % 32 == 0 and b == list(range(b[0], b[0] + len(b)))
    batches = SlideBatchSampler(offsets, 32, 2).batches
    readers = {}
    for i, b in enumerate(batches):  # DataLoader hands batch i to worker i % 2
        readers.setdefault(int(np.searchsorted(offsets, b[0], side="right") - 1), set()).add(i % 2)
    assert sum(len(w) for w in readers.values()) <= len(readers) + 1  # at most one slide read by both workers


def _jobs(tmp_path, n_sections=2):
    jobs = []
    for k in range(n_sections):
        folder = make_legacy_st(tmp_path / f"S{k}", section=f"S{k}", n=4 + k)
        adata = read_legacy_st(folder)
        reader = open_slide(adata.uns["st"]["image"], mpp=adata.uns["st"]["array_mpp"])
        size = patch_size_px(112, reader.mpp)
        coords = spot_patches(adata.obsm["spatial"], size)
        jobs.append(SlideJob(f"S{k}", reader, coords, size, tmp_path / "out" / f"S{k}.h5", {"slide_id": f"S{k}", "mpp": reader.mpp},
                             list(adata.obs_names), coords_attrs(f"S{k}", 32, size, reader.mpp, *reader.dimensions)))
    return jobs


@pytest.mark.parametrize("workers", [0, 2])
def test_rows_equal_a_direct_forward(tmp_path, workers):
    cfg = EncoderConfig(**TINY_ENCODER)
    encoder, norm, info = build_encoder(cfg, 32)
    jobs = _jobs(tmp_path)
    done = embed_slides(jobs, encoder, norm, info["feature_dim"], info["num_tokens"], 32, batch_size=5,
                        num_workers=workers, runtime={"accelerator": "cpu", "devices": 1}, progress=False)
    assert sorted(done) == ["S0", "S1"]
    for job in jobs:
        patches = np.stack([np.asarray(job.reader.read_region(x, y, job.size_px, job.size_px, size=(32, 32)))
                            for x, y in job.coords])
        pooled, tokens = encoder(norm(patches))
        with h5py.File(job.out_path) as f:
            assert f["features"].dtype == np.float32 and f["tokens"].dtype == np.float16  # TRIDENT / CLAM read float32
            assert f["tokens"].shape == (len(job.coords), 4, 64)
            # batch size 5 vs one forward: equal up to float rounding and the fp16 token storage (any CPU / GPU)
            for stored, direct in ((f["features"][()], pooled), (f["tokens"][()], tokens)):
                direct = direct.float().numpy()
                scale = float(np.abs(direct).max())
                np.testing.assert_allclose(stored.astype(np.float32), direct, rtol=1e-2, atol=1e-3 * scale)
            np.testing.assert_array_equal(f["coords"][()], job.coords)
            assert [b.decode() for b in f["barcodes"][()]] == list(job.barcodes)
            assert f.attrs["slide_id"] == job.slide_id and f.attrs["feature_dim"] == 64
            assert f["coords"].attrs["patch_size_level0"] == job.size_px and f["coords"].attrs["patch_size"] == 32
            assert "patch_level" not in f["coords"].attrs and f["coords"].attrs["name"] == job.slide_id  # CLAM: no wrong box
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["S0.h5", "S1.h5"]


def test_crash_midway_leaves_no_partial_file(tmp_path):
    cfg = EncoderConfig(**TINY_ENCODER)
    encoder, norm, info = build_encoder(cfg, 32)
    calls = {"n": 0}
    forward = encoder.forward

    def flaky(x):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("injected failure")
        return forward(x)

    encoder.forward = flaky
    jobs = _jobs(tmp_path)  # S0: 16 spots = 4 batches of 4; the failure hits S0's third batch
    with pytest.raises(RuntimeError, match="injected"):
        embed_slides(jobs, encoder, norm, info["feature_dim"], info["num_tokens"], 32, batch_size=4, num_workers=0,
                     runtime={"accelerator": "cpu", "devices": 1}, progress=False)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_tiles_are_sharded_over_ranks_and_assembled_in_single_process_order(tmp_path, monkeypatch):
    """Ranks simulated in one process: each embeds its batches of every slide into a part; rank 0 assembles."""
    from eca_core.runner import distributed
    from eca_bio.features.embed import part_path, tiles_per_rank

    cfg = EncoderConfig(**TINY_ENCODER)
    encoder, norm, info = build_encoder(cfg, 32)
    jobs = _jobs(tmp_path)  # 16 and 25 patches
    single = [SlideJob(j.slide_id, j.reader, j.coords, j.size_px, tmp_path / "single" / f"{j.slide_id}.h5", j.attrs, j.barcodes)
              for j in jobs]
    embed_slides(single, encoder, norm, info["feature_dim"], info["num_tokens"], 32, batch_size=16, num_workers=0,
                 runtime={"accelerator": "cpu", "devices": 1}, progress=False)
    assert tiles_per_rank(jobs, 16, 3) == [16, 16, 9]  # batches dealt round-robin: S0's one, then S1's two
    assert tiles_per_rank(jobs[:1], 16, 3) == [16, 0, 0]  # ranks without a tile of a slide still write its part
    monkeypatch.setattr(distributed, "world_size", lambda: 4)  # 4 ranks, 3 batches: rank 3 embeds nothing
    for r in (3, 2, 1, 0):  # rank 0 last: it assembles once every part is there
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        embed_slides(jobs, encoder, norm, info["feature_dim"], info["num_tokens"], 32, batch_size=16, num_workers=0,
                     runtime={"accelerator": "cpu", "devices": 1}, progress=False)
        if r:
            assert not jobs[0].out_path.exists() and part_path(jobs[0], r).exists() and part_path(jobs[1], r).exists()
    for job, ref in zip(jobs, single):
        assert not any(part_path(job, r).exists() for r in range(4))
        with h5py.File(job.out_path) as a, h5py.File(ref.out_path) as b:
            np.testing.assert_array_equal(a["coords"][()], b["coords"][()])
            assert list(a["barcodes"].asstr()[()]) == list(b["barcodes"].asstr()[()]) and dict(a.attrs) == dict(b.attrs)
            for key in ("features", "tokens"):
                x = b[key][()].astype(np.float32)
                np.testing.assert_allclose(a[key][()].astype(np.float32), x, rtol=1e-2, atol=1e-3 * float(np.abs(x).max()))
