"""Prompted inference: lesion masks from point/box prompts, on the original PET grid.

Python API (no file I/O needed: usable from a notebook or a 3D Slicer scripted module)::

    seg = Segmenter("runs/x/best")                    # or an exported file, or sam_med3d_turbo.pth
    res = seg.segment(pet, ct=None, prompts="case.json")   # SimpleITK images in, SimpleITK out
    res.labels        # UInt16 label map on the PET grid: lesion prompt -> its own label
    res.mask          # UInt8 binary mask (labels > 0)
    res.probabilities # {lesion_id: Float32 probability image} when probabilities=True
    res.lesions, res.report.summary()
    summary = seg.segment_dataset(cases, "out/", prompts_dir="prompts/")   # a data set -> files + summary

Pipeline for each lesion prompt (``LesionPrompts``):

1. **Crop.**  A ``crop_size``³ network grid at the model spacing (world-aligned RAS+, see
   docs/architecture.md), with the preprocessing of the checkpoint's ``config.json``
   (``input_mode``, ``preprocess``: :class:`~sam_l1dfl.data.preprocess.IntensityConfig`; the
   defaults for official checkpoints), built by :func:`~sam_l1dfl.data.preprocess.make_network_input`.
2. **Encoder** (fast attention path), crops batched ``batch_size`` at a time; then the prompt
   encoder and mask decoder (single-mask output) with the lesion's points (positive and negative,
   cumulative) and its box when the model has box embeddings, and a zero mask prompt, as the
   official ``sam_model_infer``.
3. **Refinement clicks** (evaluation mode, ``reference`` + ``clicks=N``): N more rounds of the
   package's one click loop, :func:`sam_l1dfl.prompts.clicks.simulate_clicks` (also what training
   validation runs): one click against the lesion's reference component in the crop (centre of the
   largest error component), then the decoder with the previous low-resolution logits as the mask
   prompt.  The decoder is injectable (``Segmenter(decoder=...)``, default the model's prompt
   encoder + mask decoder), so tests can substitute an oracle that knows the crop.
4. **Upsample** the 32³ logits trilinearly to the crop (as the official code).
5. **Map back exactly**: ONE linear ``sitk.Resample`` of the crop-space logits onto the PET grid
   (:func:`~sam_l1dfl.data.geometry.crop_to_image`, restricted to the PET sub-grid that the crop
   covers), then threshold there (``probability >= threshold``).  Overlapping lesions: each voxel
   goes to the lesion with the highest probability among those above the threshold.

**Crop sharing.**  Lesions close together share one encoder pass: :func:`plan_windows` clusters
them greedily so that every member's prompt extent (its positive points and box corners) lies
inside the shared window with ``margin_vox`` crop voxels to spare on every side.  The seed of each
window is the unassigned lesion that can share with the most others; candidates join nearest
first while the union of their extents still fits.  A window's centre is the centre of that union
(for a single lesion: the centre of its own extent, which is where an unshared crop goes).  Each
lesion still gets its own decoder pass.  ``share_crops=False`` (the default) gives one encoder
pass per lesion, on a crop centred on that lesion's prompts.  Sharing is opt-in because SAM-Med3D
is trained on crops centred on the target (the official crop is TorchIO's ``CropOrPad`` around
the label; our fine-tuning and the stand-in's pretraining do the same), and a lesion far from
the centre of a shared crop is segmented worse: the stand-in's zero-shot lesion Dice on the 8
held-out synthetic cases of BENCHMARKS.md ("Learning") was 0.072 with sharing and 0.305 without.

**Labels.**  A lesion's label is its prompt ``lesion_id`` when all ids are in 1..65535 (prompt
files and ``--prompts-from-mask`` ids are), else 1..n in prompt order; ``res.lesions`` has the
mapping either way.

Negative points that fall outside their lesion's crop are dropped (counted in the report).  A
model without box embeddings (the official weights) uses boxes only to place the crop; a lesion
prompted by a box alone then gets one positive point at the box centre (noted in the report).

**Reading.**  Cases come through :func:`sam_l1dfl.data.io.load_case` (complete files, label
checks, CT overlap; every error names its file): one case from files with
:func:`load_single_case` (``sam-l1dfl infer --pet``), a data set in :meth:`Segmenter.segment_dataset`.
Images given to :meth:`Segmenter.segment` directly get the same mask and overlap checks.

**Data sets.**  :meth:`Segmenter.segment_dataset` runs a list of cases (``sam-l1dfl infer
--data``): per case ``<case>.nii.gz``, ``lesions/<case>.nii.gz``, ``<case>.json`` (and
``probabilities/<case>/``), an empty mask for a case without prompts, one line per unusable case,
and ``summary.json``; it returns a :class:`DatasetSummary`.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from sam_l1dfl.data.geometry import (CropGeometry, Grid, crop_to_image, grid_differences, image_world_to_index,
                                     images_overlap, resample_to_crop)
from sam_l1dfl.data.io import Case, CaseRecord, load_case, mask_foreground, strip_suffix
from sam_l1dfl.data.lesions import label_components
from sam_l1dfl.data.preprocess import IntensityConfig, make_network_input
from sam_l1dfl.data.suv_sanity import warn_if_not_suv
from sam_l1dfl.errors import CheckpointError, InputError, PromptError, SamL1dflError
from sam_l1dfl.io_utils import write_image_atomic, write_json_atomic
from sam_l1dfl.model import load_sam_med3d, read_model_meta
from sam_l1dfl.model.standin import weights_origin
from sam_l1dfl.model.weights import resolve_model_path
from sam_l1dfl.progress import progress as show_progress
from sam_l1dfl.prompts import CasePrompts, generate_prompts, load_prompts
from sam_l1dfl.prompts.clicks import simulate_clicks

#: Logit given to PET voxels outside a lesion's crop (sigmoid ~ 1e-13).
OUTSIDE_LOGIT = -30.0
STAGES = ("prepare", "crop", "encoder", "decoder", "clicks", "map_back")


# ---------------------------------------------------------------------------------- planning
@dataclass
class Window:
    """One shared network crop: its centre (LPS mm) and the lesions (indices) it serves."""

    center_lps: tuple[float, float, float]
    members: list[int]


def plan_windows(lo: np.ndarray, hi: np.ndarray, crop_size: int = 128, spacing: float = 1.5,
                 margin_vox: float = 16, share: bool = True) -> list[Window]:
    """Group lesions into shared crops (see the module docstring).

    ``lo``/``hi``: (N, 3) LPS extents of each lesion's prompts (crop axes are world-aligned, so
    the box is the same in crop axes).  A window fits a group when the union of its extents spans
    at most ``(crop_size - 1 - 2 * margin_vox) * spacing`` mm on every axis.
    """
    lo = np.asarray(lo, dtype=np.float64).reshape(-1, 3)
    hi = np.asarray(hi, dtype=np.float64).reshape(-1, 3)
    n = len(lo)
    centre = (lo + hi) / 2.0
    if not share or n <= 1:
        return [Window(tuple(float(v) for v in centre[i]), [i]) for i in range(n)]
    span = (crop_size - 1 - 2.0 * margin_vox) * spacing
    # pairwise fit of two lesions' union
    ulo = np.minimum(lo[:, None], lo[None, :])
    uhi = np.maximum(hi[:, None], hi[None, :])
    fits = np.all(uhi - ulo <= span + 1e-9, axis=-1)
    left = np.ones(n, dtype=bool)
    windows: list[Window] = []
    while left.any():
        counts = np.where(left, (fits & left[None, :]).sum(1), -1)
        seed = int(np.argmax(counts))
        members = [seed]
        left[seed] = False
        glo, ghi = lo[seed].copy(), hi[seed].copy()
        cand = [j for j in np.flatnonzero(left & fits[seed])]
        cand.sort(key=lambda j: (float(np.linalg.norm(centre[j] - centre[seed])), j))
        for j in cand:
            nlo, nhi = np.minimum(glo, lo[j]), np.maximum(ghi, hi[j])
            if np.all(nhi - nlo <= span + 1e-9):
                glo, ghi = nlo, nhi
                members.append(int(j))
                left[j] = False
        windows.append(Window(tuple(float(v) for v in (glo + ghi) / 2.0), sorted(members)))
    return windows


# ---------------------------------------------------------------------------------- results
@dataclass
class InferenceReport:
    """What one :meth:`Segmenter.segment` call did (``method``: where the masks came from)."""

    method: str = "sam"
    n_lesions: int = 0
    encoder_passes: int = 0
    decoder_passes: int = 0
    clicks: int = 0
    batch_size: int = 1
    share_crops: bool = False
    device: str = "cpu"
    seconds: dict[str, float] = field(default_factory=lambda: {s: 0.0 for s in STAGES})
    notes: list[str] = field(default_factory=list)

    @property
    def total_seconds(self) -> float:
        return float(sum(self.seconds.values()))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["seconds"] = {k: round(v, 4) for k, v in self.seconds.items()}
        d["total_seconds"] = round(self.total_seconds, 4)
        return d

    def summary(self) -> str:
        per = self.encoder_passes / self.n_lesions if self.n_lesions else 0.0
        lines = [
            f"lesions: {self.n_lesions}   encoder passes: {self.encoder_passes} ({per:.2f} per lesion, "
            f"crop sharing {'on' if self.share_crops else 'off'}, batch {self.batch_size})   "
            f"decoder passes: {self.decoder_passes}   refinement clicks: {self.clicks}   device: {self.device}",
            "seconds: " + "  ".join(f"{k} {v:.2f}" for k, v in self.seconds.items())
            + f"  total {self.total_seconds:.2f}",
        ]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


@dataclass
class SegmentationResult:
    labels: "sitk.Image"
    mask: "sitk.Image"
    probabilities: "dict[int, sitk.Image] | None"
    lesions: list[dict[str, Any]]
    report: InferenceReport

    @classmethod
    def from_labels(cls, pet: "sitk.Image", labels: np.ndarray, lesions: list[dict[str, Any]],
                    report: InferenceReport, probabilities: "dict[int, sitk.Image] | None" = None
                    ) -> "SegmentationResult":
        """The result of a uint16 ``(z, y, x)`` label array on ``pet``'s grid: each lesion record
        (``lesion_id``, ``label``, ...) gets its ``voxels`` and ``volume_ml`` (an empty one a note in
        the report), records sorted by label, the label map and the binary mask as images."""
        counts = np.bincount(labels.ravel(), minlength=max([d["label"] for d in lesions] + [0]) + 1)
        vml = float(np.prod(pet.GetSpacing())) / 1000.0
        for d in lesions:
            d["voxels"] = int(counts[d["label"]])
            d["volume_ml"] = round(d["voxels"] * vml, 4)
            if d["voxels"] == 0:
                report.notes.append(f"lesion {d['lesion_id']}: empty prediction")
        lesions.sort(key=lambda d: d["label"])
        lab_img = sitk.GetImageFromArray(labels)
        lab_img.CopyInformation(pet)
        mask_img = sitk.GetImageFromArray((labels > 0).astype(np.uint8))
        mask_img.CopyInformation(pet)
        return cls(lab_img, mask_img, probabilities, lesions, report)

    def to_dict(self) -> dict:
        """JSON-able record (no images): lesions and the report."""
        return {"lesions": self.lesions, "report": self.report.to_dict()}

    def write(self, mask_path: "str | os.PathLike", labels_path: "str | os.PathLike",
              json_path: "str | os.PathLike", prob_dir: "str | os.PathLike | None" = None,
              extra: "dict | None" = None) -> None:
        """Write the mask, the label map, the JSON record (``extra`` first) and, with ``prob_dir``,
        ``lesion_<id>.nii.gz`` probability maps; atomically."""
        write_image_atomic(self.mask, mask_path)
        write_image_atomic(self.labels, labels_path)
        if prob_dir is not None and self.probabilities:
            for lid, im in self.probabilities.items():
                write_image_atomic(im, Path(prob_dir) / f"lesion_{lid}.nii.gz")
        write_json_atomic(json_path, {**(extra or {}), **self.to_dict()})


@dataclass
class DatasetSummary:
    """What :meth:`Segmenter.segment_dataset` did; :meth:`to_dict` is its ``summary.json``."""

    checkpoint: "str | None"
    data: "str | None"
    cases: int
    clicks: int
    share_crops: bool
    out_dir: str
    method: str = "sam"  # where the masks came from: "sam" or "threshold" (baselines.ThresholdSegmenter)
    weights: "str | None" = None  # the model's weights origin (model.standin.weights_origin); None: no model
    segmented: list[str] = field(default_factory=list)  # case ids
    empty: list[str] = field(default_factory=list)  # "<case>: <why>" (an empty mask was written)
    failed: list[str] = field(default_factory=list)  # "<case>: <error>" (nothing written)
    lesions: int = 0
    encoder_passes: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: {s: 0.0 for s in STAGES})
    wall_seconds: float = 0.0

    def to_dict(self) -> dict:
        n_les, n_enc = self.lesions, self.encoder_passes
        return {
            "method": self.method, "checkpoint": self.checkpoint, "weights": self.weights, "data": self.data,
            "cases": self.cases,
            "segmented": self.segmented, "empty": self.empty, "failed": self.failed, "lesions": n_les,
            "encoder_passes": n_enc, "encoder_passes_per_lesion": round(n_enc / n_les, 4) if n_les else None,
            "clicks": self.clicks, "share_crops": self.share_crops,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "wall_seconds": round(self.wall_seconds, 3),
            "seconds_per_case": round(self.wall_seconds / max(len(self.segmented), 1), 3),
        }


@dataclass
class _Lesion:
    lesion_id: int
    label: int
    pos: np.ndarray  # (P, 3) LPS
    neg: np.ndarray  # (Q, 3) LPS
    boxes: list[np.ndarray]  # (8, 3) LPS corners each
    lo: np.ndarray
    hi: np.ndarray
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------- helpers
def _timer(report: InferenceReport, stage: str, sync: Callable[[], None] | None = None):
    class _T:
        def __enter__(self):
            self.t = time.perf_counter()

        def __exit__(self, *exc):
            if sync is not None:
                sync()
            report.seconds[stage] += time.perf_counter() - self.t

    return _T()


def _fmt(v, nd=1) -> str:
    return "[" + ", ".join(f"{float(x):.{nd}f}" for x in v) + "]"


def _world_bounds_check(image: "sitk.Image", world: np.ndarray) -> np.ndarray:
    """Bool per point: inside the image's voxel extent (half a voxel past the outer centres, +1e-6)."""
    return Grid.from_image(image).contains_world(np.atleast_2d(world), margin=-1e-6)


def _subgrid(reference: "sitk.Image", geom: CropGeometry) -> "tuple[sitk.Image, tuple[slice, slice, slice]] | None":
    """The part of ``reference``'s grid that ``geom`` covers: a small image on the same lattice,
    and its (z, y, x) slices into the full array.  None when they do not overlap."""
    grid = Grid.from_image(reference)
    box = grid.index_box(geom.grid.extent_corners())
    if box is None:
        return None
    return grid.subgrid(*box).reference_image(), Grid.array_slices(*box)


def _resolve_device(device) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(None, f"device {device!r} requested but CUDA is not available")
    return dev


def checkpoint_preprocess(checkpoint: "str | os.PathLike", model_cfg=None) -> tuple["IntensityConfig", dict, str]:
    """``(IntensityConfig, config.json meta, source)`` for a checkpoint.

    Our run/model directories and safetensors carry ``input_mode`` and ``preprocess``; official
    checkpoints (and files without them) get the defaults: PET, SAM-Med3D's z-score, 1.5 mm, 128³
    (``input_mode`` ``pet+ct`` when the model has 2 input channels).
    """
    meta: dict = {}
    source = "defaults (official SAM-Med3D preprocessing)"
    p = resolve_model_path(checkpoint)  # a run directory gives its best/ (or last/)
    if p.is_dir() or p.suffix == ".safetensors":
        try:
            meta = read_model_meta(p)
            source = f"{p if p.is_dir() else p.parent}/config.json" if "preprocess" in meta or "input_mode" in meta \
                else source
        except CheckpointError:
            if p.is_dir():
                raise
            meta = {}
    pre = dict(meta.get("preprocess") or {})
    mode = meta.get("input_mode") or pre.get("input_mode")
    if mode is None and model_cfg is not None and int(getattr(model_cfg, "in_chans", 1)) == 2:
        mode = "pet+ct"
    if mode is not None:
        if pre.get("input_mode") not in (None, mode):
            raise CheckpointError(p, f"config.json input_mode {mode!r} differs from preprocess.input_mode "
                                     f"{pre.get('input_mode')!r}")
        pre["input_mode"] = mode
    try:
        cfg = IntensityConfig.from_dict(pre)
    except InputError as exc:
        raise CheckpointError(p, f"bad preprocess settings in config.json ({exc.problem})") from None
    return cfg, meta, source


# ---------------------------------------------------------------------------------- reading one case
def load_single_case(pet: "str | os.PathLike", ct: "str | os.PathLike | None" = None,
                     reference: "str | os.PathLike | None" = None) -> "tuple[sitk.Image, sitk.Image | None, sitk.Image | None]":
    """``(PET, native CT, binary reference mask)`` of one case read from files (``sam-l1dfl infer
    --pet``), with every check of :func:`~sam_l1dfl.data.io.load_case`: complete files, a mask of
    integer labels >= 0 on the PET grid, a CT that overlaps the PET; each error names its file.
    A reference mask without any lesion is refused too (there is nothing to prompt)."""
    rec = CaseRecord(strip_suffix(Path(pet).name), Path(pet), None if ct is None else Path(ct),
                     None if reference is None else Path(reference))
    case = load_case(rec)
    if case.label is not None and not sitk.GetArrayViewFromImage(case.label).any():
        raise InputError(reference, "the reference mask has no lesion (every voxel is 0): nothing to prompt")
    return case.pet, case.ct_native, case.label


# ---------------------------------------------------------------------------------- segmenter
class Segmenter:
    """Prompted SAM-Med3D segmentation of PET (and CT) volumes; see the module docstring.

    ``checkpoint``: a run/model directory (``runs/<name>/best``), an exported ``.safetensors``/
    ``.pth`` file, or the official ``sam_med3d_turbo.pth``.  ``device``: None picks CUDA when
    available.  ``batch_size``: crops per encoder call.  ``share_crops``/``margin_vox``: crop
    sharing.  ``threshold``: probability threshold on the original grid.  ``autocast``: bf16
    autocast (CUDA only; default off).  ``model``: an already loaded model (then ``checkpoint``
    only names it, and ``preprocess`` gives its :class:`IntensityConfig`).

    ``decoder(emb, points, labels, boxes, mask_input, crops) -> (low_res (B,1,s,s,s), logits
    (B,1,S,S,S) at the crop size, iou (B,))``: what turns a batch of image embeddings and prompts
    (crop voxel indices; ``crops``: the :class:`~sam_l1dfl.data.geometry.CropGeometry` of each
    batch element) into mask logits.  Default :meth:`model_decoder`: the model's prompt encoder and
    mask decoder, upsampled trilinearly.  Another decoder (a test oracle that knows where each
    crop lies) replaces only that step.
    """

    #: Where the masks come from, in every report (``baselines.ThresholdSegmenter``: ``"threshold"``).
    method = "sam"

    def __init__(self, checkpoint: "str | os.PathLike | None" = None, device=None, *, batch_size: int = 2,
                 share_crops: bool = False, margin_vox: float = 16, threshold: float = 0.5,
                 autocast: bool = False, trust: bool = False, model=None,
                 preprocess: "IntensityConfig | None" = None, decoder: "Callable[..., tuple] | None" = None):
        if batch_size < 1:
            raise InputError(None, f"batch_size must be >= 1, got {batch_size}")
        if not 0.0 < float(threshold) < 1.0:
            raise InputError(None, f"threshold must be a probability in (0, 1), got {threshold}")
        self.device = _resolve_device(device)
        self.batch_size = int(batch_size)
        self.share_crops = bool(share_crops)
        self.margin_vox = float(margin_vox)
        self.threshold = float(threshold)
        self.autocast = bool(autocast) and self.device.type == "cuda"
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        if model is None:
            if checkpoint is None:
                raise InputError(None, "give a checkpoint (run directory, exported file or sam_med3d_turbo.pth)")
            p = resolve_model_path(checkpoint)  # also the word "standin"
            model = load_sam_med3d(p, map_location="cpu", trust=trust)
            cfg, self.meta, self.preprocess_source = checkpoint_preprocess(p, model.config)
            self.weights = weights_origin(self.meta, p)
        else:
            cfg, self.meta, self.preprocess_source = preprocess or IntensityConfig(), {}, "given by the caller"
            self.weights = "other"
        self.preprocess: IntensityConfig = preprocess or cfg
        mc = model.config
        where = self.checkpoint
        if self.preprocess.channels != mc.in_chans:
            raise CheckpointError(where, f"input_mode {self.preprocess.input_mode!r} needs "
                                         f"{self.preprocess.channels} channel(s) but the model takes {mc.in_chans}")
        if self.preprocess.crop_size != mc.img_size:
            raise CheckpointError(where, f"preprocess crop_size {self.preprocess.crop_size} differs from the "
                                         f"model's img_size {mc.img_size}")
        model.image_encoder.attn_impl = "auto"  # fast, except where the faithful path is faster (GPU, batch 1)
        self.model = model.to(self.device).eval()
        for prm in self.model.parameters():
            prm.requires_grad_(False)
        self.decoder = decoder if decoder is not None else self.model_decoder

    # ------------------------------------------------------------------ public
    @property
    def input_mode(self) -> str:
        return self.preprocess.input_mode

    @property
    def uses_boxes(self) -> bool:
        """Whether box prompts reach the segmentation (else they only place the crop)."""
        return bool(self.model.config.use_boxes)

    def segment(self, pet: "sitk.Image", ct: "sitk.Image | None" = None,
                prompts: "CasePrompts | str | os.PathLike | None" = None, *,
                reference: "sitk.Image | None" = None, clicks: int = 0, probabilities: bool = False,
                share_crops: bool | None = None, allow_checksum_mismatch: bool = False) -> SegmentationResult:
        """Segment every lesion prompt of ``prompts`` on ``pet``'s grid.

        ``prompts``: a :class:`CasePrompts`, or a prompt file / Slicer ``.mrk.json`` path, a list of
        Slicer files or a folder of them (one case, :func:`~sam_l1dfl.prompts.load_prompts`; checked
        against ``pet``).  None with ``reference``: prompts generated from the reference mask
        (:func:`~sam_l1dfl.prompts.generate_prompts`, defaults: one interior point per lesion).
        ``reference`` + ``clicks`` = N: evaluation mode, N simulated refinement clicks per lesion.
        """
        rep = InferenceReport(batch_size=self.batch_size, device=str(self.device),
                              share_crops=self.share_crops if share_crops is None else bool(share_crops))
        with _timer(rep, "prepare"):
            pet, ct, reference = self._check_images(pet, ct, reference)
            if clicks < 0:
                raise InputError(None, f"clicks must be >= 0, got {clicks}")
            if clicks and reference is None:
                raise InputError(None, "refinement clicks are simulated against a reference mask: give one "
                                       "(--prompts-from-mask SEG)")
            prompts = self._prompts(pet, prompts, reference, allow_checksum_mismatch)
            lesions = self._lesions(pet, prompts, rep)
            rep.n_lesions, rep.clicks = len(lesions), int(clicks)
            comp = None
            if reference is not None and clicks:
                comp = self._reference_components(reference, lesions, rep)
        cfg = self.preprocess
        windows = plan_windows(np.stack([l.lo for l in lesions]), np.stack([l.hi for l in lesions]),
                               cfg.crop_size, cfg.spacing, self.margin_vox, rep.share_crops)
        case = Case(case_id=prompts.case_id or "case", pet=pet, ct_native=ct)
        size_zyx = tuple(reversed(pet.GetSize()))
        best = np.full(size_zyx, -np.inf, dtype=np.float32)
        labels = np.zeros(size_zyx, dtype=np.uint16)
        thr_logit = math.log(self.threshold / (1.0 - self.threshold))
        prob_maps: dict[int, np.ndarray] = {}
        out_lesions: list[dict[str, Any]] = []
        for w0 in range(0, len(windows), self.batch_size):
            chunk = windows[w0:w0 + self.batch_size]
            geoms = [cfg.geometry_at(w.center_lps) for w in chunk]
            with _timer(rep, "crop"):
                x = torch.stack([make_network_input(case, g, self.preprocess) for g in geoms]).to(self.device)
            with _timer(rep, "encoder", self._sync):
                with torch.inference_mode(), self._autocast():
                    emb = self.model.encode(x).float()
            rep.encoder_passes += len(chunk)
            del x
            items = [(w0 + wi, wi, li) for wi, w in enumerate(chunk) for li in w.members]
            results = self._decode_lesions(items, emb, geoms, lesions, comp, clicks, rep)
            with _timer(rep, "map_back"):
                for (gwi, wi, li), (logits, iou, npts) in zip(items, results):
                    les = lesions[li]
                    sub = _subgrid(pet, geoms[wi])
                    vox = 0
                    if sub is not None:
                        ref_small, sl = sub
                        img = crop_to_image(logits, geoms[wi], ref_small, "linear", OUTSIDE_LOGIT)
                        a = sitk.GetArrayViewFromImage(img)
                        b, lab = best[sl], labels[sl]
                        upd = (a >= thr_logit) & (a > b)
                        b[upd] = a[upd]
                        lab[upd] = les.label
                        if probabilities:
                            pm = np.zeros(size_zyx, dtype=np.float32)
                            pm[sl] = 1.0 / (1.0 + np.exp(-np.asarray(a, dtype=np.float64)))
                            prob_maps[les.lesion_id] = pm
                    out_lesions.append({"lesion_id": les.lesion_id, "label": les.label, "window": gwi,
                                        "window_center_lps": [round(v, 3) for v in windows[gwi].center_lps],
                                        "n_points": npts, "iou_pred": round(float(iou), 4), "notes": les.notes})
        with _timer(rep, "map_back"):
            probs = None
            if probabilities:
                probs = {}
                for lid, pm in prob_maps.items():
                    im = sitk.GetImageFromArray(pm)
                    im.CopyInformation(pet)
                    probs[lid] = im
            return SegmentationResult.from_labels(pet, labels, out_lesions, rep, probs)

    def segment_dataset(self, cases: "Sequence[CaseRecord]", out_dir: "str | os.PathLike", *,
                        prompts_dir: "str | os.PathLike | None" = None, from_mask: bool = False, clicks: int = 0,
                        probabilities: bool = False, allow_checksum_mismatch: bool = False,
                        data: "str | os.PathLike | None" = None, progress: bool = True,
                        on_case: "Callable[[str, SegmentationResult], None] | None" = None) -> DatasetSummary:
        """Segment every case (``sam-l1dfl infer --data``) and write, atomically, into ``out_dir``:
        ``<case>.nii.gz`` (binary; what ``sam-l1dfl evaluate`` reads), ``lesions/<case>.nii.gz``,
        ``<case>.json``, ``probabilities/<case>/`` with ``probabilities``, and ``summary.json``.

        Prompts: ``prompts_dir`` (``<case>.json``, ``<case>.mrk.json``, or a ``<case>/`` folder of
        Slicer markups files), or ``from_mask`` (each
        case's label, optionally with ``clicks`` refinement clicks).  A case without a prompt file
        or without a reference lesion gets an empty mask; a case whose files are unusable is listed
        in ``failed`` with its one-line reason.  ``data`` names the source in the summary;
        ``on_case(case_id, result)`` is called after each segmented case.
        """
        cases = list(cases)
        if not cases:
            raise InputError(data, "no case found")
        if (prompts_dir is None) == (not from_mask):
            raise InputError(None, "give either prompts_dir or from_mask")
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise InputError(out, "exists and is not a folder")
        pdir = Path(prompts_dir) if prompts_dir is not None else None
        if pdir is not None and not pdir.is_dir():
            raise InputError(pdir, "prompt folder does not exist")
        needs_ct = self.preprocess.needs_ct
        summary = DatasetSummary(self.checkpoint, None if data is None else str(data), len(cases), int(clicks),
                                 self.share_crops, str(out), self.method, self.weights)
        t0 = time.perf_counter()
        bar = show_progress(cases, desc="infer", unit="case", enabled=progress)
        for rec in bar:
            try:
                case = load_case(rec, load_ct=needs_ct, load_label=from_mask)
                warn_if_not_suv(sitk.GetArrayViewFromImage(case.pet), rec.pet)
                if from_mask and case.label is None:
                    raise InputError(rec.pet, f"case {rec.case_id} has no label for --prompts-from-mask")
                if needs_ct and case.ct_native is None:
                    raise InputError(rec.pet, f"case {rec.case_id} has no CT but the checkpoint's input_mode is "
                                              f"{self.input_mode!r}")
                prompts = None
                if pdir is not None:
                    cands = [pdir / f"{rec.case_id}.json", pdir / f"{rec.case_id}.mrk.json", pdir / rec.case_id]
                    prompts = next((c for c in cands if c.is_file() or c.is_dir()), None)
                    why = "no prompt file"
                else:
                    why = "no lesion in the reference mask"
                if (pdir is not None and prompts is None) or (from_mask and not sitk.GetArrayViewFromImage(case.label).any()):
                    _write_empty(case.pet, out, rec.case_id, why, self.method)
                    summary.empty.append(f"{rec.case_id}: {why}")
                    continue
                res = self.segment(case.pet, case.ct_native if needs_ct else None, prompts=prompts,
                                   reference=case.label if from_mask else None, clicks=clicks,
                                   probabilities=probabilities, allow_checksum_mismatch=allow_checksum_mismatch)
            except SamL1dflError as exc:
                summary.failed.append(f"{rec.case_id}: {exc}")
                continue
            res.write(out / f"{rec.case_id}.nii.gz", out / "lesions" / f"{rec.case_id}.nii.gz",
                      out / f"{rec.case_id}.json", out / "probabilities" / rec.case_id if probabilities else None,
                      {"case_id": rec.case_id, "pet": str(rec.pet), "prompts": None if prompts is None else str(prompts),
                       "method": self.method, "checkpoint": self.checkpoint})
            r = res.report
            summary.lesions += r.n_lesions
            summary.encoder_passes += r.encoder_passes
            for k, v in r.seconds.items():
                summary.seconds[k] += v
            summary.segmented.append(rec.case_id)
            bar.set_postfix(lesions=summary.lesions, passes=summary.encoder_passes)
            if on_case is not None:
                on_case(rec.case_id, res)
        summary.wall_seconds = time.perf_counter() - t0
        write_json_atomic(out / "summary.json", summary.to_dict())
        return summary

    # ------------------------------------------------------------------ checks and prompts
    def _check_images(self, pet, ct, reference):
        where = self.checkpoint
        if not isinstance(pet, sitk.Image) or pet.GetDimension() != 3:
            raise InputError(None, "pet must be a 3D SimpleITK image")
        if pet.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(None, "pet must be a scalar image")
        if pet.GetPixelID() != sitk.sitkFloat32:
            pet = sitk.Cast(pet, sitk.sitkFloat32)
        mode = self.preprocess.input_mode
        if self.preprocess.needs_ct and ct is None:
            raise InputError(where, f"the checkpoint's input_mode is {mode!r}: it needs a CT (give --ct / ct=...)")
        if not self.preprocess.needs_ct and ct is not None:
            raise InputError(where, f"the checkpoint's input_mode is {mode!r} (PET only) but a CT was given; "
                                    "use a PET+CT checkpoint or leave the CT out")
        if ct is not None:
            if not isinstance(ct, sitk.Image) or ct.GetDimension() != 3:
                raise InputError(None, "ct must be a 3D SimpleITK image")
            if not images_overlap(pet, ct):
                raise InputError(None, "the CT does not overlap the PET in world space (check the headers)")
        if reference is not None:
            diffs = grid_differences(pet, reference)
            if diffs:
                raise InputError(None, "reference mask grid differs from the PET grid (mask vs PET: "
                                       + "; ".join(diffs) + ")")
            reference = sitk.GetImageFromArray(mask_foreground(reference, None, "reference mask").astype(np.uint8))
            reference.CopyInformation(pet)
        return pet, ct, reference

    def _prompts(self, pet, prompts, reference, allow_mismatch):
        if prompts is None:
            if reference is None:
                raise PromptError(None, "no prompts: give a prompt file, CasePrompts, or a reference mask")
            return generate_prompts(reference, pet)
        if isinstance(prompts, (str, os.PathLike, list, tuple)):  # a file, several, or a folder of markups
            for p in [prompts] if isinstance(prompts, (str, os.PathLike)) else prompts:
                if not Path(p).exists():
                    raise PromptError(p, "prompt file not found")
            return load_prompts(prompts, image=pet, allow_checksum_mismatch=allow_mismatch,
                                crop_mm=(self.preprocess.crop_size - 1) * self.preprocess.spacing)
        if not isinstance(prompts, CasePrompts):
            raise PromptError(None, f"prompts must be CasePrompts or a file path, got {type(prompts).__name__}")
        if not prompts.lesions:
            raise PromptError(None, "no lesion prompt (empty 'lesions' list)")
        return prompts

    def _lesions(self, pet, prompts, rep: InferenceReport) -> list[_Lesion]:
        where = prompts.image.path if prompts.image is not None and prompts.image.path else prompts.case_id
        ids = [l.lesion_id for l in prompts.lesions]
        if len(set(ids)) != len(ids):
            raise PromptError(where, "duplicate lesion ids in the prompts")
        use_ids = all(isinstance(i, (int, np.integer)) and 1 <= int(i) <= 65535 for i in ids)
        if not use_ids:
            rep.notes.append("lesion ids are not all in 1..65535: labels are 1..n in prompt order")
        out = []
        for n, lp in enumerate(prompts.lesions):
            pos = np.array([p.world for p in lp.points if p.positive], dtype=np.float64).reshape(-1, 3)
            neg = np.array([p.world for p in lp.points if not p.positive], dtype=np.float64).reshape(-1, 3)
            boxes = [np.asarray(b.corners_world(), dtype=np.float64) for b in lp.boxes]
            pts = np.concatenate([pos, neg])
            for b in lp.boxes:
                if not _world_bounds_check(pet, np.asarray(b.center)[None])[0]:
                    raise PromptError(where, f"lesion {lp.lesion_id}: box centred at {_fmt(b.center)} mm lies "
                                             f"outside the PET image (size {list(pet.GetSize())})")
            if len(pts):
                inside = _world_bounds_check(pet, pts)
                if not inside.all():
                    bad = pts[int(np.flatnonzero(~inside)[0])]
                    raise PromptError(where, f"lesion {lp.lesion_id}: point at {_fmt(bad)} mm lies outside the "
                                             f"PET image (size {list(pet.GetSize())})")
            notes = []
            if len(pos) == 0 and not boxes:
                raise PromptError(where, f"lesion {lp.lesion_id} has no positive point and no box")
            if len(pos) == 0 and not self.uses_boxes:
                c = np.mean([b.mean(0) for b in boxes], axis=0)
                pos = c[None]
                notes.append("model has no box embeddings: box centre used as a positive point")
                rep.notes.append(f"lesion {lp.lesion_id}: " + notes[-1])
            ext = np.concatenate([pos] + boxes)
            out.append(_Lesion(int(lp.lesion_id), int(lp.lesion_id) if use_ids else n + 1, pos, neg,
                               boxes if self.uses_boxes else [], ext.min(0), ext.max(0), notes))
        return out

    def _reference_components(self, reference, lesions: list[_Lesion], rep: InferenceReport):
        """Instance image of the reference (18-connected components) and each lesion's component id
        (the component under most of its positive points; 0 = none)."""
        comps, _ = label_components(sitk.GetArrayViewFromImage(reference) > 0, 18)
        inst = sitk.GetImageFromArray(comps.astype(np.uint32))
        inst.CopyInformation(reference)
        size = np.asarray(reference.GetSize())
        ids = []
        for les in lesions:
            idx = np.rint(image_world_to_index(reference, les.pos)).astype(np.int64)
            idx = np.clip(idx, 0, size - 1)
            vals = comps[idx[:, 2], idx[:, 1], idx[:, 0]]
            vals = vals[vals > 0]
            cid = int(np.bincount(vals).argmax()) if len(vals) else 0
            if cid == 0:
                les.notes.append("no reference lesion under its positive points: clicks see an empty reference")
                rep.notes.append(f"lesion {les.lesion_id}: " + les.notes[-1])
            ids.append(cid)
        return inst, ids

    # ------------------------------------------------------------------ network
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _autocast(self):
        if self.autocast:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def model_decoder(self, emb, points, labels, boxes, mask_input, crops=None):
        """The default decoder: one batched prompt encoder + mask decoder call (single-mask output),
        upsampled trilinearly to the crop, as the official ``sam_model_infer``.  ``crops`` is not
        needed here (see the class docstring)."""
        with torch.inference_mode(), self._autocast():
            low, iou = self.model.decode(emb, points, labels, boxes, mask_input, multimask_output=False)
        low = low.float()
        s = self.preprocess.crop_size
        logits = F.interpolate(low, size=(s, s, s), mode="trilinear", align_corners=False)
        return low, logits, iou.float().reshape(-1)

    def _decode_lesions(self, items, emb, geoms, lesions: list[_Lesion], comp, n_clicks: int,
                        rep: InferenceReport) -> list[tuple[np.ndarray, float, int]]:
        """Decoder (and refinement clicks) for the lesions of one encoder batch.

        Lesions with the same number of points and boxes are decoded together.  Returns per item
        ``(crop logits (X, Y, Z) float32, predicted IoU, number of points used)``."""
        cfg = self.preprocess
        s = cfg.crop_size
        low_s = self.model.config.low_res_size
        prepared = []
        with _timer(rep, "decoder"):
            for gwi, wi, li in items:
                les, geom = lesions[li], geoms[wi]
                pos = geom.world_to_index(les.pos) if len(les.pos) else np.zeros((0, 3))
                neg = geom.world_to_index(les.neg) if len(les.neg) else np.zeros((0, 3))
                if len(neg):
                    keep = geom.contains_index(neg)
                    if not keep.all():
                        msg = f"{int((~keep).sum())} negative point(s) outside the crop dropped"
                        les.notes.append(msg)
                        rep.notes.append(f"lesion {les.lesion_id}: {msg}")
                    neg = neg[keep]
                pts = np.concatenate([pos, neg]).astype(np.float32)
                lab = np.array([1] * len(pos) + [0] * len(neg), dtype=np.int64)
                box = None
                if les.boxes:
                    ci = np.concatenate([geom.world_to_index(b) for b in les.boxes])
                    box = np.clip(np.stack([ci.min(0), ci.max(0)]), -0.5, s - 0.5).astype(np.float32)
                prepared.append((pts, lab, box))
        results: list = [None] * len(items)
        groups: dict[tuple[int, bool], list[int]] = {}
        for k, (pts, lab, box) in enumerate(prepared):
            groups.setdefault((len(pts), box is not None), []).append(k)
        for (npts, has_box), ks in groups.items():
            with _timer(rep, "decoder"):
                dev = self.device
                e = emb[[items[k][1] for k in ks]]
                pts = torch.from_numpy(np.stack([prepared[k][0] for k in ks])).to(dev) if npts else None
                lab = torch.from_numpy(np.stack([prepared[k][1] for k in ks])).to(dev) if npts else None
                box = torch.from_numpy(np.stack([prepared[k][2] for k in ks])).to(dev) if has_box else None
                mask_in = torch.zeros((len(ks), 1, low_s, low_s, low_s), device=dev)
                g = [geoms[items[k][1]] for k in ks]
                low, logits, iou = self.decoder(e, pts, lab, box, mask_in, g)
                rep.decoder_passes += len(ks)
            if n_clicks:
                inst, ids = comp
                with _timer(rep, "clicks"):
                    gt = torch.from_numpy(np.stack([
                        (np.asarray(_crop_instance(inst, gg)) == ids[items[k][2]]) & (ids[items[k][2]] > 0)
                        for k, gg in zip(ks, g)])[:, None]).to(dev)

                def decode(points, labels, mask_prompt, e=e, box=box, g=g):
                    return self.decoder(e, points, labels, box, mask_prompt, g)

                for r in simulate_clicks(decode, gt, n_clicks, mask_prompt=low, logits=logits, points=pts,
                                         labels=lab, stage=lambda name: _timer(rep, name)):
                    rep.decoder_passes += len(ks)
                pts, logits, iou = r.points, r.logits, r.iou
            with _timer(rep, "map_back", self._sync):
                out = logits[:, 0].detach().float().cpu().numpy()
                iou_c = iou.detach().float().cpu().numpy()
            n_used = 0 if pts is None else int(pts.shape[1])
            for j, k in enumerate(ks):
                results[k] = (out[j], float(iou_c[j]), n_used)
        return results


def _write_empty(pet: sitk.Image, out: Path, case_id: str, why: str, method: str) -> None:
    """The outputs of a case with nothing to segment: empty mask and label map, and a JSON note."""
    z = sitk.Image(pet.GetSize(), sitk.sitkUInt8)
    z.CopyInformation(pet)
    write_image_atomic(z, out / f"{case_id}.nii.gz")
    write_image_atomic(sitk.Cast(z, sitk.sitkUInt16), out / "lesions" / f"{case_id}.nii.gz")
    write_json_atomic(out / f"{case_id}.json", {"case_id": case_id, "method": method, "lesions": [],
                                                "note": f"{why}: empty prediction"})


def _crop_instance(inst: "sitk.Image", geom: CropGeometry) -> np.ndarray:
    return resample_to_crop(inst, geom, "nearest", 0)


__all__ = ["DatasetSummary", "InferenceReport", "OUTSIDE_LOGIT", "STAGES", "Segmenter", "SegmentationResult",
           "Window", "checkpoint_preprocess", "load_single_case", "plan_windows"]
