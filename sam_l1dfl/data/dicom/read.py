"""DICOM PET/CT studies in: find the series, read PET as SUV, CT as HU, contours as a PET-grid mask.

* :func:`scan_dicom` walks a folder (pydicom, headers only), groups the files by
  ``SeriesInstanceUID`` and the series by study (:class:`DicomStudy`).  Files that are not DICOM
  are counted and skipped.  A file without the 128-byte preamble and ``DICM`` prefix (old PACS
  and ACR-NEMA-style exports) is read when its first bytes start a DICOM data set
  (:func:`read_dataset`), with one warning line for the scan.
* :func:`read_series` reads an image series with SimpleITK's ``ImageSeriesReader``: slice order
  and geometry are GDCM's (``GetGDCMSeriesFileNames``), never a sort of ours.  Before reading it
  refuses, in one line, a series that mixes images (different sizes, orientations or pixel
  spacings, two images at one position), one whose slices are not evenly spaced or are sheared
  (gantry tilt), and multi-frame (enhanced) objects.
* :func:`read_pet_suv` turns a PET series into SUVbw: SimpleITK applies each slice's
  ``RescaleSlope``/``RescaleIntercept``, and :func:`sam_l1dfl.data.dicom.suv.suv_factors` gives each
  slice's factor from the headers read with pydicom in SimpleITK's file order.
* :func:`read_seg_mask` reads a DICOM SEG with highdicom (``Segmentation.from_dataset`` then
  ``get_volume``: all segments, united) and :func:`read_rtstruct_mask` an RTSTRUCT with rt-utils
  (rasterised on the grid of the series it references; its slices are matched to SimpleITK's by
  ``SOPInstanceUID``); both are then placed onto the PET grid with SimpleITK (nearest neighbour).
  Contours drawn on another grid than the PET's (a CT's, typically) give one warning line with
  the two grids; a SEG that only leaves out empty slices of the PET's grid is the same grid.
* :func:`convert_dicom` writes each study's PET series as an autoPET case:
  ``<out>/<case>/SUV.nii.gz``, ``CT.nii.gz`` (the CT of the PET's frame of reference, on its own
  grid: :func:`sam_l1dfl.data.io.load_case` resamples it onto the PET grid), ``SEG.nii.gz`` when
  the study holds contours for it, and ``dicom.json`` (the source series and the SUV factors).
  Every case is read before anything is written, and the output appears only when all succeed.
  A converted PET that does not look like SUV (:mod:`sam_l1dfl.data.dicom.suv_sanity`: e.g. a dose
  recorded in MBq, a weight in grams) gives a one-line warning pointing to those tags.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import struct
import tempfile
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import highdicom as hd
import numpy as np
import SimpleITK as sitk
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import VR
from rt_utils import RTStructBuilder

from sam_l1dfl.data.geometry import Grid, grid_differences, same_lattice
from sam_l1dfl.data.io import itk_message, resample_like
from sam_l1dfl.data.dicom.suv import SuvConversion, suv_factors
from sam_l1dfl.data.dicom.suv_sanity import warn_if_not_suv
from sam_l1dfl.errors import InputError
from sam_l1dfl.io_utils import atomic_dir, write_image_atomic

PET_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
#: Multi-frame image objects we do not read (Enhanced PET / CT, Legacy Converted Enhanced).
ENHANCED = {"1.2.840.10008.5.1.4.1.1.130": "Enhanced PET", "1.2.840.10008.5.1.4.1.1.128.1": "Legacy Enhanced PET",
            "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT", "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Enhanced CT"}
#: The storage classes a study is read from, by name (a truncated file of these is refused).
READ_CLASSES = {PET_STORAGE: "PET image", CT_STORAGE: "CT image", SEG_STORAGE: "DICOM SEG",
                RTSTRUCT_STORAGE: "RTSTRUCT", **ENHANCED}
#: Names of the files of one case (the autoPET layout that :mod:`sam_l1dfl.data.discovery` finds).
SUV_NAME, CT_NAME, SEG_NAME, META_NAME = "SUV.nii.gz", "CT.nii.gz", "SEG.nii.gz", "dicom.json"
#: What a converted PET that does not look like SUV points to.
HEADER_HINT = ("check RadionuclideTotalDose (must be in Bq, not MBq) and PatientWeight (kg, not g) "
               "in the DICOM header")
#: Groups a DICOM data set without preamble may start with: file meta (0002), identification (0008).
BARE_GROUPS = (0x0002, 0x0008)
_VRS = frozenset(v.value.encode() for v in VR if len(v.value) == 2)
#: Slice positions may deviate from even spacing by this fraction of the spacing.
SPACING_RTOL = 1e-3
ORIENTATION_TOL = 1e-4


@dataclass
class DicomSeries:
    """The files of one series (unordered) and its first header."""

    uid: str
    header: Dataset
    files: list[Path] = field(default_factory=list)

    @property
    def sop_class(self) -> str:
        return str(self.header.get("SOPClassUID", ""))

    @property
    def modality(self) -> str:
        return str(self.header.get("Modality", ""))

    @property
    def frame_of_reference(self) -> str:
        return str(self.header.get("FrameOfReferenceUID", ""))

    def label(self) -> str:
        desc = str(self.header.get("SeriesDescription", "")).strip()
        number = self.header.get("SeriesNumber", "")
        return f"series {number} {desc!r} ({self.modality}, {len(self.files)} file(s), {self.files[0].parent})"


@dataclass
class DicomStudy:
    uid: str
    series: list[DicomSeries] = field(default_factory=list)

    def of_class(self, sop_class: str) -> list[DicomSeries]:
        return [s for s in self.series if s.sop_class == sop_class]

    @property
    def patient_id(self) -> str:
        return str(self.series[0].header.get("PatientID", "") or "anonymous")

    @property
    def date(self) -> str:
        return str(self.series[0].header.get("StudyDate", "") or "nodate")


@dataclass
class DicomScan:
    root: Path
    studies: list[DicomStudy]
    skipped: list[Path]
    no_preamble: list[Path] = field(default_factory=list)  # read although they lack "DICM" (a warning said so)

    @property
    def files(self) -> list[Path]:
        return [f for st in self.studies for s in st.series for f in s.files]


def _file_kind(path: Path) -> "str | None":
    """``"dicom"`` (the preamble and ``DICM``), ``"bare"`` (no preamble, but the first bytes start a
    DICOM data set: :func:`_bare_dataset`) or None."""
    head = b""
    with contextlib.suppress(OSError), open(path, "rb") as fh:
        head = fh.read(132)
    if head[128:] == b"DICM":
        return "dicom"
    return "bare" if _bare_dataset(head) else None


def _bare_dataset(head: bytes) -> bool:
    """Whether ``head`` starts like a DICOM data set written without the preamble: a first element of
    group 0002 (file meta) or 0008 (identification), little endian, with an explicit VR, or an
    implicit one whose value length is even and short (as the first elements of those groups are)."""
    if len(head) < 8:
        return False
    group, _element = struct.unpack("<HH", head[:4])
    if group not in BARE_GROUPS:
        return False
    if head[4:6] in _VRS:
        return True
    (length,) = struct.unpack("<I", head[4:8])
    return length % 2 == 0 and length <= 1024


def _transfer_syntax(ds: Dataset) -> str:
    implicit, little = ds.original_encoding
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def read_dataset(path: "str | os.PathLike", stop_before_pixels: bool = False) -> Dataset:
    """A DICOM file read with pydicom, also one without the preamble and ``DICM`` prefix whose first
    bytes start a DICOM data set (read with ``force=True`` only then; anything else raises pydicom's
    ``InvalidDicomError``).  The data set always has the file meta that highdicom and file writers
    need (``TransferSyntaxUID`` as read, ``MediaStorageSOPClassUID``/``InstanceUID``)."""
    ds = dcmread(path, stop_before_pixels=stop_before_pixels, force=_file_kind(Path(path)) == "bare")
    meta = ds.file_meta
    if "TransferSyntaxUID" not in meta:
        meta.TransferSyntaxUID = _transfer_syntax(ds)
    for kw, source in (("MediaStorageSOPClassUID", "SOPClassUID"), ("MediaStorageSOPInstanceUID", "SOPInstanceUID")):
        if kw not in meta and source in ds:
            setattr(meta, kw, ds[source].value)
    return ds


def scan_dicom(root: "str | os.PathLike") -> DicomScan:
    """Group the DICOM files under ``root`` by series and study (headers only).

    Files that are not DICOM (no ``DICM`` preamble nor the start of a DICOM data set, not named
    ``*.dcm``, or hidden, such as the ``._*`` files macOS leaves on USB sticks) and DICOM files of
    no series (a ``DICOMDIR``) are skipped.  Files without the preamble that start a DICOM data set
    (:func:`read_dataset`) are read, with one warning line naming how many and the first (they
    are listed in ``no_preamble``).  A file that should be one of the images or objects we
    read but cannot be parsed, or ends before its ``SeriesInstanceUID`` (pydicom stops quietly
    at a truncation between elements), is refused: a slice is never dropped silently.  So is a
    second copy of one image (the same ``SOPInstanceUID``).
    """
    root = Path(root)
    if not root.exists():
        raise InputError(root, "not found")
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    series: dict[str, DicomSeries] = {}
    instances: dict[str, Path] = {}
    skipped, bare = [], []
    for f in files:
        kind = _file_kind(f)
        # a hidden "._x.dcm" is macOS's AppleDouble companion of x.dcm, not a broken slice
        strict = kind is not None or (f.suffix.lower() == ".dcm" and not f.name.startswith("."))
        try:
            ds = read_dataset(f, stop_before_pixels=True)
        except (InvalidDicomError, EOFError, OSError, ValueError, KeyError) as exc:
            if strict:  # a DICOM file we cannot read: never drop a slice silently
                if not f.stat().st_size:
                    raise InputError(f, "empty file (0 bytes) where a DICOM file was expected") from None
                raise InputError(f, f"unreadable DICOM file (truncated or corrupt? {exc})") from None
            skipped.append(f)
            continue
        uid = str(ds.get("SeriesInstanceUID", ""))
        if not uid or "StudyInstanceUID" not in ds:
            meta_class = str(getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID", ""))
            if meta_class in READ_CLASSES:
                raise InputError(f, f"incomplete {READ_CLASSES[meta_class]} file: it ends before its "
                                    "SeriesInstanceUID/StudyInstanceUID (truncated?)")
            skipped.append(f)
            continue
        sop = str(ds.get("SOPInstanceUID", ""))
        if sop and sop in instances:
            raise InputError(f, f"the same image (SOPInstanceUID {sop}) as {instances[sop]}: a second copy of "
                                "the study? keep one")
        instances[sop] = f
        series.setdefault(uid, DicomSeries(uid, ds)).files.append(f)
        if kind == "bare":
            bare.append(f)
    if bare:
        warnings.warn(f"{root}: {len(bare)} DICOM file(s) without the 128-byte preamble and 'DICM' prefix (an old "
                      f"PACS export?), read as DICOM; the first: {bare[0]}", UserWarning, stacklevel=2)
    studies: dict[str, DicomStudy] = {}
    for s in series.values():
        studies.setdefault(str(s.header.StudyInstanceUID), DicomStudy(str(s.header.StudyInstanceUID))).series.append(s)
    return DicomScan(root, sorted(studies.values(), key=lambda st: (st.patient_id, st.date, st.uid)), skipped, bare)


# ---------------------------------------------------------------------- image series
def _ordered_files(series: DicomSeries) -> list[Path]:
    """The series' files in SimpleITK's (GDCM's) slice order."""
    folders = {f.parent for f in series.files}
    top = Path(os.path.commonpath([str(d) for d in folders]))
    names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(top), series.uid, False, len(folders) > 1)
    ordered = [Path(n) for n in names]
    left_out = sorted(set(series.files) - set(ordered))
    if left_out:
        raise InputError(left_out[0], f"SimpleITK (GDCM) cannot read this file of series {series.uid}"
                                      f"{f' (nor {len(left_out) - 1} other(s))' if len(left_out) > 1 else ''}: "
                                      "truncated or corrupt?")
    if sorted(ordered) != sorted(series.files):
        raise InputError(top, f"SimpleITK finds {len(ordered)} file(s) of series {series.uid} where pydicom "
                              f"finds {len(series.files)}; the series is not readable as one volume")
    return ordered


def _check_stack(headers: Sequence[Dataset], files: Sequence[Path]) -> float:
    """Refuse a series that is not one evenly spaced stack of slices; return the slice spacing."""
    first = headers[0]
    for h, f in zip(headers, files):
        for kw in ("Rows", "Columns", "ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
            if h.get(kw) is None:
                raise InputError(f, f"{kw} is missing; cannot place the slice")
        if (h.Rows, h.Columns) != (first.Rows, first.Columns):
            raise InputError(f, f"mixed series: {h.Rows}x{h.Columns} pixels here, {first.Rows}x{first.Columns} "
                                f"in {files[0]}")
        if not np.allclose(np.asarray(h.ImageOrientationPatient, float),
                           np.asarray(first.ImageOrientationPatient, float), atol=ORIENTATION_TOL):
            raise InputError(f, f"mixed series: ImageOrientationPatient differs from {files[0]}")
        if not np.allclose(np.asarray(h.PixelSpacing, float), np.asarray(first.PixelSpacing, float), rtol=1e-6):
            raise InputError(f, f"mixed series: PixelSpacing differs from {files[0]}")
    if len(headers) < 2:
        raise InputError(files[0], "the series has one slice; expected a 3D volume")
    iop = np.asarray(first.ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    pos = np.array([np.asarray(h.ImagePositionPatient, float) for h in headers])
    height = pos @ normal
    rank = np.argsort(height, kind="stable")
    i = int(np.argmin(np.diff(height[rank])))
    if np.diff(height[rank])[i] < 1e-3:
        raise InputError(files[rank[i + 1]], f"mixed series: two images at one position (also {files[rank[i]]}); "
                                             "a dynamic or repeated acquisition is not one volume")
    steps = np.diff(pos, axis=0)
    along = steps @ normal
    if not (np.all(along > 0) or np.all(along < 0)):
        raise InputError(files[0], "SimpleITK's slice order is not monotonic along the slice normal")
    spacing = float(np.mean(along))
    bad = int(np.argmax(np.abs(along - spacing)))
    if abs(along[bad] - spacing) > SPACING_RTOL * abs(spacing):
        raise InputError(files[bad + 1], f"non-uniform slice spacing: {abs(along[bad]):.4g} mm from the "
                                         f"previous slice, {abs(spacing):.4g} mm on average")
    shear = np.linalg.norm(steps - np.outer(along, normal), axis=1).max()
    if shear > SPACING_RTOL * abs(spacing):
        raise InputError(files[0], f"the slices are sheared ({shear:.3g} mm off their normal per slice, "
                                   "gantry tilt); resample the series first")
    return abs(spacing)


def _enhanced_error(series: DicomSeries) -> InputError:
    return InputError(series.files[0], f"{ENHANCED[series.sop_class]} (multi-frame) images are not supported; "
                                       "export the series as single-frame images")


def read_series(series: DicomSeries, pixel_type: int = sitk.sitkFloat64) -> tuple[sitk.Image, list[Path], list[Dataset]]:
    """Read an image series: the SimpleITK image (rescaled values), its files and headers in slice order."""
    if series.sop_class in ENHANCED:
        raise _enhanced_error(series)
    files = _ordered_files(series)
    headers = [read_dataset(f, stop_before_pixels=True) for f in files]
    classes = {str(h.get("SOPClassUID", "")) for h in headers}
    if len(classes) > 1:
        raise InputError(files[0], f"mixed series: {len(classes)} SOP classes in series {series.uid}")
    spacing = _check_stack(headers, files)
    reader = series_reader(files, pixel_type)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(files[0], f"series {series.uid} is not readable ({itk_message(exc)})") from None
    if image.GetDimension() != 3 or image.GetSize()[2] != len(files):
        raise InputError(files[0], f"series {series.uid} read as size {image.GetSize()}, not {len(files)} slices")
    if abs(image.GetSpacing()[2] - spacing) > SPACING_RTOL * spacing:
        raise InputError(files[0], f"SimpleITK spaces the slices {image.GetSpacing()[2]:.4g} mm apart, "
                                   f"the positions {spacing:.4g} mm")
    return image, files, headers


def series_reader(files: Sequence["str | os.PathLike"], pixel_type: int = sitk.sitkFloat64) -> sitk.ImageSeriesReader:
    """SimpleITK's series reader for ``files`` (in slice order), with GDCM named: left to guess,
    SimpleITK finds no reader for files without the preamble."""
    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileNames([str(f) for f in files])
    reader.SetOutputPixelType(pixel_type)
    return reader


def read_pet_suv(series: DicomSeries) -> tuple[sitk.Image, SuvConversion, list[Path]]:
    """A PET series as an SUVbw image (float32), with the conversion used and the files in slice order."""
    if series.sop_class != PET_STORAGE:
        raise InputError(series.files[0], f"not a PET image series ({series.label()})")
    image, files, headers = read_series(series)
    expected = headers[0].get("NumberOfSlices")
    if expected and int(expected) != len(files):
        raise InputError(files[0], f"NumberOfSlices is {expected} but the series has {len(files)} image(s): "
                                   "missing or extra slices")
    conversion = suv_factors(headers, files)
    values = sitk.GetArrayFromImage(image) * conversion.factors[:, None, None]
    suv = sitk.GetImageFromArray(values.astype(np.float32))
    suv.CopyInformation(image)
    return suv, conversion, files


def read_ct(series: DicomSeries) -> sitk.Image:
    """A CT series in HU: int16 when the rescaled values are integers that fit, else float32."""
    image, _files, _headers = read_series(series, sitk.sitkFloat32)  # exact for HU; half the memory of float64
    values = sitk.GetArrayViewFromImage(image)
    integral = np.array_equal(values, np.round(values)) and values.min() >= -32768 and values.max() <= 32767
    return sitk.Cast(image, sitk.sitkInt16 if integral else sitk.sitkFloat32)


# ---------------------------------------------------------------------- contours
def _on_grid(mask: sitk.Image, reference: sitk.Image, path, kind: str) -> sitk.Image:
    """A binary mask placed onto ``reference``'s grid (nearest neighbour; exact on the same grid).
    A mask off the reference's lattice (drawn on a CT, say) gives one warning line with the two grids."""
    if grid_differences(mask, reference):
        if not same_lattice(reference, mask):
            warnings.warn(f"{path}: the {kind} is drawn on another grid than the PET ({kind} "
                          f"{Grid.from_image(mask).describe()}; PET {Grid.from_image(reference).describe()}): placed "
                          "on the PET grid by nearest neighbour", UserWarning, stacklevel=3)
        mask = resample_like(mask, reference, 0.0, sitk.sitkNearestNeighbor)
    out = sitk.Cast(mask > 0, sitk.sitkUInt8)
    out.CopyInformation(reference)
    return out


def _chosen(path, kind: str, names: list[str], wanted: Sequence[str] | None) -> list[str]:
    """``names`` (all), or those in ``wanted``; refuse a wanted name that is not there."""
    if wanted is None:
        return list(names)
    missing = sorted(set(wanted) - set(names))
    if missing:
        raise InputError(path, f"no {kind} named {', '.join(missing)} (there: {', '.join(names) or 'none'})")
    return [n for n in names if n in set(wanted)]


def read_seg_mask(path: "str | os.PathLike", pet: sitk.Image, frame_of_reference: str,
                  rois: Sequence[str] | None = None) -> tuple[sitk.Image, list[str]]:
    """The union of the segments (all, or those labelled as in ``rois``) of a DICOM SEG, on the
    PET grid, and the segment labels used."""
    try:
        seg = hd.seg.Segmentation.from_dataset(read_dataset(path), copy=False)
        if str(seg.get("FrameOfReferenceUID", "")) != frame_of_reference:
            raise InputError(path, "the SEG is in another frame of reference than the PET")
        labels = {seg.get_segment_description(n).segment_label: n for n in seg.segment_numbers}
        chosen = _chosen(path, "segment", list(labels), rois)
        volume = seg.get_volume(combine_segments=False, segment_numbers=[labels[n] for n in chosen])
    except (ValueError, RuntimeError, AttributeError, KeyError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(path, f"not a readable DICOM SEG volume ({exc})") from None
    array = np.asarray(volume.array)
    union = (array.reshape(*array.shape[:3], -1) > 0).any(axis=-1).astype(np.uint8)
    affine = np.asarray(volume.affine, float)  # columns: slice, row, column index steps; then position
    steps = affine[:3, :3][:, ::-1]  # SimpleITK order: x = column, y = row, z = slice
    spacing = np.linalg.norm(steps, axis=0)
    image = sitk.GetImageFromArray(union)
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(affine[:3, 3].tolist())
    image.SetDirection((steps / spacing).ravel().tolist())
    return _on_grid(image, pet, path, "SEG"), chosen


def read_rtstruct_mask(path: "str | os.PathLike", series: DicomSeries, pet: sitk.Image,
                       rois: Sequence[str] | None = None) -> tuple[sitk.Image, list[str]]:
    """The union of the ROIs (all, or those named in ``rois``) of an RTSTRUCT, rasterised by rt-utils
    on the grid of ``series`` (the series it references), on the PET grid; and the ROI names used."""
    image, files, headers = read_series(series)
    first = headers[0]
    if first.Rows != first.Columns or abs(float(first.PixelSpacing[0]) - float(first.PixelSpacing[1])) > 1e-6:
        raise InputError(path, f"rt-utils rasterises only square slices with square pixels; {series.label()} "
                               f"has {first.Rows}x{first.Columns} pixels of {list(first.PixelSpacing)} mm")
    with tempfile.TemporaryDirectory(prefix="sam-l1dfl-rt-") as tmp:
        series_dir = Path(tmp) / "series"
        series_dir.mkdir()
        for k, f in enumerate(files):  # rt-utils loads every image in the folder: give it this series only
            _for_pydicom(f, series_dir / f"{k:05d}.dcm")
        try:
            rt = RTStructBuilder.create_from(dicom_series_path=str(series_dir),
                                             rt_struct_path=str(_for_pydicom(path, Path(tmp) / "rtstruct.dcm")))
            wanted = _chosen(path, "ROI", rt.get_roi_names(), rois)
            masks = [np.asarray(rt.get_roi_mask_by_name(n), bool) for n in wanted]
        except InputError:
            raise
        except Exception as exc:  # rt-utils raises bare Exceptions
            raise InputError(path, f"not a readable RTSTRUCT for {series.label()} ({exc})") from None
        order = {str(ds.SOPInstanceUID): i for i, ds in enumerate(rt.series_data)}
    union = np.zeros((first.Rows, first.Columns, len(files)), bool)
    for m in masks:
        union |= m
    to_rt = [order[str(h.SOPInstanceUID)] for h in headers]  # SimpleITK slice k -> rt-utils slice
    zyx = union.transpose(2, 0, 1)[to_rt].astype(np.uint8)
    mask = sitk.GetImageFromArray(zyx)
    mask.CopyInformation(image)
    return _on_grid(mask, pet, path, "RTSTRUCT"), wanted


def _for_pydicom(path: "str | os.PathLike", link: Path) -> Path:
    """``link``: a symbolic link to ``path``, or, for a file without the preamble (which pydicom
    and the libraries on it do not read), a copy with one."""
    if _file_kind(Path(path)) == "bare":
        read_dataset(path).save_as(link, enforce_file_format=True)
    else:
        os.symlink(os.path.abspath(path), link)
    return link


def _referenced_series(ds: Dataset) -> set[str]:
    """Series UIDs an RTSTRUCT or SEG refers to."""
    uids = {str(s.SeriesInstanceUID) for s in ds.get("ReferencedSeriesSequence", []) if "SeriesInstanceUID" in s}
    for fr in ds.get("ReferencedFrameOfReferenceSequence", []):
        for st in fr.get("RTReferencedStudySequence", []):
            uids |= {str(s.SeriesInstanceUID) for s in st.get("RTReferencedSeriesSequence", [])}
    return uids


# ---------------------------------------------------------------------- studies -> cases
@dataclass
class ConvertedCase:
    """One PET series read as a case: the images, and ``meta`` (what ``dicom.json`` holds)."""

    case_id: str
    suv: sitk.Image
    ct: sitk.Image | None
    seg: sitk.Image | None
    meta: dict


def case_summary(meta: dict) -> str:
    """One line on a converted case, from its ``dicom.json`` contents."""
    size = "x".join(str(v) for v in meta["pet_size"])
    ct = "CT " + "x".join(str(v) for v in meta["ct_size"]) if meta["ct_size"] else "no CT"
    c = meta["contours"]
    contours = f"{c['kind']} {', '.join(c['labels'])} ({c['voxels']} voxels)" if c else "no contours"
    return f"{meta['case_id']}: PET {size}, {meta['suv']['description']}; {ct}; {contours}"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "case"


def _contours(study: DicomStudy, pet_series: DicomSeries, suv: sitk.Image,
              rois: Sequence[str] | None) -> tuple[sitk.Image | None, dict | None]:
    """The lesion mask of a PET series from the study's SEG (preferred) or RTSTRUCT objects."""
    frame = pet_series.frame_of_reference
    for kind, sop in (("SEG", SEG_STORAGE), ("RTSTRUCT", RTSTRUCT_STORAGE)):
        objects = [f for s in study.of_class(sop) if kind == "RTSTRUCT" or s.frame_of_reference == frame
                   for f in s.files]
        if not objects:
            continue
        if len(objects) > 1:
            raise InputError(objects[1], f"{len(objects)} {kind} objects for {pet_series.label()} (also {objects[0]}); "
                                         "keep the one to use")
        if kind == "SEG":
            mask, labels = read_seg_mask(objects[0], suv, frame, rois)
        else:
            refs = _referenced_series(read_dataset(objects[0], stop_before_pixels=True))
            target = [s for s in study.series if s.uid in refs and s.sop_class in (PET_STORAGE, CT_STORAGE)]
            if not target:
                raise InputError(objects[0], "the RTSTRUCT references no PET or CT series of this study")
            if target[0].frame_of_reference != frame:
                raise InputError(objects[0], "the RTSTRUCT's series is in another frame of reference than the PET")
            mask, labels = read_rtstruct_mask(objects[0], target[0], suv, rois)
        voxels = int(sitk.GetArrayViewFromImage(mask).sum())
        return mask, {"kind": kind, "file": str(objects[0]), "labels": labels, "voxels": voxels}
    return None, None


def _pick_ct(study: DicomStudy, pet_series: DicomSeries) -> tuple[DicomSeries | None, str | None]:
    cts = [s for s in study.of_class(CT_STORAGE) if s.frame_of_reference == pet_series.frame_of_reference]
    if not cts:
        return None, None
    cts.sort(key=lambda s: -len(s.files))
    note = (f"{len(cts)} CT series share the PET's frame of reference: took {cts[0].label()}"
            if len(cts) > 1 else None)
    return cts[0], note


def convert_study(study: DicomStudy, case_id: str, rois: Sequence[str] | None = None) -> Iterator[ConvertedCase]:
    """Every attenuation-corrected PET series of ``study`` as a case (read, not written), one at a
    time; with several, the cases are named ``<case_id>_s<SeriesNumber>`` (else ``_s1``, ``_s2``...)."""
    pets = sorted(study.of_class(PET_STORAGE), key=lambda s: (str(s.header.get("SeriesNumber", "")), s.uid))
    # leave out the non-attenuation-corrected companions of AC series (alone, suv_factors refuses it)
    chosen = [p for p in pets if "ATTN" in str(p.header.get("CorrectedImage", "ATTN")).upper()] or pets
    left_out = [f"left out the non-attenuation-corrected {p.label()}" for p in pets if p not in chosen]
    numbers = [str(s.header.get("SeriesNumber", "")) for s in chosen]
    by_number = len(set(numbers)) == len(numbers) and all(numbers)
    for k, pet_series in enumerate(chosen):
        suv, conversion, pet_files = read_pet_suv(pet_series)
        warn_if_not_suv(sitk.GetArrayViewFromImage(suv), pet_files[0].parent, hint=HEADER_HINT)
        ct_series, note = _pick_ct(study, pet_series)
        ct = read_ct(ct_series) if ct_series is not None else None
        seg, contours = _contours(study, pet_series, suv, rois)
        name = case_id if len(chosen) == 1 else f"{case_id}_s{_safe(numbers[k]) if by_number else k + 1}"
        meta = {"case_id": name, "study_uid": study.uid, "pet_series_uid": pet_series.uid,
                "pet_files": [str(f) for f in pet_files], "pet_size": list(suv.GetSize()),
                "ct_series_uid": None if ct_series is None else ct_series.uid,
                "ct_size": None if ct is None else list(ct.GetSize()),
                "suv": {"description": conversion.describe(), "units": conversion.units,
                        "decay_correction": conversion.decay_correction, "weight_kg": conversion.weight_kg,
                        "dose_bq": conversion.dose_bq, "half_life_s": conversion.half_life_s,
                        "decay_s": conversion.decay_s, "factors": conversion.factors.tolist(),
                        "notes": conversion.notes},
                "contours": contours, "notes": left_out + ([note] if note else [])}
        yield ConvertedCase(name, suv, ct, seg, meta)


def convert_dicom(root: "str | os.PathLike", out: "str | os.PathLike",
                  rois: Sequence[str] | None = None) -> tuple[list[dict], DicomScan]:
    """Convert every study under ``root`` into autoPET cases under ``out``, all or nothing (each
    case is written into a temporary folder as soon as it is read); return each case's
    ``dicom.json`` contents, and the scan."""
    scan = scan_dicom(root)
    if not any(st.of_class(PET_STORAGE) for st in scan.studies):
        enhanced = [s for st in scan.studies for s in st.series if s.sop_class in ENHANCED]
        if enhanced:
            raise _enhanced_error(enhanced[0])
        kinds = sorted({s.modality for st in scan.studies for s in st.series})
        skipped = (f"; skipped {len(scan.skipped)} file(s) that are not DICOM, e.g. {scan.skipped[0]}"
                   if scan.skipped else "")
        raise InputError(root, f"no PET image series found ({len(scan.files)} DICOM file(s)"
                               + (f": {', '.join(kinds)}" if kinds else "") + skipped + ")")
    out = Path(out)
    names: dict[str, int] = defaultdict(int)
    written: list[dict] = []
    with atomic_dir(out) as tmp:
        for study in scan.studies:
            if not study.of_class(PET_STORAGE):
                continue
            base = _safe(f"{study.patient_id}_{study.date}")
            names[base] += 1
            for case in convert_study(study, base if names[base] == 1 else f"{base}_{names[base]}", rois):
                if (out / case.case_id).exists():
                    raise InputError(out / case.case_id, "exists; choose a new output folder")
                d = tmp / case.case_id
                d.mkdir()
                write_image_atomic(case.suv, d / SUV_NAME)
                if case.ct is not None:
                    write_image_atomic(case.ct, d / CT_NAME)
                if case.seg is not None:
                    write_image_atomic(case.seg, d / SEG_NAME)
                (d / META_NAME).write_text(json.dumps(case.meta, indent=2) + "\n")
                written.append(case.meta)
    return written, scan


__all__ = ["CT_NAME", "CT_STORAGE", "ConvertedCase", "DicomScan", "DicomSeries", "DicomStudy", "META_NAME",
           "PET_STORAGE", "RTSTRUCT_STORAGE", "SEG_NAME", "SEG_STORAGE", "SUV_NAME", "case_summary", "convert_dicom",
           "convert_study", "read_ct", "read_dataset", "read_pet_suv", "read_rtstruct_mask", "read_seg_mask",
           "read_series", "scan_dicom", "series_reader"]
