"""Per-member randomness and hyper-parameters of a vmapped ensemble (:mod:`eca_bio.training.engine`).

Inside one ``vmap``-ed forward every member must draw its own dropout masks, exactly as it would draw
them alone, and use its own dropout rate, τ_min, β and λ_max. Module attributes cannot differ per member,
so the members' dropout and DATS/SRA modules read those values from a *tape* that the engine fills per
call: :class:`MemberDropout` (noise from the member's own :class:`DropoutStream`, drawn in call order) and
the knob variants of DATS and SRA (the same arithmetic without Python branches on the knob values).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eca_core.attention import _EPS, _TAU_FLOOR, DispersionTemperature, ECAAggregation, ResidualScale
from eca_bio.model.expression import ExpressionModel


class _Tape:
    """What the members' dropout and DATS/SRA modules read inside one vmapped call: per-member knobs, noise."""

    def __init__(self) -> None:
        self.active = False
        self.knobs: dict[str, Tensor] = {}
        self.noise: list[Tensor] = []
        self.record: list[torch.Size] | None = None


_TAPE = _Tape()


@contextmanager
def member_tape(knobs: dict[str, Tensor], noise: list[Tensor] | None = None, record: list | None = None) -> Iterator[None]:
    _TAPE.active, _TAPE.knobs, _TAPE.noise, _TAPE.record = True, knobs, list(noise or []), record
    try:
        yield
    finally:
        _TAPE.active, _TAPE.knobs, _TAPE.noise, _TAPE.record = False, {}, [], None


class DropoutStream:
    """One member's dropout generator, shared by its dropout modules and drawn in call order."""

    def __init__(self, seed: int) -> None:
        self.seed, self.generator = dropout_seed(seed), None

    def rand(self, shape: torch.Size, device: torch.device) -> Tensor:
        if self.generator is None or self.generator.device != device:
            self.generator = torch.Generator(device=device).manual_seed(self.seed)
        return torch.rand(shape, generator=self.generator, device=device)


def dropout_seed(seed: int) -> int:
    """The seed of a member's dropout generator (its batch-order generator has ``seed`` itself)."""
    return int(np.random.SeedSequence([int(seed), 1]).generate_state(1)[0])


class MemberDropout(nn.Module):
    """Dropout whose mask is ``noise >= p`` for uniform noise from the member's own generator.

    Alone it draws from its :class:`DropoutStream`; inside the engine's vmapped step it takes the noise and
    ``p`` of each member from the tape, so a member draws exactly what it would draw alone.
    """

    def __init__(self, p: float, stream: DropoutStream) -> None:
        super().__init__()
        self.p, self.stream = float(p), stream

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        if _TAPE.active:
            if _TAPE.record is not None:  # the engine's dry run: which shapes a step draws, in order
                _TAPE.record.append(x.shape)
                return x
            noise = _TAPE.noise.pop(0)
            return x * (noise >= _TAPE.knobs["dropout"]) * _TAPE.knobs["dropout_scale"]
        return x * (self.stream.rand(x.shape, x.device) >= self.p) * (1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_member_dropout(model: ExpressionModel, seed: int) -> ExpressionModel:
    """Give ``model``'s dropout modules (those of ``cfg.dropout``) one :class:`MemberDropout` stream of ``seed``."""
    stream = DropoutStream(seed)
    for name in model.dropout_modules():
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, MemberDropout(model.cfg.dropout, stream))
    return model


class _KnobTemperature(DispersionTemperature):
    """DATS with τ_min and β of each member from the tape (the same arithmetic, without Python branches)."""

    @torch.no_grad()
    def forward(self, d: Tensor) -> Tensor:
        k = _TAPE.knobs
        d = d if d.dtype == torch.float32 else d.float()
        ref = self.d_ref
        if self.training:  # lerp_'s arithmetic, spelled out (vmap has no rule for lerp_ with a tensor weight)
            mean, weight = d.mean(), torch.where(self.initialised, self.momentum, 1.0)
            ref.copy_(torch.where(weight < 0.5, ref + weight * (mean - ref), mean - (mean - ref) * (1 - weight)))
            self.initialised.fill_(True)
        else:
            ref = torch.where(self.initialised, ref, d)
        tau = (d / (ref + _EPS)).mul_(k["beta"]).tanh_()  # β = 1: x·1 is x, so this equals DATS's tanh_ branch
        return tau.mul_(k["one_minus_tau_min"]).add_(k["tau_min"]).clamp_min_(_TAU_FLOOR)  # τ >= τ_min: no-op above the floor


class _KnobResidualScale(ResidualScale):
    """SRA with λ_max of each member from the tape."""

    def forward(self, xbar: Tensor) -> Tensor:
        first, last = self.mlp[0], self.mlp[2]
        raw = F.linear(F.gelu(F.linear(xbar, first.weight, first.bias), approximate="tanh"), last.weight, last.bias)
        return F.softplus(raw).add_(1.0).clamp_max_(_TAPE.knobs["lambda_max"])


def knob_template(model: nn.Module) -> nn.Module:
    """A structural copy of a member's model whose DATS/SRA modules read their knobs from the tape."""
    template = copy.deepcopy(model)
    for name, module in list(template.named_modules()):
        swap = {DispersionTemperature: _KnobTemperature, ResidualScale: _KnobResidualScale}.get(type(module))
        if swap is not None:
            module.__class__ = swap  # same parameters and buffers; only forward reads the tape
        if isinstance(module, ECAAggregation) and type(module.attn_drop) is nn.Dropout and module.attn_drop.p == 0:
            module.attn_drop = nn.Identity()  # the unfused attention path: vmap has no rule for fused SDPA on CPU
    return template


BETAS, EPS = (0.9, 0.999), 1e-8  # torch.optim.AdamW's defaults, the optimizer of the per-fit loop


@torch.no_grad()
def stacked_adamw(params: dict[str, Tensor], grads: dict[str, Tensor], exp_avg: dict[str, Tensor], exp_avg_sq: dict[str, Tensor],
                  steps: Tensor, lr: Tensor, weight_decay: Tensor) -> None:
    """torch.optim.AdamW's update, in place, on parameters stacked over members (dim 0), each member with its own
    step count ``steps`` (already incremented; float64), learning rate and weight decay ``(M,)``."""
    b1, b2 = BETAS
    device = lr.device
    lr64 = lr.double().cpu()
    decay = (1 - lr64 * weight_decay.double().cpu()).float().to(device)  # scalars as AdamW computes them (Python floats)
    step_size = (lr64 / (1 - b1 ** steps)).float().to(device)
    bc2_sqrt = ((1 - b2 ** steps) ** 0.5).float().to(device)
    for name, p in params.items():
        shape = (-1,) + (1,) * (p.dim() - 1)
        g = grads[name]
        p.mul_(decay.view(shape))
        exp_avg[name].lerp_(g, 1 - b1)
        exp_avg_sq[name].mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (exp_avg_sq[name].sqrt() / bc2_sqrt.view(shape)).add_(EPS)
        p.sub_(step_size.view(shape) * exp_avg[name] / denom)
