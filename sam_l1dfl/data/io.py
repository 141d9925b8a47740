"""Reading images and masks, and loading PET/CT/label cases with checked geometry.

The one reader of the package: :func:`read_image` (any 3D scalar image), :func:`read_mask` (a
binary or label mask: the image and its foreground), :func:`load_case` (a PET/CT/label case on the
PET grid).  Grid comparisons use :mod:`sam_l1dfl.data.geometry`.

Every problem with a user's file raises :class:`~sam_l1dfl.errors.InputError` with a one-line
message naming the file: missing, unreadable, truncated or corrupt (checked on the bytes before
SimpleITK reads them: :func:`sam_l1dfl.data.integrity.check_complete`), not 3D (4D, 2D, vector
pixels), empty, NaN/inf voxels, a label whose grid differs from the PET grid (with the numbers), a
CT that does not overlap the PET.  SimpleITK's exception text is cut to its informative part
(:func:`itk_message`: no build paths).  Nothing here writes anything.

Geometry rules (issue 5):
* the CT is resampled onto the PET grid with SimpleITK linear interpolation, fill -1024 HU, when
  the grids differ (lazily, on first access of :attr:`Case.ct`; network crops are resampled
  straight from the native CT, see :mod:`sam_l1dfl.data.preprocess`);
* the label must share the PET grid (size exactly; spacing and origin within ``coord_tol`` mm,
  default 1e-3 of the smallest PET spacing; direction cosines within ``dir_tol``), else we refuse
  (:func:`sam_l1dfl.data.geometry.grid_differences`);
* a mask holds integers >= 0 (a float image with non-integer values is refused as a probability
  map); its foreground is the voxels > 0.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from sam_l1dfl.data.geometry import grid_differences, images_overlap, same_grid
from sam_l1dfl.data.integrity import check_complete, nifti_nonfinite_counts
from sam_l1dfl.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import SimpleITK as sitk

#: File endings SimpleITK reads that we look for in folders.
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
CT_FILL_HU = -1024.0


def image_suffix(name: str) -> str | None:
    low = name.lower()
    for s in IMAGE_SUFFIXES:
        if low.endswith(s):
            return s
    return None


def strip_suffix(name: str) -> str:
    s = image_suffix(name)
    return name[: -len(s)] if s else name


_ITK_NOISE = (
    re.compile(r"Exception thrown in SimpleITK \w+:\s*"),  # "... in SimpleITK ReadImage: "
    re.compile(r"\S+\.(?:cxx|cpp|hxx|txx|h)(?::\d+)?:?\s*"),  # build paths: sitkImageReaderBase.cxx:99
    re.compile(r"(?:sitk::ERROR|ITK ERROR|itk::ERROR):\s*"),
    re.compile(r"\w+\(0x[0-9a-fA-F]+\):\s*"),  # MetaImageIO(0x5562...):
    # ITK's errno guess: the callers have checked that the file exists and is readable
    re.compile(r"\s*Reason: No such file or directory"),
)


def itk_message(exc: BaseException) -> str:
    """The informative part of a SimpleITK exception, on one line: no build paths, no object
    addresses, at most 200 characters."""
    text = " ".join(str(exc).split())
    if "Description: " in text:
        text = text.split("Description: ")[-1]
    for pattern in _ITK_NOISE:
        text = pattern.sub("", text)
    return text.strip()[:200] or type(exc).__name__


def read_image_info(path: "str | os.PathLike") -> "sitk.ImageFileReader":
    """Read only the header (fast; the data are not checked); raises InputError like
    :func:`read_image`."""
    import SimpleITK as sitk

    p = Path(path)
    _check_file(p)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        check_complete(p)  # a cut file says so rather than "no reader"
        raise InputError(p, f"not a readable image ({itk_message(exc)})") from None
    return reader


def _check_file(p: Path) -> None:
    if not p.exists():
        raise InputError(p, "file not found")
    if p.is_dir():
        raise InputError(p, "is a folder, expected an image file")
    if p.stat().st_size == 0:
        raise InputError(p, "empty file (0 bytes)")
    if not os.access(p, os.R_OK):
        raise InputError(p, "permission denied")


def read_image(path: "str | os.PathLike", kind: str = "image", check_finite: bool = True) -> "sitk.Image":
    """Read a 3D scalar image with SimpleITK, or raise a one-line :class:`InputError`.

    ``kind`` (``"PET"``, ``"CT"``, ``"label"``) only words the messages.
    """
    import SimpleITK as sitk

    p = Path(path)
    _check_file(p)
    byte_counts = check_complete(p, count_nonfinite=check_finite)
    try:
        img = sitk.ReadImage(str(p))
    except RuntimeError as exc:
        what = "image" if kind == "image" else f"{kind} image"
        raise InputError(p, f"not a readable {what} ({itk_message(exc)})") from None
    dim = img.GetDimension()
    size = tuple(img.GetSize())
    if dim == 4:
        if size[3] == 1:  # a 4D header with one time point is still a 3D volume
            img = img[:, :, :, 0]
        else:
            raise InputError(p, f"{kind} is a 4D image (size {size}); expected one 3D volume")
    elif dim != 3:
        raise InputError(p, f"{kind} is a {dim}D image (size {size}); expected a 3D volume")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(p, f"{kind} has {img.GetNumberOfComponentsPerPixel()} components per voxel; "
                            "expected a scalar volume")
    if min(img.GetSize()) < 1 or img.GetNumberOfPixels() == 0:
        raise InputError(p, f"{kind} is empty (size {tuple(img.GetSize())})")
    if check_finite and img.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        arr = sitk.GetArrayViewFromImage(img)
        n_nan, n_inf = int(np.isnan(arr).sum()), int(np.isinf(arr).sum())
        if (n_nan == 0 and n_inf == 0 and image_suffix(p.name) in (".nii", ".nii.gz")
                and not np.all(arr)):
            # ITK < 6 silently turns NaN/inf into 0 when reading NIfTI (ITK PR #6683): where zeros
            # were read, look at the bytes (counted while checking a .nii.gz, else read now).
            n_nan, n_inf = byte_counts if byte_counts is not None else nifti_nonfinite_counts(p)
        if n_nan or n_inf:
            raise InputError(p, f"{kind} contains {n_nan} NaN and {n_inf} infinite voxel(s)")
    d = np.asarray(img.GetDirection()).reshape(3, 3)
    if abs(abs(np.linalg.det(d)) - 1.0) > 1e-3 or min(img.GetSpacing()) <= 0:
        raise InputError(p, f"{kind} has an invalid header (spacing {tuple(img.GetSpacing())}, "
                            f"direction determinant {np.linalg.det(d):.4g})")
    return img


@dataclass(frozen=True)
class CaseRecord:
    """Where one case's files are (what discovery finds).  ``ct`` and ``label`` may be None."""

    case_id: str
    pet: Path
    ct: Path | None = None
    label: Path | None = None

    def to_dict(self) -> dict:
        return {"case_id": self.case_id, "pet": str(self.pet),
                "ct": None if self.ct is None else str(self.ct),
                "label": None if self.label is None else str(self.label)}

    @classmethod
    def coerce(cls, record: "CaseRecord | Mapping[str, Any] | str | os.PathLike") -> "CaseRecord":
        if isinstance(record, CaseRecord):
            return record
        if isinstance(record, Mapping):
            pet = record.get("pet")
            if pet is None:
                raise InputError(None, f"case record {dict(record)!r} has no 'pet'")
            cid = record.get("case_id") or strip_suffix(Path(pet).name)
            ct, lab = record.get("ct"), record.get("label")
            return cls(str(cid), Path(pet), None if not ct else Path(ct), None if not lab else Path(lab))
        p = Path(record)
        return cls(strip_suffix(p.name), p)


@dataclass
class Case:
    """One loaded case: PET (float32, SUV), optional CT and binary label on the PET grid."""

    case_id: str
    pet: "sitk.Image"
    label: "sitk.Image | None" = None
    ct_native: "sitk.Image | None" = None
    record: CaseRecord | None = None
    _ct_on_pet: Any = field(default=None, repr=False)

    @property
    def ct(self) -> "sitk.Image | None":
        """CT on the PET grid (linear, fill -1024 HU); the native CT if it already shares the grid."""
        if self.ct_native is None:
            return None
        if self._ct_on_pet is None:
            if same_grid(self.pet, self.ct_native):
                ct = _cast_float(self.ct_native)  # a new image: the native one is untouched
                ct.CopyInformation(self.pet)
                self._ct_on_pet = ct
            else:
                self._ct_on_pet = resample_like(self.ct_native, self.pet, CT_FILL_HU)
        return self._ct_on_pet


def _cast_float(img):
    import SimpleITK as sitk

    return sitk.Cast(img, sitk.sitkFloat32)


def resample_like(image: "sitk.Image", reference: "sitk.Image", default: float = 0.0,
                  interpolator: "int | None" = None) -> "sitk.Image":
    """Resample ``image`` onto ``reference``'s grid (linear by default), float32 output."""
    import SimpleITK as sitk

    interp = sitk.sitkLinear if interpolator is None else interpolator
    return sitk.Resample(image, reference, sitk.Transform(), interp, float(default), sitk.sitkFloat32)


def check_label_grid(label: "sitk.Image", pet: "sitk.Image", label_path=None, pet_path=None,
                     coord_tol: float | None = None, dir_tol: float = 1e-4) -> None:
    """Refuse a label whose grid differs from the PET grid, showing the numbers."""
    diffs = grid_differences(pet, label, coord_tol, dir_tol)
    if diffs:
        ref = f" {pet_path}" if pet_path is not None else ""
        raise InputError(label_path, "label grid differs from the PET grid" + ref + " (label vs PET: "
                         + "; ".join(diffs) + ")")


def mask_foreground(image: "sitk.Image", path=None, kind: str = "mask") -> np.ndarray:
    """The foreground (voxels > 0) of a binary or label mask as a bool ``(z, y, x)`` array.

    Refuses (:class:`InputError` naming ``path``) a float image whose non-zero values are not
    integers (a probability map) and negative values.
    """
    import SimpleITK as sitk

    arr = sitk.GetArrayViewFromImage(image)
    if arr.dtype.kind == "f":
        vals = arr[(arr != 0)]
        if vals.size and not np.all(np.abs(vals - np.round(vals)) < 1e-3):
            raise InputError(path, f"{kind} has non-integer values: this looks like a probability map, "
                                   "not a mask; threshold it first")
    if np.any(arr < 0):
        raise InputError(path, f"{kind} has negative values; expected a mask (0 = background)")
    return np.asarray(arr > 0.5)


def read_mask(path: "str | os.PathLike", kind: str = "mask") -> "tuple[sitk.Image, np.ndarray]":
    """Read a 3D binary or label mask: ``(image, foreground)`` (see :func:`read_image` and
    :func:`mask_foreground`)."""
    img = read_image(path, kind)
    return img, mask_foreground(img, Path(path), kind)


def load_case(record: "CaseRecord | Mapping[str, Any] | str | os.PathLike", *, load_ct: bool = True,
              load_label: bool = True, coord_tol: float | None = None, dir_tol: float = 1e-4) -> Case:
    """Read PET, CT and label of ``record`` and check their geometry.

    PET becomes float32.  The label must share the PET grid (else :class:`InputError` with the
    numbers) and is binarised to uint8 (voxels > 0).  The CT is kept native; :attr:`Case.ct` gives
    it on the PET grid.  A CT that does not overlap the PET at all is refused.
    """
    import SimpleITK as sitk

    rec = CaseRecord.coerce(record)
    pet = read_image(rec.pet, "PET")
    if pet.GetPixelID() != sitk.sitkFloat32:
        pet = sitk.Cast(pet, sitk.sitkFloat32)
    ct = None
    if load_ct and rec.ct is not None:
        ct = read_image(rec.ct, "CT")
        if not images_overlap(pet, ct):
            raise InputError(rec.ct, f"CT does not overlap the PET {rec.pet} in world space "
                                     "(check the headers)")
    label = None
    if load_label and rec.label is not None:
        label = read_image(rec.label, "label")
        check_label_grid(label, pet, rec.label, rec.pet, coord_tol, dir_tol)
        label = sitk.GetImageFromArray(mask_foreground(label, rec.label, "label").astype(np.uint8))
        label.CopyInformation(pet)  # equal within tolerance: adopt the PET's exact numbers
    return Case(case_id=rec.case_id, pet=pet, label=label, ct_native=ct, record=rec)


__all__ = ["CT_FILL_HU", "Case", "CaseRecord", "IMAGE_SUFFIXES", "check_label_grid", "image_suffix",
           "itk_message", "load_case", "mask_foreground", "read_image", "read_image_info", "read_mask",
           "resample_like", "strip_suffix"]
