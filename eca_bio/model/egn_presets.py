"""EGN's named sizes, one table (torch-free, so configs validate a preset name before torch is imported).

"model": :class:`~eca_bio.model.egn.EGN`'s keyword arguments (``mdim``, the retrieval embedding's size, is EGN's
ResNet50 2048 here; a trained model takes it from the preprocess folder's encoder). "train": EGN's optimisation (its
README command: 50 epochs, batch 32, AdamW lr 5e-4, weight decay 1e-4, 6 exemplars, 250 genes). "published": the ECA
paper's Table 3 means for EGN and EGN+ECA on EGN's three 10xProteomic folds, the numbers a reproduction is held to.
"""

from __future__ import annotations

PRESETS: dict[str, dict[str, dict[str, float | int | bool]]] = {
    "egn-10xproteomic": {  # EGN's README command; the ECA paper's §G.3 and Table 3
        "model": dict(image_size=256, patch_size=32, dim=1024, depth=8, heads=16, mlp_dim=4096, bhead=8, bdim=64, bfre=2,
                      player=2, linear_projection=True, mdim=2048, n_genes=250),
        "train": dict(epochs=50, batch_size=32, lr=5e-4, weight_decay=1e-4, k=6),
        "published": {"egn_pcc_f": 0.602, "egn_pcc_s": 0.647, "egn_pcc_m": 0.629, "egn_mse": 0.056,
                      "egn_eca_pcc_f": 0.690, "egn_eca_pcc_s": 0.724, "egn_eca_pcc_m": 0.716, "egn_eca_mse": 0.051},
    },
    "egn-cpu-small": {  # 2 CPU cores: 64 px windows, an 8 x 8 grid as EGN's bridge is written for, 4 blocks (~0.3 M parameters)
        "model": dict(image_size=64, patch_size=8, dim=64, depth=4, heads=4, mlp_dim=128, bhead=2, bdim=16, bfre=2,
                      player=1, linear_projection=True, n_genes=250),
        "train": dict(epochs=20, batch_size=32, lr=5e-4, weight_decay=1e-4, k=6),
        "published": {},
    },
    "egn-tiny": {  # tests and the demo: 32 px windows, a 4 x 4 grid, 2 blocks; seconds on a CPU
        "model": dict(image_size=32, patch_size=8, dim=32, depth=2, heads=2, mlp_dim=64, bhead=2, bdim=8, bfre=2,
                      player=1, linear_projection=True, n_genes=250),
        "train": dict(epochs=4, batch_size=16, lr=1e-3, weight_decay=1e-4, k=4),
        "published": {},
    },
}
