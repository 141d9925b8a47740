"""Prompted inference: lesion masks from point/box prompts, on the original PET grid.

Python API (no file I/O needed: usable from a notebook or a 3D Slicer scripted module)::

    seg = Segmenter("runs/x/best")                    # or an exported file, or sam_med3d_turbo.pth
    res = seg.segment(pet, ct=None, prompts="case.json")   # SimpleITK images in, SimpleITK out
    res.labels        # UInt16 label map on the PET grid: lesion prompt -> its own label
    res.mask          # UInt8 binary mask (labels > 0)
    res.probabilities # {lesion_id: Float32 probability image} when probabilities=True
    res.lesions, res.report.summary()
    summary = seg.segment_dataset(cases, "out/", prompts_dir="prompts/")   # a data set -> files + summary

:class:`Segmenter` is the one public face; each step of :meth:`Segmenter.segment` is a module of
this package:

1. **Lesions** (:mod:`.lesions`, :class:`~.lesions.PromptResolver`): the images checked, the
   prompts read or generated, each lesion prompt resolved into points, boxes and an extent.
2. **Crops** (:mod:`.planning`): a ``crop_size``³ network grid at the model spacing (world-aligned
   RAS+, see docs/architecture.md) centred on each lesion's prompts, or shared by lesions close
   together (``share_crops``, :func:`plan_windows`), batched ``batch_size`` at a time.
3. **Encoder** (:mod:`.encoding`, :class:`~.encoding.CropEncoder`): the crops with the
   preprocessing of the checkpoint's ``config.json`` (``input_mode``, ``preprocess``:
   :class:`~sam_l1dfl.data.preprocess.IntensityConfig`; the defaults for official checkpoints),
   built by :func:`~sam_l1dfl.data.preprocess.make_network_input`, through the image encoder.
4. **Decoder and refinement clicks** (:mod:`.decoding`, :class:`~.decoding.LesionDecoder`): the
   prompt encoder and mask decoder per lesion, then, with ``reference`` + ``clicks=N``, N rounds of
   the package's one click loop.  The decoder is injectable (``Segmenter(decoder=...)``, default
   :meth:`Segmenter.model_decoder`), so tests can substitute an oracle that knows the crop.
5. **Map back exactly** (:mod:`.mapping`, :class:`~.mapping.LabelCanvas`): ONE linear
   ``sitk.Resample`` of the crop-space logits onto the PET grid, thresholded there; overlapping
   lesions: the highest probability wins.

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

import os
from pathlib import Path
from typing import Any, Callable

import SimpleITK as sitk

from sam_l1dfl.data.io import Case, CaseRecord, load_case, strip_suffix
from sam_l1dfl.data.preprocess import IntensityConfig
from sam_l1dfl.errors import CheckpointError, InputError
from sam_l1dfl.model import load_sam_med3d, read_model_meta
from sam_l1dfl.model.standin import weights_origin
from sam_l1dfl.model.weights import resolve_model_path
from sam_l1dfl.prompts import CasePrompts

from .dataset import segment_dataset as _segment_dataset
from .decoding import LesionDecoder, decode_with_model
from .encoding import CropEncoder, resolve_device, sync
from .lesions import PromptResolver
from .mapping import LabelCanvas
from .planning import crop_batches, plan_crops
from .results import InferenceReport, SegmentationResult, stage_timer


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

    ``decoder``: the seam that turns a batch of embeddings and prompts into mask logits (its
    signature: :mod:`.decoding`); default :meth:`model_decoder`.  Another decoder (a test oracle
    that knows where each crop lies) replaces only that step.
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
        self.device = resolve_device(device)
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
    def provenance(self) -> dict:
        """Where the masks come from, as every JSON that inference writes records it (``summary.json``
        and each ``<case>.json``): ``method``, ``checkpoint``, and ``weights``, the model's weights
        origin (:func:`~sam_l1dfl.model.standin.weights_origin`; None without a model)."""
        return {"method": self.method, "checkpoint": self.checkpoint, "weights": self.weights}

    @property
    def resolver(self) -> PromptResolver:
        """Step 1, the image checks and prompt reading, for this segmenter's checkpoint."""
        return PromptResolver(self.preprocess, self.uses_boxes, self.checkpoint)

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
        resolver = self.resolver
        with stage_timer(rep, "prepare"):
            pet, ct, reference = resolver.check_images(pet, ct, reference)
            if clicks < 0:
                raise InputError(None, f"clicks must be >= 0, got {clicks}")
            if clicks and reference is None:
                raise InputError(None, "refinement clicks are simulated against a reference mask: give one "
                                       "(--prompts-from-mask SEG)")
            prompts = resolver.prompts(pet, prompts, reference, allow_checksum_mismatch)
            lesions = resolver.lesions(pet, prompts, rep)
            rep.n_lesions, rep.clicks = len(lesions), int(clicks)
            comp = None
            if reference is not None and clicks:
                comp = resolver.reference_components(reference, lesions, rep)
        cfg = self.preprocess
        windows = plan_crops(lesions, cfg, self.margin_vox, rep.share_crops)
        case = Case(case_id=prompts.case_id or "case", pet=pet, ct_native=ct)
        encoder = self.crop_encoder()
        decoder = self.lesion_decoder()
        canvas = LabelCanvas(pet, self.threshold, probabilities)
        out_lesions: list[dict[str, Any]] = []
        for batch in crop_batches(windows, self.batch_size, cfg):
            emb = encoder.encode(case, batch.geometries, rep)
            results = decoder.decode(batch, emb, lesions, comp, clicks, rep)
            with stage_timer(rep, "map_back"):
                for (gwi, wi, li), (logits, iou, npts) in zip(batch.items, results):
                    les = lesions[li]
                    canvas.add(logits, batch.geometries[wi], les.label, les.lesion_id)
                    out_lesions.append({"lesion_id": les.lesion_id, "label": les.label, "window": gwi,
                                        "window_center_lps": [round(v, 3) for v in windows[gwi].center_lps],
                                        "n_points": npts, "iou_pred": round(float(iou), 4), "notes": les.notes})
        with stage_timer(rep, "map_back"):
            return canvas.result(out_lesions, rep)

    #: Every case of a data set (``sam-l1dfl infer --data``) into a folder:
    #: :func:`sam_l1dfl.inference.dataset.segment_dataset` (``self`` is its segmenter).
    segment_dataset = _segment_dataset

    # ------------------------------------------------------------------ the steps and the decoder seam
    def crop_encoder(self) -> CropEncoder:
        """Step 3 for this segmenter: its model, preprocessing, device and autocast."""
        return CropEncoder(self.model, self.preprocess, self.device, self.autocast)

    def lesion_decoder(self) -> LesionDecoder:
        """Step 4 for this segmenter: its decoder (:attr:`decoder`), crop and low-res sizes, device."""
        return LesionDecoder(self.decoder, self.preprocess.crop_size, self.model.config.low_res_size, self.device,
                             lambda: sync(self.device))

    def model_decoder(self, emb, points, labels, boxes, mask_input, crops=None):
        """The default decoder: one batched prompt encoder + mask decoder call (single-mask output),
        upsampled trilinearly to the crop, as the official ``sam_model_infer``
        (:func:`~.decoding.decode_with_model`).  ``crops`` is not needed here (see the class docstring)."""
        return decode_with_model(self.model, self.preprocess.crop_size, self.autocast, emb, points, labels, boxes,
                                 mask_input)


__all__ = ["Segmenter", "checkpoint_preprocess", "load_single_case"]
