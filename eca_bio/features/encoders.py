"""Frozen patch encoders from timm (any timm name, ``hf-hub:`` ids, or a local .safetensors/.pth weights
file) or Hugging Face transformers (``backend: transformers``: a ViT-style ``AutoModel`` such as Phikon,
from a hub name or a local folder).

``build_encoder(cfg, patch_px)`` returns a ``FrozenEncoder`` in eval mode without gradients whose forward
maps normalised images (B, 3, P, P) to ``(pooled (B, D), tokens (B, T, D))``: the model's own pooled /
CLS vector (``forward_head(pre_logits=True)``) and its patch tokens (ViTs: the non-prefix tokens;
CNNs: the final feature map's positions), optionally average-pooled to a k x k grid so T = k * k.
``preprocess`` holds the encoder's own normalisation from ``timm.data.resolve_data_config``.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from eca_core.errors import InputError
from eca_bio.configs import EncoderConfig


class EncoderError(InputError):
    """The encoder cannot be built or does not accept the configured input."""


class FrozenEncoder(nn.Module):
    """An encoder of one of :data:`BACKENDS` that returns (pooled (B, D), tokens (B, T, D)); frozen, eval mode."""

    def __init__(self, model: nn.Module, token_grid: int | None = None, backend: str = "timm") -> None:
        super().__init__()
        self.model = model
        self.token_grid = token_grid
        self.backend = BACKENDS[backend]
        self.num_prefix_tokens = self.backend.prefix_tokens(model)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FrozenEncoder":
        return super().train(False)  # frozen: dropout/batch-norm stay in inference mode

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled, feats = self.backend.features(self.model, x)  # (B, D), and (B, prefix + N, D) or a CNN's (B, D, h, w)
        if feats.ndim == 4:
            grid = feats                                          # (B, D, h, w)
        elif feats.ndim == 3:
            tokens = feats[:, self.num_prefix_tokens:]            # (B, N, D)
            side = int(round(math.sqrt(tokens.shape[1])))
            if self.token_grid is None or side * side != tokens.shape[1]:
                if self.token_grid is not None:
                    raise EncoderError(f"cannot pool {tokens.shape[1]} tokens to a {self.token_grid}x{self.token_grid} grid")
                return pooled, tokens
            grid = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)
        else:
            raise EncoderError(f"unsupported forward_features output shape {tuple(feats.shape)}")
        if self.token_grid is not None:
            grid = F.adaptive_avg_pool2d(grid, self.token_grid)   # (B, D, k, k)
        return pooled, grid.flatten(2).transpose(1, 2)            # (B, T, D)


_OFFLINE = ("encoder '{name}': pretrained weights are not in the local cache and the model hub cannot be reached "
            "(no network); set encoder.pretrained=false for a random-init encoder, or encoder.weights=PATH for a local file")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub endpoint answers a TCP connect within ``timeout`` seconds."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout).close()
        return True
    except OSError:
        return False


@contextmanager
def _offline_if_unreachable(use_hub: bool) -> Iterator[bool]:
    """Hub unreachable: load in offline mode, so cached weights still load and missing ones fail at once (no retries)."""
    from huggingface_hub import constants

    if not use_hub or constants.HF_HUB_OFFLINE or hub_reachable():
        yield bool(use_hub and constants.HF_HUB_OFFLINE)
        return
    constants.HF_HUB_OFFLINE = True
    try:
        yield True
    finally:
        constants.HF_HUB_OFFLINE = False


def create_transformers_model(cfg: EncoderConfig) -> nn.Module:
    """``AutoModel`` from a hub name or local folder (``pretrained``), or its config with random weights (seeded)."""
    from transformers import AutoConfig, AutoModel

    use_hub = not Path(cfg.name).is_dir()
    try:
        with _offline_if_unreachable(use_hub and cfg.pretrained) as offline:
            if cfg.pretrained and cfg.weights is None:
                model = AutoModel.from_pretrained(cfg.name, **cfg.kwargs)
            else:
                torch.manual_seed(cfg.seed)
                model = AutoModel.from_config(AutoConfig.from_pretrained(cfg.name, **cfg.kwargs))
    except (OSError, ValueError, KeyError) as exc:
        if use_hub and offline:
            raise EncoderError(_OFFLINE.format(name=cfg.name)) from exc
        raise EncoderError(f"encoder '{cfg.name}' (transformers): cannot be loaded: {' '.join(str(exc).split())[:200]}") from exc
    if cfg.weights is not None:
        load_weights(model, cfg.weights)
    return model.eval()


def create_model(cfg: EncoderConfig) -> nn.Module:
    """The encoder of ``cfg.backend`` with the config's weights source; errors name the model / file."""
    if cfg.backend not in BACKENDS:
        raise EncoderError(f"encoder.backend {cfg.backend!r}: choose from {list(BACKENDS)}")
    return BACKENDS[cfg.backend].create(cfg)


def create_timm_model(cfg: EncoderConfig) -> nn.Module:
    """``timm.create_model`` (any timm name or ``hf-hub:`` id; ``num_classes=0``), pretrained, seeded random or local weights."""
    import timm

    kwargs = dict(cfg.kwargs)
    kwargs.setdefault("num_classes", 0)
    use_hub = cfg.pretrained and cfg.weights is None
    if not use_hub:
        torch.manual_seed(cfg.seed)
    offline = False
    try:
        with _offline_if_unreachable(use_hub) as offline:
            model = timm.create_model(cfg.name, pretrained=use_hub, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc) or "Unknown" in str(exc):
            raise EncoderError(f"encoder '{cfg.name}': not a timm model name ({exc})") from exc
        raise EncoderError(f"encoder '{cfg.name}': cannot be created: {exc}") from exc
    except (OSError, ValueError, ImportError) as exc:
        if offline:
            raise EncoderError(_OFFLINE.format(name=cfg.name)) from exc
        hint = " (no network? set encoder.pretrained=false for a random-init encoder or encoder.weights=PATH)" if use_hub else ""
        raise EncoderError(f"encoder '{cfg.name}': cannot load pretrained weights: {exc}{hint}") from exc
    except Exception as exc:  # huggingface_hub errors (offline, gated repo) do not share a base class
        if offline:
            raise EncoderError(_OFFLINE.format(name=cfg.name)) from exc
        hint = " (set encoder.pretrained=false for a random-init encoder or encoder.weights=PATH)" if use_hub else ""
        raise EncoderError(f"encoder '{cfg.name}': {type(exc).__name__}: {exc}{hint}") from exc
    if cfg.weights is not None:
        load_weights(model, cfg.weights)
    return model


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a local state dict (.safetensors or torch pickle; nested 'state_dict'/'model' keys and 'module.' prefixes handled).

    Every backbone parameter must be present; classifier-head keys may be missing or extra.
    """
    path = Path(path)
    if not path.is_file():
        raise EncoderError(f"{path}: encoder weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise EncoderError(f"{path}: cannot read encoder weights: {exc}") from exc
    for key in ("state_dict", "model", "teacher"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise EncoderError(f"{path}: expected a state dict, got {type(state).__name__}")
    state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    bad = [f"{k} {tuple(v.shape)} vs {shapes[k]}" for k, v in state.items() if k in shapes and tuple(v.shape) != shapes[k]]
    if bad:
        raise EncoderError(f"{path}: weights do not fit the encoder: {len(bad)} shape mismatch(es), e.g. {bad[:3]}")
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(("head.", "fc.", "classifier."))]
    if missing:
        raise EncoderError(f"{path}: weights do not fit the encoder: missing {len(missing)} key(s), e.g. {missing[:5]}")


@dataclass
class Normalisation:
    """The encoder's input normalisation (from timm's pretrained config)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: tuple[int, int, int]

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (B, H, W, 3) or (H, W, 3) -> float32 (B, 3, H, W) / (3, H, W) normalised."""
        t = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
        t = t.movedim(-1, -3)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (t - mean) / std


def resolve_normalisation(model: nn.Module, cfg: EncoderConfig | None = None) -> Normalisation:
    """Mean/std/input size the model was trained with, as its backend records them (timm when ``cfg`` is None)."""
    return BACKENDS[cfg.backend if cfg is not None else "timm"].normalisation(model, cfg)


def timm_normalisation(model: nn.Module, cfg: EncoderConfig | None = None) -> Normalisation:
    """timm's pretrained data config of the model."""
    from timm.data import resolve_data_config

    dc = resolve_data_config({}, model=model)
    return Normalisation(tuple(float(v) for v in dc["mean"]), tuple(float(v) for v in dc["std"]),
                         tuple(int(v) for v in dc["input_size"]))


def transformers_normalisation(model: nn.Module, cfg: EncoderConfig) -> Normalisation:
    """The transformers image processor's statistics (ImageNet's when the model has none, as ViTs use)."""
    from transformers import AutoImageProcessor

    size = int(getattr(model.config, "image_size", 224))
    try:
        proc = AutoImageProcessor.from_pretrained(cfg.name)
        return Normalisation(tuple(float(v) for v in proc.image_mean), tuple(float(v) for v in proc.image_std), (3, size, size))
    except (OSError, ValueError, AttributeError):  # no preprocessor_config.json
        return Normalisation((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), (3, size, size))


def timm_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    feats = model.forward_features(x)  # ViT: (B, prefix + N, D); CNN: (B, D, h, w)
    return model.forward_head(feats, pre_logits=True), feats


def transformers_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    feats = model(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state  # (B, 1 [+ registers] + N, D), CLS first
    return feats[:, 0], feats


@dataclass(frozen=True)
class Backend:
    """One encoder library: how a model is created, its input normalisation, its (pooled, features) output and how
    many prefix tokens (CLS, registers) precede the patch tokens."""

    create: Callable[[EncoderConfig], nn.Module]
    normalisation: Callable[[nn.Module, EncoderConfig | None], Normalisation]
    features: Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    prefix_tokens: Callable[[nn.Module], int]


# backend -> what the rest of the project needs from it; adding one is an entry here (and its name in EncoderConfig.backend)
BACKENDS: dict[str, Backend] = {
    "timm": Backend(create_timm_model, timm_normalisation, timm_features,
                    lambda m: int(getattr(m, "num_prefix_tokens", 0) or 0)),
    "transformers": Backend(create_transformers_model, transformers_normalisation, transformers_features,
                            lambda m: 1 + int(getattr(m.config, "num_register_tokens", 0) or 0)),
}


def build_encoder(cfg: EncoderConfig, patch_px: int, token_grid: int | None = None) -> tuple[FrozenEncoder, Normalisation, dict]:
    """Frozen encoder, its normalisation and ``{"feature_dim", "num_tokens"}`` probed with one forward pass."""
    model = create_model(cfg)
    norm = resolve_normalisation(model, cfg)
    encoder = FrozenEncoder(model, token_grid, cfg.backend)
    try:
        pooled, tokens = encoder(torch.zeros(1, 3, patch_px, patch_px))
    except EncoderError:
        raise
    except Exception as exc:
        raise EncoderError(
            f"encoder '{cfg.name}' does not accept {patch_px}x{patch_px} patches ({exc}); set patch_px to "
            f"{norm.input_size[1]} or pass encoder.kwargs.img_size={patch_px}"
        ) from exc
    return encoder, norm, {"feature_dim": int(pooled.shape[-1]), "num_tokens": int(tokens.shape[1])}
