"""Find PET/CT/label cases in the layouts users bring.

* **autoPET**: any folder (at any depth) holding ``SUV.<ext>`` with ``CTres.<ext>`` or
  ``CT.<ext>`` and ``SEG.<ext>`` (the FDG/PSMA challenge layout ``<patient>/<study>/...``).
  The case id is the folder path relative to the root, ``/`` replaced by ``_``.
* **nnU-Net**: ``imagesTr/<case>_XXXX.<ext>`` with ``labelsTr/<case>.<ext>`` (and ``imagesTs``
  without labels).  The channel meaning comes from ``dataset.json`` ``channel_names`` (v2) or
  ``modality`` (v1); PET (``PET``/``SUV``) and CT may come in either order.
* **Manifest**: a ``.csv`` or ``.json`` file with ``pet``, optional ``ct``, ``label`` and
  ``case_id`` columns (JSON: a list of such objects, or ``{"cases": [...]}``); relative paths are
  relative to the manifest.

Any file SimpleITK reads is accepted (``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``, ``.mha``,
``.mhd``).  Nothing is skipped silently: a case with a problem is listed in
:attr:`DiscoveryReport.problems` with its reason.  With ``check_headers=True`` every file's header
is read (fast) and label/PET grid mismatches and non-3D images are reported too.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from sam_l1dfl.data.geometry import Grid, grid_differences
from sam_l1dfl.data.io import IMAGE_SUFFIXES, CaseRecord, image_suffix, read_image_info, strip_suffix
from sam_l1dfl.errors import InputError

AUTOPET_PET = ("SUV",)
AUTOPET_CT = ("CTres", "CT")
AUTOPET_LABEL = ("SEG",)


@dataclass(frozen=True)
class CaseProblem:
    case_id: str
    reason: str
    paths: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.case_id}: {self.reason}"


@dataclass
class DiscoveryReport:
    """What :func:`discover_cases` found: the usable cases and every problem, with reasons."""

    root: Path
    layout: str  # "autopet" | "nnunet" | "manifest"
    cases: list[CaseRecord] = field(default_factory=list)
    problems: list[CaseProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def n_with_label(self) -> int:
        return sum(c.label is not None for c in self.cases)

    @property
    def n_with_ct(self) -> int:
        return sum(c.ct is not None for c in self.cases)

    def to_dict(self) -> dict:
        return {"root": str(self.root), "layout": self.layout,
                "cases": [c.to_dict() for c in self.cases],
                "problems": [{"case_id": p.case_id, "reason": p.reason, "paths": list(p.paths)}
                             for p in self.problems],
                "notes": list(self.notes)}

    def summary(self) -> str:
        lines = [f"{self.root}: {self.layout} layout, {len(self.cases)} case(s) "
                 f"({self.n_with_ct} with CT, {self.n_with_label} with label), "
                 f"{len(self.problems)} problem(s)"]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def table(self) -> str:
        rows = [("case", "PET", "CT", "label")]
        for c in self.cases:
            rows.append((c.case_id, _short(c.pet, self.root), _short(c.ct, self.root), _short(c.label, self.root)))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        out = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
        if self.problems:
            out.append("")
            out.append("problems:")
            out += [f"  {p}" for p in self.problems]
        return "\n".join(out)


def _short(p: Path | None, root: Path) -> str:
    if p is None:
        return "-"
    base = root if root.is_dir() else root.parent
    try:
        return str(Path(p).relative_to(base))
    except ValueError:
        return str(p)


# ---------------------------------------------------------------------- entry point
def discover_cases(path: "str | os.PathLike", check_headers: bool = False) -> DiscoveryReport:
    """Detect the layout of ``path`` and list its cases and problems.

    Raises :class:`InputError` when ``path`` does not exist or matches no layout.
    """
    root = Path(path)
    if not root.exists():
        raise InputError(root, "not found")
    if root.is_file():
        if root.suffix.lower() in (".csv", ".json"):
            report = _discover_manifest(root)
        else:
            raise InputError(root, "expected a data folder or a .csv/.json manifest")
    elif (root / "imagesTr").is_dir() or (root / "imagesTs").is_dir():
        report = _discover_nnunet(root)
    else:
        report = _discover_autopet(root)
        if report is None:
            manifests = sorted(p.name for p in root.iterdir() if p.suffix.lower() in (".csv",) and p.is_file())
            hint = f" (found {', '.join(manifests)}: pass the manifest file itself)" if manifests else ""
            raise InputError(root, "no autoPET (SUV + CT/CTres + SEG), nnU-Net (imagesTr/labelsTr) "
                                   "or manifest layout found" + hint)
    _check_duplicates(report)
    if check_headers:
        _check_headers(report)
    return report


def _check_duplicates(report: DiscoveryReport) -> None:
    seen: dict[str, int] = {}
    keep = []
    for c in report.cases:
        seen[c.case_id] = seen.get(c.case_id, 0) + 1
    for c in report.cases:
        if seen[c.case_id] > 1:
            report.problems.append(CaseProblem(c.case_id, f"case id appears {seen[c.case_id]} times",
                                               (str(c.pet),)))
        else:
            keep.append(c)
    report.cases = keep


def _check_headers(report: DiscoveryReport) -> None:
    keep = []
    for c in report.cases:
        try:
            infos = {}
            for kind, p in (("PET", c.pet), ("CT", c.ct), ("label", c.label)):
                if p is None:
                    continue
                r = read_image_info(p)
                if r.GetDimension() != 3 and not (r.GetDimension() == 4 and r.GetSize()[3] == 1):
                    raise InputError(p, f"{kind} is a {r.GetDimension()}D image (size {r.GetSize()}); "
                                        "expected a 3D volume")
                infos[kind] = r
            if "label" in infos:
                try:
                    grids = [Grid.from_image(infos[k]) for k in ("PET", "label")]
                except ValueError as exc:  # e.g. a zero spacing in a header
                    raise InputError(c.label, f"invalid header ({exc})") from None
                diffs = grid_differences(*grids)
                if diffs:
                    raise InputError(c.label, "label grid differs from the PET grid (label vs PET: "
                                              + "; ".join(diffs) + ")")
        except InputError as exc:
            report.problems.append(CaseProblem(c.case_id, str(exc), tuple(str(p) for p in (c.pet, c.ct, c.label) if p)))
            continue
        keep.append(c)
    report.cases = keep


# ---------------------------------------------------------------------- autoPET
def _images_in(folder: Path) -> dict[str, Path]:
    """stem -> path for the image files directly in ``folder``."""
    out = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and image_suffix(p.name):
            out.setdefault(strip_suffix(p.name), p)
    return out


def _pick(images: dict[str, Path], names: Iterable[str]) -> Path | None:
    low = {k.lower(): v for k, v in images.items()}
    for n in names:
        if n.lower() in low:
            return low[n.lower()]
    return None


def _discover_autopet(root: Path) -> DiscoveryReport | None:
    report = DiscoveryReport(root=root, layout="autopet")
    found_any = False
    names_all = {n.lower() for n in AUTOPET_PET + AUTOPET_CT + AUTOPET_LABEL}
    for folder, dirs, _files in os.walk(root):
        dirs.sort()
        folder = Path(folder)
        images = _images_in(folder)
        relevant = {k: v for k, v in images.items() if k.lower() in names_all}
        if not relevant:
            continue
        found_any = True
        rel = folder.relative_to(root)
        case_id = "_".join(rel.parts) if rel.parts else root.name
        pet = _pick(images, AUTOPET_PET)
        ct = _pick(images, AUTOPET_CT)
        label = _pick(images, AUTOPET_LABEL)
        paths = tuple(str(p) for p in relevant.values())
        if pet is None:
            report.problems.append(CaseProblem(case_id, f"no SUV image (found {', '.join(sorted(relevant))})", paths))
            continue
        if ct is None:
            report.notes.append(f"{case_id}: no CTres/CT image (PET-only)")
        if label is None:
            report.notes.append(f"{case_id}: no SEG label (usable for inference only)")
        report.cases.append(CaseRecord(case_id, pet, ct, label))
    return report if found_any else None


# ---------------------------------------------------------------------- nnU-Net
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


def _channel_map(root: Path, report: DiscoveryReport) -> tuple[int | None, int | None, str | None]:
    """(pet channel, ct channel, file ending) from dataset.json."""
    ds = root / "dataset.json"
    if not ds.is_file():
        report.notes.append("no dataset.json: assuming channel 0000 is PET and 0001 (if present) is CT")
        return 0, 1, None
    try:
        meta = json.loads(ds.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(ds, f"not valid JSON ({exc})") from None
    names = meta.get("channel_names") or meta.get("modality")
    if not isinstance(names, dict) or not names:
        raise InputError(ds, "has no 'channel_names' (or 'modality') mapping; cannot tell PET from CT")
    pet = ct = None
    for k, v in names.items():
        try:
            idx = int(k)
        except ValueError:
            raise InputError(ds, f"channel_names key {k!r} is not a channel number") from None
        name = str(v).strip().lower()
        if pet is None and ("pet" in name or "suv" in name):
            pet = idx
        elif ct is None and re.search(r"(^|[^a-z])ct([^a-z]|$)", name):
            ct = idx
        else:
            report.notes.append(f"dataset.json channel {idx} ({v!r}) is neither PET nor CT: ignored")
    if pet is None:
        raise InputError(ds, f"no PET channel in channel_names {names} (expected a name containing 'PET' or 'SUV')")
    ending = meta.get("file_ending")
    return pet, ct, ending


def nnunet_pet_file(folder: "str | os.PathLike", case: str) -> Path | None:
    """The PET image ``<case>_XXXX.<ext>`` of an nnU-Net case, or None.

    ``folder`` is an images folder (``imagesTs``, ``imagesTr``: ``dataset.json`` one level up) or
    the dataset folder holding them; ``XXXX`` is the PET channel of ``dataset.json`` (``0000``
    without one, as :func:`discover_cases` assumes).
    """
    folder = Path(folder)
    for d in (folder, folder / "imagesTs", folder / "imagesTr"):
        if not d.is_dir():
            continue
        root = d if (d / "dataset.json").is_file() else d.parent
        pet_ch = _channel_map(root, DiscoveryReport(root=root, layout="nnunet"))[0]
        for e in IMAGE_SUFFIXES:
            p = d / f"{case}_{pet_ch:04d}{e}"
            if p.is_file():
                return p
    return None


def _discover_nnunet(root: Path) -> DiscoveryReport:
    report = DiscoveryReport(root=root, layout="nnunet")
    pet_ch, ct_ch, ending = _channel_map(root, report)
    if ending is not None and ending.lower() not in IMAGE_SUFFIXES:
        report.notes.append(f"dataset.json file_ending {ending!r} is not one we scan for")
    for images_dir, labels_dir in (("imagesTr", "labelsTr"), ("imagesTs", "labelsTs")):
        idir = root / images_dir
        if not idir.is_dir():
            continue
        ldir = root / labels_dir
        labels = _images_in(ldir) if ldir.is_dir() else {}
        channels: dict[str, dict[int, Path]] = {}
        for stem, p in _images_in(idir).items():
            m = _CHANNEL_RE.match(stem)
            if not m:
                report.problems.append(CaseProblem(stem, f"{images_dir}/{p.name} is not named <case>_XXXX", (str(p),)))
                continue
            channels.setdefault(m["case"], {})[int(m["ch"])] = p
        for case_id, chans in sorted(channels.items()):
            paths = tuple(str(p) for p in chans.values())
            if pet_ch not in chans:
                report.problems.append(CaseProblem(case_id, f"PET channel {pet_ch:04d} missing in {images_dir}", paths))
                continue
            ct = chans.get(ct_ch) if ct_ch is not None else None
            if ct_ch is not None and ct is None and (root / "dataset.json").is_file():
                report.problems.append(CaseProblem(case_id, f"CT channel {ct_ch:04d} missing in {images_dir}", paths))
                continue
            label = labels.pop(case_id, None)
            if label is None and images_dir == "imagesTr":
                report.problems.append(CaseProblem(case_id, f"no label {labels_dir}/{case_id}.* for a training case", paths))
                continue
            report.cases.append(CaseRecord(case_id, chans[pet_ch], ct, label))
        for stem, p in labels.items():
            report.problems.append(CaseProblem(stem, f"label {labels_dir}/{p.name} has no images in {images_dir}", (str(p),)))
    return report


# ---------------------------------------------------------------------- manifest
_ID_KEYS = ("case_id", "case", "id", "subject")


def _discover_manifest(path: Path) -> DiscoveryReport:
    report = DiscoveryReport(root=path, layout="manifest")
    rows = _read_manifest(path)
    base = path.parent
    for n, row in enumerate(rows, start=1):
        row = {str(k).strip().lower(): (None if v is None else str(v).strip()) for k, v in row.items() if k is not None}
        case_id = next((row[k] for k in _ID_KEYS if row.get(k)), None)
        pet = row.get("pet")
        if not pet:
            report.problems.append(CaseProblem(case_id or f"row {n}", "no 'pet' value"))
            continue
        paths = {k: (None if not row.get(k) else _resolve(base, row[k])) for k in ("pet", "ct", "label")}
        case_id = case_id or strip_suffix(paths["pet"].name)
        missing = [f"{k} {paths[k]}" for k in ("pet", "ct", "label") if paths[k] is not None and not paths[k].is_file()]
        if missing:
            report.problems.append(CaseProblem(case_id, "file not found: " + ", ".join(missing),
                                               tuple(str(p) for p in paths.values() if p)))
            continue
        report.cases.append(CaseRecord(case_id, paths["pet"], paths["ct"], paths["label"]))
    if not rows:
        report.notes.append("manifest has no rows")
    return report


def _resolve(base: Path, p: str) -> Path:
    q = Path(p).expanduser()
    return q if q.is_absolute() else base / q


def _read_manifest(path: Path) -> list[dict]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read manifest ({exc})") from None
    if path.suffix.lower() == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(path, f"not valid JSON ({exc})") from None
        if isinstance(obj, dict):
            obj = obj.get("cases")
        if not isinstance(obj, list) or not all(isinstance(r, dict) for r in obj):
            raise InputError(path, "expected a list of {pet, ct, label} objects (or {\"cases\": [...]})")
        return obj
    reader = csv.DictReader(text.splitlines())
    cols = [c.strip().lower() for c in (reader.fieldnames or [])]
    if "pet" not in cols:
        raise InputError(path, f"CSV manifest needs a 'pet' column (found {cols})")
    return list(reader)


# ---------------------------------------------------------------------- shards
#: The folder a shard writes its outputs into, below the command's ``--out-dir``.
SHARD_DIR = re.compile(r"^shard-(\d+)-of-(\d+)$")


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> ``(K, N)`` with 1 <= K <= N (``--shard 2/3``: the second of three parts)."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise InputError(None, f"--shard must be K/N with 1 <= K <= N (e.g. 2/3), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def shard_dir_name(k: int, n: int) -> str:
    """``shard-K-of-N``: where shard K of N writes below the output folder."""
    return f"shard-{k}-of-{n}"


def select_shard(cases: "Iterable[CaseRecord]", k: int, n: int) -> list[CaseRecord]:
    """Part ``k`` of ``n`` (1-based) of ``cases``: sorted by case id and cut into ``n`` consecutive
    parts whose sizes differ by at most one (the first ``len % n`` parts hold one more), so every
    case is in exactly one part and the parts depend only on the set of case ids (``split -n K/N``)."""
    if not 1 <= k <= n:
        raise InputError(None, f"shard {k}/{n}: need 1 <= K <= N")
    ordered = sorted(cases, key=lambda c: c.case_id)
    q, r = divmod(len(ordered), n)
    start = (k - 1) * q + min(k - 1, r)
    return ordered[start:start + q + (1 if k <= r else 0)]


__all__ = ["SHARD_DIR", "CaseProblem", "DiscoveryReport", "discover_cases", "nnunet_pet_file", "parse_shard", "select_shard",
           "shard_dir_name"]
