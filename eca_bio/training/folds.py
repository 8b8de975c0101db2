"""Slide-level fold plans: which slides test, train and early-stop each fold, and which patient each slide is from.

Sections of one patient (her2st's C1-C6 are consecutive sections of one tumour) share tissue; when patients are
known, ``cv: lopo`` holds out one patient per fold, ``kfold`` splits patients, and exemplars come only from other
patients (EGN's rule). Without patient ids, a report says once that sections of one patient may leak.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from eca_bio.features.feature_set import DataError
from eca_bio.inputs.slides import hash_distance

SAME_IMAGE_BITS = 24  # thumbnail hashes (256 bits) this close are one image (re-encoded copies: <= 14; other slides: >= 34)


def resolve_patients(slide_ids: list[str], given: Mapping[str, str], pattern: str | None,
                     recorded: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """Slide id -> patient: ``given`` (train.patients), else the layout's record (HEST metadata), else ``pattern``'s first
    group (else its match) on the slide id; None when no slide has a patient. A slide left without one is an error."""
    unknown = sorted(set(given) - set(slide_ids))
    if unknown:
        raise DataError(f"train.patients names slide(s) {unknown} that are not among the ST slides {sorted(slide_ids)}")
    recorded = {k: v for k, v in (recorded or {}).items() if v}
    out: dict[str, str] = {}
    for sid in slide_ids:
        if sid in given:
            out[sid] = str(given[sid])
        elif sid in recorded:
            out[sid] = str(recorded[sid])
        elif pattern is not None:
            m = re.search(pattern, sid)
            if m is None:
                raise DataError(f"train.patient_pattern {pattern!r} does not match slide {sid!r}; give its patient in train.patients")
            out[sid] = m.group(1) if m.groups() else m.group(0)
    if not out:
        return None
    missing = sorted(set(slide_ids) - set(out))
    if missing:
        raise DataError(f"slide(s) {missing} have no patient while {sorted(out)} do; give them in train.patients")
    return out


def plan_folds(slide_ids: list[str], cv: str, n_folds: int, test_slides: list[str] | None = None,
               patients: Mapping[str, str] | None = None, test_folds: list[list[str]] | None = None) -> list[dict[str, Any]]:
    """Folds: test slides, training slides and the training slide used for early stopping (and, when ``patients`` are
    known, each side's patients)."""
    ids = sorted(slide_ids)
    if cv == "none":
        return []
    if cv == "lopo" and not patients:
        raise DataError("cv lopo (leave one patient out) needs each slide's patient: give train.patients or "
                        "train.patient_pattern (HEST folders record it in their metadata)")
    if cv == "fixed":
        missing = sorted(set(test_slides or []) - set(ids))
        if missing or not test_slides:
            raise DataError(f"cv fixed: test slide(s) {missing or '(none given)'} are not among the ST slides {ids}")
        groups = [sorted(test_slides)]
    elif cv == "given":
        missing = sorted({s for fold in test_folds or [] for s in fold} - set(ids))
        if missing or not test_folds:
            raise DataError(f"cv given: test slide(s) {missing or '(no folds given)'} are not among the ST slides {ids}")
        groups = [sorted(fold) for fold in test_folds]
    elif cv == "loso":
        groups = [[s] for s in ids]
    elif cv == "lopo":
        groups = [[s for s in ids if patients[s] == p] for p in sorted(set(patients.values()))]
    elif cv == "kfold":
        units = sorted(set(patients.values())) if patients else ids
        if n_folds < 2 or n_folds > len(units):
            what = "patient" if patients else "slide"
            raise DataError(f"k-fold by {what} needs 2 <= n_folds <= {len(units)} {what}s, got n_folds={n_folds}")
        groups = [[s for s in ids if (patients[s] if patients else s) in units[i::n_folds]] for i in range(n_folds)]
    else:
        raise ValueError(f"unknown cv {cv!r}; choose loso, lopo, kfold, fixed, given or none")
    folds = []
    for i, test in enumerate(groups):
        train = [s for s in ids if s not in test]
        if len(train) < 2:
            raise DataError(f"fold {i} (test {test}) has {len(train)} training slide(s); slide-level CV needs at least 2 "
                            f"(one is held out for early stopping and exemplars must come from another slide). "
                            f"Found {len(ids)} ST slides: {ids}" + (" (a single fold: cv fixed with test_slides)" if cv == "lopo" else ""))
        fold = {"fold": i, "test": test, "train": train, "val": train[i % len(train)]}
        if patients:
            fold["patients"] = {"test": sorted({patients[s] for s in test}), "train": sorted({patients[s] for s in train})}
        folds.append(fold)
    return folds


def grouping_note(patients: Mapping[str, str] | None, cv: str) -> str:
    """One line for logs and reports: how slides were grouped, and the leak that remains."""
    if not patients:
        return ("no patient ids: sections of one patient may sit in training, early stopping and the exemplar bank of "
                "another's test fold (give train.patients or train.patient_pattern)")
    shared = "; sections of a test patient's other slides train (cv loso)" if cv == "loso" else ""
    by = {p: sorted(s for s, q in patients.items() if q == p) for p in sorted(set(patients.values()))}
    return f"patients {by}: exemplars only from other patients{shared}"


def same_image_pairs(folds: list[dict[str, Any]], entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every (fold, test slide, training slide) whose images are one: the same content hash, or thumbnail hashes at most
    ``SAME_IMAGE_BITS`` apart. Training slides are the fold's fitting, early-stopping and exemplar-bank slides."""
    ident = {e["slide_id"]: ((e.get("inputs") or {}).get("image"), e.get("thumbnail_hash")) for e in entries}
    pairs = []
    for fold in folds:
        for t in fold["test"]:
            for s in fold["train"]:
                (sha_t, hash_t), (sha_s, hash_s) = ident.get(t, (None, None)), ident.get(s, (None, None))
                if sha_t and sha_t == sha_s:
                    pairs.append({"fold": fold["fold"], "test": t, "train": s, "how": "the same image file content"})
                elif hash_t and hash_s and (d := hash_distance(hash_t, hash_s)) <= SAME_IMAGE_BITS:
                    pairs.append({"fold": fold["fold"], "test": t, "train": s, "how": f"thumbnails {d} of 256 bits apart"})
    return pairs


def same_image_message(pairs: list[dict[str, Any]]) -> str:
    p = pairs[0]
    more = f" (and {len(pairs) - 1} more pair(s))" if len(pairs) > 1 else ""
    return (f"fold {p['fold']}: test slide {p['test']} and training slide {p['train']} hold one image ({p['how']}){more}; "
            f"a test on it measures memory, not prediction")


def plan_study(cfg: Any, slides: list[Any], entries: list[dict[str, Any]], recorded: Mapping[str, str]
               ) -> tuple[dict[str, str] | None, list[dict[str, Any]], str, list[dict[str, Any]]]:
    """A train config's grouping of its slides, checked before anything is written: (patients, folds, the grouping
    line for logs and reports, same-image pairs). Sets each slide's ``patient``; one image on both sides of a fold is
    an error unless ``cfg.allow_same_image``, and then the grouping line warns."""
    ids = [s.slide_id for s in slides]
    patients = resolve_patients(ids, cfg.patients, cfg.patient_pattern, recorded)
    for s in slides:
        s.patient = patients[s.slide_id] if patients else None
    folds = plan_folds(ids, cfg.cv, cfg.n_folds, cfg.test_slides, patients, cfg.test_folds)
    grouping = grouping_note(patients, cfg.cv)
    same_image = same_image_pairs(folds, entries)
    if same_image and not cfg.allow_same_image:
        raise DataError(same_image_message(same_image) + " (train.allow_same_image: true to reproduce such a protocol; "
                        "every report then warns)")
    if same_image:
        grouping += f"; WARNING: {same_image_message(same_image)} (allowed by train.allow_same_image)"
    return patients, folds, grouping, same_image

