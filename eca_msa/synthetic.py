"""A synthetic MMSA pickle (MOSI, MOSEI or CH-SIMS schema) whose labels depend on the text and on a few frames of a homogeneous video.

Like the paper's synthetic data (App. G.1): every clip's frames sit around a clip centre c_i
(cross-sample spread ``center_std``, in-sample spread ``frame_noise``), and ``key_frames``
informative frames carry c_i + a_i·u along a unit direction u. The label is
``text_weight·t_i + video_weight·(u·c_i + key_gain·a_i)`` plus noise, scaled to the data set's
range, clipped to it ([-3, 3]; SIMS [-1, 1]) and rounded to its rating step (MOSI and SIMS average
five ratings: multiples of 0.2; MOSEI three: of 1/3), so exact zeros occur. Mean pooling dilutes a_i by key_frames/length; attention must find the key frames.
Padding past the lengths is non-zero for some clips and audio holds -inf values, as in the real files.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from eca_core.runner.config import to_dict
from eca_core.io import atomic_path
from eca_core.runner.pipeline import StageContext
from eca_msa.datasets import dataset_spec
from eca_msa.configs import SyntheticConfig

CLS_ID, SEP_ID, VOCAB = 101, 102, 30522
POSITIVE_IDS, NEGATIVE_IDS, NEUTRAL_IDS = (2000, 3000), (3000, 4000), (4000, VOCAB)


def _unit(rng: np.random.Generator, dim: int) -> np.ndarray:
    v = rng.standard_normal(dim)
    return (v / np.linalg.norm(v)).astype(np.float32)


def _lengths(rng: np.random.Generator, n: int, max_len: int, low_frac: float) -> np.ndarray:
    return rng.integers(max(2, int(low_frac * max_len)), max_len + 1, size=n)


def _split(cfg: SyntheticConfig, n: int, name: str, dirs: dict[str, np.ndarray], rng: np.random.Generator) -> tuple[dict[str, Any], np.ndarray]:
    """One split's arrays and its raw (unscaled) label."""
    # Text: BERT-like token features plus t_i along a sentiment direction on the real tokens.
    t = rng.standard_normal(n).astype(np.float32)
    t_len = _lengths(rng, n, cfg.text_len, 0.2)
    t_mask = np.arange(cfg.text_len)[None, :] < t_len[:, None]
    text = 0.5 * rng.standard_normal((n, cfg.text_len, cfg.text_dim), dtype=np.float32)
    text += (t[:, None, None] * t_mask[:, :, None]) * dirs["text"][None, None, :]
    ids = rng.integers(*NEUTRAL_IDS, size=(n, cfg.text_len))
    for i in range(n):  # sentiment words: more of them for stronger t_i
        k = min(int(round(abs(t[i]) * 3)), t_len[i] - 2)
        lo, hi = POSITIVE_IDS if t[i] > 0 else NEGATIVE_IDS
        ids[i, 1 : 1 + k] = rng.integers(lo, hi, size=k)
    ids[:, 0] = CLS_ID
    ids[np.arange(n), t_len - 1] = SEP_ID
    ids[~t_mask] = 0
    text_bert = np.stack([ids, t_mask.astype(np.int64), np.zeros_like(ids)], axis=1).astype(np.float32)

    # Video: homogeneous frames around c_i, key frames at c_i + a_i·u.
    u = dirs["video"]
    c = cfg.center_std * rng.standard_normal((n, cfg.vision_dim)).astype(np.float32)
    a = cfg.key_contrast * rng.standard_normal(n).astype(np.float32)
    v_len = _lengths(rng, n, cfg.vision_len, 0.3)
    vision = c[:, None, :] + cfg.frame_noise * rng.standard_normal((n, cfg.vision_len, cfg.vision_dim), dtype=np.float32)
    for i in range(n):
        pos = rng.choice(v_len[i], size=cfg.key_frames, replace=False)
        vision[i, pos] += a[i] * u
    # Audio: uninformative features with COVAREP-like -inf entries.
    a_len = _lengths(rng, n, cfg.audio_len, 0.3)
    audio = rng.standard_normal((n, cfg.audio_len, cfg.audio_dim), dtype=np.float32)
    audio[rng.random(audio.shape) < 0.01] = -np.inf

    # Padding past the lengths: zero, except for a fraction of clips that keep junk.
    dirty = rng.random(n) < cfg.dirty_padding
    v_pad = np.arange(cfg.vision_len)[None, :] >= v_len[:, None]
    a_pad = np.arange(cfg.audio_len)[None, :] >= a_len[:, None]
    vision[v_pad & ~dirty[:, None]] = 0.0
    vision[v_pad & dirty[:, None]] += 3.0 * rng.standard_normal(cfg.vision_dim).astype(np.float32)
    audio[a_pad & ~dirty[:, None]] = 0.0

    raw = cfg.text_weight * t + cfg.video_weight * (c @ u + cfg.key_gain * a) + cfg.label_noise * rng.standard_normal(n)
    arrays = {
        "id": np.array([f"synth_{name}_{i:05d}" for i in range(n)], dtype=object),
        "raw_text": np.array([f"synthetic clip {i} of {name}" for i in range(n)], dtype=object),
        "text": text, "text_bert": text_bert, "audio": audio, "vision": vision,
        "audio_lengths": a_len.astype(np.int64).tolist(), "vision_lengths": v_len.astype(np.int64).tolist(),
    }
    return arrays, raw.astype(np.float64)


def generate_mmsa(cfg: SyntheticConfig | None = None, progress: bool = False) -> dict[str, dict[str, Any]]:
    """The MMSA dict ``{train, valid, test}`` described in the module docstring."""
    cfg = cfg or SyntheticConfig()
    rng = np.random.default_rng(cfg.seed)
    dirs = {"text": _unit(rng, cfg.text_dim), "video": _unit(rng, cfg.vision_dim)}
    sizes = {"train": cfg.n_train, "valid": cfg.n_valid, "test": cfg.n_test}
    out, raws = {}, {}
    for name in tqdm(sizes, desc="generating splits", disable=not progress):
        out[name], raws[name] = _split(cfg, sizes[name], name, dirs, rng)
    spec = dataset_spec(cfg.dataset)
    mu, sd = raws["train"].mean(), raws["train"].std() + 1e-8
    for name, raw in raws.items():
        y = np.clip(cfg.label_std * (raw - mu) / sd, -spec.label_max, spec.label_max)
        y = _ratings(y, spec.label_step)
        out[name]["regression_labels"] = y.astype(np.float32)
        out[name]["classification_labels"] = np.sign(y).astype(np.float32) + 1.0  # MMSA: 0 neg, 1 neu, 2 pos
        if cfg.dataset == "sims":  # CH-SIMS also carries unimodal labels (text, audio, vision annotations)
            for m in ("T", "A", "V"):
                noisy = np.clip(y + 0.2 * rng.standard_normal(len(y)), -1.0, 1.0)
                out[name][f"regression_labels_{m}"] = _ratings(noisy, spec.label_step).astype(np.float32)
    return out


def _ratings(y: np.ndarray, step: float) -> np.ndarray:
    """``y`` rounded to multiples of ``step``, as averaged annotator ratings are (+0.0 turns -0.0 into 0.0)."""
    return np.round(y / step) * step + 0.0


def write_mmsa_pickle(path: str | Path, cfg: SyntheticConfig | None = None, progress: bool = False) -> Path:
    """Generate the data set and pickle it (atomically) at ``path``."""
    data = generate_mmsa(cfg, progress)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        pickle.dump(data, fh, protocol=4)
    return Path(path)


PICKLE_NAME = "synthetic_mmsa.pkl"


def run_stage(ctx: StageContext) -> dict[str, Any]:
    path = write_mmsa_pickle(ctx.out_dir / PICKLE_NAME, ctx.config, progress=True)
    return {"pickle": str(path), "config": to_dict(ctx.config)}


def report(summary: dict[str, Any], args: Any) -> None:
    path = Path(summary["pickle"])
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
