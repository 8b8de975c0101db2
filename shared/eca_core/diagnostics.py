"""Homogeneity diagnostics of sets and the Theorem 2.2 bound on what convex attention can add (DESIGN §2).

For sets x_i = {x_ij} (mask-aware): in-sample dispersion d_i, hull radius R_i, their RMS, the
cross-sample dispersion of the means x̄_i, the mean-pooling ridge baseline PCC ρ_0 with its head w,
σ̃ = std(w·x̄_i)/‖w‖, r = R_rms/σ̃ and the bound ρ_att − ρ_0 ≤ 2r/(1 − r) (valid for r < 1).
A small r says no convex attention (softmax, gating, mean-pooling) can beat ρ_0 by much.

As a command: ``eca diagnose FILE`` on an ``.npz`` or ``.h5``/``.hdf5`` of sets.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from eca_core.attention import check_set, set_dispersion
from eca_core.io import require_self_contained_h5
from eca_core.metrics import constant_columns, pearson_per_column

_BOUND_NOT_VALID = "not valid (r >= 1)"


@dataclass
class OutputBound:
    """Mean-pooling baseline and Theorem 2.2 bound for one target column."""

    rho0: float  # PCC of the ridge head on mean-pooled sets (fit and scored on the same sets)
    sigma_tilde: float  # std(w·x̄_i) / ‖w‖
    r: float  # R_rms / σ̃
    bound: float | None  # 2r / (1 − r), None when r >= 1 (theorem not applicable)


@dataclass
class HomogeneityReport:
    """Dispersion statistics of a collection of sets, plus ρ_0 and the bound when targets are given."""

    n_sets: int
    max_elements: int
    dim: int
    d_mean: float  # mean_i d_i
    d_rms: float  # sqrt(mean_i d_i²)
    R_mean: float
    R_rms: float
    cross_dispersion: float  # sqrt(mean_i ‖x̄_i − mean_k x̄_k‖²)
    homogeneity_ratio: float  # d_rms / cross_dispersion (small = sets are homogeneous relative to their spread)
    outputs: list[OutputBound] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)
    n_constant_outputs: int = 0  # target columns with no variance (no ρ_0, no bound)

    def to_dict(self) -> dict:
        return asdict(self)


def set_statistics(x: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-set mean x̄ (N, D), dispersion d (N,) and hull radius R (N,) of sets x (N, T, D), mask (N, T) True = valid."""
    xt = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    mt = None if mask is None else torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
    mt = check_set(xt, mt, "sets")
    xbar, d, r = set_dispersion(xt.double(), mt, eps=0.0)  # exact: float64, no ε inside the square root
    return xbar.numpy(), d.numpy(), r.numpy()


def ridge_fit(features: np.ndarray, y: np.ndarray, alpha: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Ridge regression with an unpenalised intercept: returns w (D, K) and b (K,) for y (N,) or (N, K)."""
    X = np.asarray(features, dtype=np.float64)
    Y = np.asarray(y, dtype=np.float64)
    Y2 = Y[:, None] if Y.ndim == 1 else Y
    xm, ym = X.mean(0), Y2.mean(0)
    Xc = X - xm
    gram = Xc.T @ Xc + alpha * len(X) * np.eye(X.shape[1])
    w = np.linalg.solve(gram, Xc.T @ (Y2 - ym))
    b = ym - xm @ w
    return w, b


def mean_pool_baseline(x: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None, alpha: float = 1e-3,
                       x_eval: np.ndarray | None = None, y_eval: np.ndarray | None = None,
                       mask_eval: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ridge head on mean-pooled sets: returns (ρ_0 per output (K,), w (D, K), b (K,)).

    ρ_0 is scored on ``x_eval``/``y_eval`` when given (held-out sets), else on the fitting sets.
    """
    xbar, _, _ = set_statistics(x, mask)
    w, b = ridge_fit(xbar, y, alpha)
    if x_eval is None:
        xe, ye = xbar, y
    else:
        xe, _, _ = set_statistics(x_eval, mask_eval)
        ye = y_eval
    ye2 = np.asarray(ye, dtype=np.float64)
    ye2 = ye2[:, None] if ye2.ndim == 1 else ye2
    pred = xe @ w + b
    rho = pearson_per_column(pred, ye2)
    return rho, w, b


def theorem22_bound(r: float) -> float | None:
    """Theorem 2.2: max gain of any convex attention over mean pooling, 2r/(1 − r); None when r >= 1."""
    return 2.0 * r / (1.0 - r) if r < 1.0 else None


def homogeneity_report(x: np.ndarray, mask: np.ndarray | None = None, y: np.ndarray | None = None,
                       alpha: float = 1e-3, output_names: list[str] | None = None) -> HomogeneityReport:
    """All diagnostics of sets x (N, T, D) [mask (N, T)] and, if given, targets y (N,) or (N, K)."""
    x = np.asarray(x)
    xbar, d, R = set_statistics(x, mask)
    centre = xbar.mean(0)
    cross = float(np.sqrt(((xbar - centre) ** 2).sum(1).mean()))
    d_rms, R_rms = float(np.sqrt((d**2).mean())), float(np.sqrt((R**2).mean()))
    report = HomogeneityReport(
        n_sets=int(x.shape[0]), max_elements=int(x.shape[1]), dim=int(x.shape[2]),
        d_mean=float(d.mean()), d_rms=d_rms, R_mean=float(R.mean()), R_rms=R_rms,
        cross_dispersion=cross, homogeneity_ratio=d_rms / cross if cross > 0 else float("inf"),
    )
    if y is None:
        return report
    y = np.asarray(y, dtype=np.float64)
    if y.ndim not in (1, 2) or y.shape[0] != x.shape[0]:
        raise ValueError(f"targets shape {y.shape} does not match {x.shape[0]} sets: expected ({x.shape[0]},) or ({x.shape[0]}, K)")
    y2 = y[:, None] if y.ndim == 1 else y
    varying = ~constant_columns(y2)
    report.n_constant_outputs = int((~varying).sum())
    names = output_names or ([f"y{k}" for k in range(y2.shape[1])] if y2.shape[1] > 1 else ["y"])
    if len(names) != y2.shape[1]:
        raise ValueError(f"{len(names)} output names for {y2.shape[1]} target columns")
    if not varying.any():
        return report
    keep = np.flatnonzero(varying)
    rho0, w, b = mean_pool_baseline(x, y2[:, keep], mask, alpha)
    for j, k in enumerate(keep):
        wk = w[:, j]
        norm = float(np.linalg.norm(wk))
        sigma_t = float(np.std(xbar @ wk)) / norm if norm > 0 else 0.0
        r = R_rms / sigma_t if sigma_t > 0 else float("inf")
        report.outputs.append(OutputBound(rho0=float(rho0[j]), sigma_tilde=sigma_t, r=r, bound=theorem22_bound(r)))
        report.output_names.append(names[k])
    return report


def format_report(report: HomogeneityReport, source: str = "") -> str:
    """A readable plain-text table of a report."""
    lines = [f"Homogeneity diagnostics{f' of {source}' if source else ''}",
             f"  sets: {report.n_sets}   elements per set (max): {report.max_elements}   dim: {report.dim}",
             "",
             f"  {'in-sample dispersion d  mean / RMS':<40} {report.d_mean:10.4g} / {report.d_rms:.4g}",
             f"  {'hull radius R           mean / RMS':<40} {report.R_mean:10.4g} / {report.R_rms:.4g}",
             f"  {'cross-sample dispersion':<40} {report.cross_dispersion:10.4g}",
             f"  {'d_rms / cross-sample dispersion':<40} {report.homogeneity_ratio:10.4g}"]
    if not report.outputs:
        lines += ["", "  no targets given (or all constant): the mean-pool baseline rho_0, r and the Theorem 2.2 bound",
                  "  need targets; pass --y (and --y-file) to compute them."]
        return "\n".join(lines)
    lines += ["", "  Mean-pooling ridge baseline and Theorem 2.2 (rho_att - rho_0 <= 2r/(1-r), r = R_rms / sigma~):",
              f"  {'output':<16} {'rho_0':>8} {'sigma~':>10} {'r':>8}  bound"]
    shown = report.outputs if len(report.outputs) <= 20 else report.outputs[:20]
    for name, o in zip(report.output_names, shown):
        bound = f"{o.bound:.4g}" if o.bound is not None else _BOUND_NOT_VALID
        lines.append(f"  {name[:16]:<16} {o.rho0:8.4f} {o.sigma_tilde:10.4g} {o.r:8.4g}  {bound}")
    if len(report.outputs) > 20:
        lines.append(f"  ... {len(report.outputs) - 20} more outputs (see --json)")
        rs = np.array([o.r for o in report.outputs])
        rho = np.array([o.rho0 for o in report.outputs])
        lines.append(f"  over all {len(report.outputs)} outputs: median rho_0 {np.median(rho):.4f}, median r {np.median(rs):.4g}, "
                     f"bound valid for {int((rs < 1).sum())}")
    if report.n_constant_outputs:
        lines.append(f"  {report.n_constant_outputs} constant target column(s) skipped (no PCC defined)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- file loading

class _ArrayFile:
    """Read-on-demand view of the arrays in an .npz/.npy/.h5 file (HDF5 datasets are read only when asked for)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        suffix = path.suffix.lower()
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file")
        self._npz: dict[str, np.ndarray] | None = None
        if suffix == ".npz":
            try:
                self._npz = dict(np.load(path, allow_pickle=False))
            except Exception as exc:  # noqa: BLE001 - re-raised with the file name
                raise ValueError(f"{path}: cannot read as .npz: {exc}") from exc
            self.keys = sorted(self._npz)
        elif suffix == ".npy":
            self._npz = {"x": np.load(path, allow_pickle=False)}
            self.keys = ["x"]
        elif suffix in (".h5", ".hdf5"):
            import h5py

            names: list[str] = []
            try:
                require_self_contained_h5(path, ValueError)
                with h5py.File(path, "r") as f:
                    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
            except OSError as exc:
                raise ValueError(f"{path}: cannot read as HDF5: {exc}") from exc
            self.keys = sorted(names)
        else:
            raise ValueError(f"{path}: unsupported file type {suffix!r}; use .npz, .npy, .h5 or .hdf5")

    def __contains__(self, key: str) -> bool:
        return key in self.keys

    def __getitem__(self, key: str) -> np.ndarray:
        if self._npz is not None:
            return np.asarray(self._npz[key])
        import h5py

        with h5py.File(self.path, "r") as f:
            return np.asarray(f[key][()])


def _read_arrays(path: Path) -> _ArrayFile:
    return _ArrayFile(Path(path))


def _pick(arrays: _ArrayFile, key: str, path: Path, what: str) -> np.ndarray:
    if key not in arrays:
        raise KeyError(f"{path}: no {what} key {key!r}; keys in the file: {arrays.keys}")
    return arrays[key]


def load_sets(path: str | Path, x_key: str | None = None, mask_key: str | None = None, lengths_key: str | None = None
              ) -> tuple[np.ndarray, np.ndarray | None, _ArrayFile]:
    """Load sets (N, T, D) and a mask (N, T) from a file; returns (x, mask, all arrays of the file).

    Defaults: key ``x`` (or ``tokens``, the bio per-slide layout) and ``mask`` when present.
    """
    path = Path(path)
    arrays = _read_arrays(path)
    if x_key is None:
        x_key = "x" if "x" in arrays else "tokens" if "tokens" in arrays else "x"
    x = _pick(arrays, x_key, path, "sets")
    if x.ndim != 3:
        raise ValueError(f"{path}: sets {x_key!r} must have shape (sets, elements, dim), got {x.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{path}: sets {x_key!r} are not numeric (dtype {x.dtype})")
    mask = None
    if lengths_key is not None:
        lengths = _pick(arrays, lengths_key, path, "lengths").astype(np.int64)
        if lengths.shape != (x.shape[0],):
            raise ValueError(f"{path}: lengths {lengths_key!r} shape {lengths.shape} != ({x.shape[0]},)")
        if lengths.min() < 1 or lengths.max() > x.shape[1]:
            raise ValueError(f"{path}: lengths {lengths_key!r} must be in [1, {x.shape[1]}], got [{lengths.min()}, {lengths.max()}]")
        mask = np.arange(x.shape[1])[None, :] < lengths[:, None]
    elif mask_key is not None or "mask" in arrays:
        key = mask_key or "mask"
        mask = _pick(arrays, key, path, "mask").astype(bool)
        if mask.shape != x.shape[:2]:
            raise ValueError(f"{path}: mask {key!r} shape {mask.shape} does not match sets {x_key!r} shape {x.shape}: expected {x.shape[:2]}")
        if not mask.any(1).all():
            raise ValueError(f"{path}: mask {key!r} leaves sets {np.flatnonzero(~mask.any(1))[:10].tolist()} with no valid element")
    if not np.isfinite(x if mask is None else x[mask]).all():
        raise ValueError(f"{path}: sets {x_key!r} contain NaN or inf")
    return x, mask, arrays


def load_targets(arrays: _ArrayFile, path: Path, key: str, n_sets: int) -> np.ndarray:
    """Targets (N,) or (N, K) from a loaded file, checked against the number of sets."""
    y = _pick(arrays, key, path, "targets").astype(np.float64)
    if y.ndim not in (1, 2) or y.shape[0] != n_sets:
        raise ValueError(f"{path}: targets {key!r} shape {y.shape} does not match {n_sets} sets: expected ({n_sets},) or ({n_sets}, K)")
    if not np.isfinite(y).all():
        raise ValueError(f"{path}: targets {key!r} contain NaN or inf")
    return y


# ----------------------------------------------------------------------------- CLI

def configure_parser(parser: argparse.ArgumentParser) -> None:
    """``eca diagnose FILE``."""
    parser.add_argument("file", type=Path, help="sets in .npz/.npy or .h5/.hdf5 (the bio per-slide file with 'tokens' works; "
                                                "with its expression targets: eca-bio diagnose)")
    parser.add_argument("--x", default=None, help="key of the sets (N, T, D); default 'x', else 'tokens'")
    parser.add_argument("--y", default=None, help="key of the targets (N,) or (N, K); default 'y' when the file has it")
    parser.add_argument("--y-file", type=Path, default=None, help="read the targets from this .npz/.npy/.h5 instead of FILE")
    parser.add_argument("--mask", default=None, help="key of a boolean mask (N, T), True = real element; default 'mask' when present")
    parser.add_argument("--lengths", default=None, help="key of set lengths (N,) instead of a mask")
    parser.add_argument("--alpha", type=float, default=1e-3, help="ridge penalty (times N) of the mean-pooling head")
    parser.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")


def main(args: argparse.Namespace) -> int:
    if Path(args.file).is_dir():
        raise FileNotFoundError(f"{args.file}: a folder; give a sets file (for a bio preprocess folder: eca-bio diagnose)")
    report = diagnose_file(Path(args.file), args)
    if args.json is not None:
        from eca_core.io import write_json_atomic

        write_json_atomic(args.json, report)
        print(f"wrote {args.json}")
    return 0


def diagnose_file(path: Path, args: argparse.Namespace) -> dict:
    """Print (and return) the report of one sets file, with its targets from --y / --y-file (if any)."""
    x, mask, arrays = load_sets(path, args.x, args.mask, args.lengths)
    y = None
    if args.y_file is not None:
        y_arrays = _read_arrays(args.y_file)
        key = args.y or ("y" if "y" in y_arrays else "x")
        y = load_targets(y_arrays, args.y_file, key, x.shape[0])
    elif args.y is not None or "y" in arrays:
        y = load_targets(arrays, path, args.y or "y", x.shape[0])
    report = homogeneity_report(x, mask, y, alpha=args.alpha)
    print(format_report(report, str(path)))
    return {"file": str(path), **report.to_dict()}
