"""Synthetic DICOM PET/CT studies from the phantom, with known dose, weight, times and half-life.

:func:`write_pet_series` writes an SUV image as a PET Image Storage series the way a scanner
would: activity concentration (Bq/mL, ``Units`` BQML; or Philips ``CNTS`` with the private SUV
and activity scale factors; or ``GML``) decay-corrected as ``DecayCorrection`` says (START:
to the series time; ADMIN: to the injection; NONE: not at all, each slice at its own acquisition
time), stored as int16 with a per-slice ``RescaleSlope`` (so quantisation is at most half a slope
per voxel), one file per slice.  :func:`write_ct_series` writes HU as unsigned values with
``RescaleIntercept`` -1024.  :func:`write_synthetic_study` writes a whole study from
:func:`sam_l1dfl.data.synthetic.generate_case`: ``PET/``, ``CT/``, the lesion mask as a DICOM
SEG (highdicom) and/or RTSTRUCT (rt-utils), and returns the phantom's images to check against.

Geometry is the SimpleITK image's: slice ``k`` sits at ``origin + spacing_z * k * direction[:, 2]``,
``ImageOrientationPatient`` is the first two direction columns.  ``reverse=True`` numbers the
files and instances from the last slice, so only the positions give the order.  UIDs are derived
from the arguments and ``seed`` (the same call writes the same UIDs).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import os
import warnings
from pathlib import Path
from typing import Sequence

import highdicom as hd
import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from rt_utils import RTStructBuilder

from sam_l1dfl import __version__
from sam_l1dfl.data.dicom.read import CT_STORAGE, PET_STORAGE
from sam_l1dfl.data.dicom.suv import HALF_LIFE_S, PHILIPS_GROUP
from sam_l1dfl.data.synthetic import generate_case
from sam_l1dfl.io_utils import atomic_dir

#: Radionuclide codes (DICOM CID 4020) and radiopharmaceutical names.
NUCLIDE_CODES = {"F-18": ("77004003", "SCT", "^18^Fluorine", "PSMA-1007 F^18^", 0.9686),
                 "Ga-68": ("35337001", "SCT", "^68^Gallium", "Ga^68^ PSMA-11", 0.8891)}
MANUFACTURER = "sam-l1dfl synthetic"
#: Defaults of a synthetic PET study.
DOSE_BQ = 250e6
WEIGHT_KG = 82.5
INJECTION_TIME = dt.datetime(2026, 1, 5, 9, 12, 30)
SCAN_TIME = dt.datetime(2026, 1, 5, 10, 14, 5)
#: Philips CNTS: Bq/mL per count (the private activity concentration scale factor 7053,1009).
CNTS_BQML_PER_COUNT = 0.37
_INT16_TOP = 32000.0


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters."""
    text = f"{value:.10g}"
    return text if len(text) <= 16 else f"{value:.9g}"


def _da(t: dt.datetime) -> str:
    return t.strftime("%Y%m%d")


def _tm(t: dt.datetime) -> str:
    return t.strftime("%H%M%S.%f")


def _uid(*parts) -> str:
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _slice_geometry(image: sitk.Image) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Positions (n, 3) of the slices, the direction matrix and ImageOrientationPatient."""
    D = np.asarray(image.GetDirection(), float).reshape(3, 3)
    if np.linalg.det(D) < 0:
        raise ValueError("a DICOM slice stack needs a right-handed direction (det > 0); "
                         "flip the image's last axis first")
    spacing = np.asarray(image.GetSpacing(), float)
    k = np.arange(image.GetSize()[2])
    positions = np.asarray(image.GetOrigin(), float) + np.outer(k * spacing[2], D[:, 2])
    iop = [_ds(v) for v in (*D[:, 0], *D[:, 1])]
    return positions, D, iop


def _base_dataset(sop_class: str, sop_uid: str, patient_id: str, study_uid: str, series_uid: str,
                  frame_uid: str, modality: str, series_number: int, when: dt.datetime) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName, ds.PatientID = f"Synthetic^{patient_id}", patient_id
    ds.PatientBirthDate, ds.PatientSex = "19560101", "M"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
    ds.StudyDate, ds.StudyTime = _da(when), _tm(when)
    ds.Modality, ds.SeriesNumber = modality, series_number
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer, ds.ManufacturerModelName = MANUFACTURER, "phantom"
    ds.SoftwareVersions, ds.DeviceSerialNumber = __version__, "0"
    ds.BodyPartExamined = "WHOLEBODY"
    return ds


def _pixel_module(ds: Dataset, stored: np.ndarray, signed: bool) -> None:
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = np.ascontiguousarray(stored.astype("<i2" if signed else "<u2")).tobytes()


def _plane(ds: Dataset, image: sitk.Image, position: np.ndarray, iop: list[str]) -> None:
    sx, sy, sz = image.GetSpacing()
    ds.ImageOrientationPatient = iop
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.PixelSpacing = [_ds(sy), _ds(sx)]  # row spacing (between rows), column spacing
    ds.SliceThickness = _ds(sz)


def _write_slices(datasets: list[Dataset], out_dir: Path, prefix: str, reverse: bool) -> list[Path]:
    """Write one file per slice (numbered from the last slice when ``reverse``); paths in slice order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    n = len(datasets)
    paths = []
    for k, ds in enumerate(datasets):
        number = n - k if reverse else k + 1
        ds.InstanceNumber = number
        path = out_dir / f"{prefix}{number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _pet_tags(ds: Dataset, nuclide: str, units: str, decay_correction: str, weight_kg: float,
              series_time: dt.datetime, acquired: dt.datetime, decay_to: dt.datetime, half_life: float,
              n_slices: int, k: int) -> None:
    """The PET image and series tags of slice ``k`` (acquired at ``acquired``, decayed to ``decay_to``)."""
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SeriesDate, ds.SeriesTime = _da(series_time), _tm(series_time)
    ds.AcquisitionDate, ds.AcquisitionTime = _da(acquired), _tm(acquired)
    ds.AcquisitionDateTime = acquired.strftime("%Y%m%d%H%M%S.%f")
    ds.ContentDate, ds.ContentTime = _da(series_time), _tm(series_time)
    ds.SeriesDescription = f"PET {nuclide} {units} {decay_correction}"
    ds.PatientWeight = _ds(weight_kg)
    ds.Units, ds.DecayCorrection = units, decay_correction
    ds.CorrectedImage = ["ATTN", "SCAT", "NORM"] + ([] if decay_correction == "NONE" else ["DECY"])
    ds.SeriesType = ["WHOLE BODY", "IMAGE"]
    ds.CountsSource, ds.RandomsCorrectionMethod = "EMISSION", "DLYD"
    ds.ReconstructionMethod, ds.CollimatorType = "OSEM", "NONE"
    ds.PatientOrientationCodeSequence, ds.PatientGantryRelationshipCodeSequence = DicomSequence(), DicomSequence()
    ds.NumberOfSlices = n_slices
    ds.ImageIndex = k + 1
    ds.FrameReferenceTime = _ds((acquired - series_time).total_seconds() * 1000.0)
    ds.ActualFrameDuration = 120000
    if decay_correction != "NONE":  # Type 1C: only when the image is decay-corrected
        ds.DecayFactor = _ds(2.0 ** ((acquired - decay_to).total_seconds() / half_life))


def _radiopharmaceutical(nuclide: str, injection_time: dt.datetime, dose_bq: float) -> Dataset:
    """The item of the Radiopharmaceutical Information Sequence: drug, injection, dose and nuclide."""
    code, scheme, meaning, drug, positron_fraction = NUCLIDE_CODES[nuclide]
    half_life = HALF_LIFE_S[nuclide]
    item = Dataset()
    item.Radiopharmaceutical = drug
    item.RadiopharmaceuticalStartTime = _tm(injection_time)
    item.RadiopharmaceuticalStartDateTime = injection_time.strftime("%Y%m%d%H%M%S.%f")
    item.RadionuclideTotalDose = _ds(dose_bq)
    item.RadionuclideHalfLife = _ds(half_life)
    item.RadionuclidePositronFraction = _ds(positron_fraction)
    nucl = Dataset()
    nucl.CodeValue, nucl.CodingSchemeDesignator, nucl.CodeMeaning = code, scheme, meaning
    item.RadionuclideCodeSequence = DicomSequence([nucl])
    return item


def write_pet_series(suv: sitk.Image, out_dir: "str | os.PathLike", *, nuclide: str = "F-18",
                     dose_bq: float = DOSE_BQ, weight_kg: float = WEIGHT_KG,
                     injection_time: dt.datetime = INJECTION_TIME, scan_time: dt.datetime = SCAN_TIME,
                     decay_correction: str = "START", units: str = "BQML", reverse: bool = False,
                     study_uid: str | None = None, frame_of_reference_uid: str | None = None,
                     patient_id: str = "SYNTH0001", seed: int = 0, series_time: dt.datetime | None = None,
                     slice_seconds: float = 0.0, series_number: int = 2) -> list[Path]:
    """Write ``suv`` (SUVbw) as a PET series in ``out_dir``; return the files in slice order.

    The activity is ``SUV * dose(t) / (weight * 1000)``, with the dose decayed
    (``2 ** (-(t - injection) / half-life)``) to: the start of the acquisition
    (``decay_correction="START"``: ``scan_time``, or ``series_time`` when that is earlier; a later
    ``series_time`` is a post-processed series), the injection (``"ADMIN"``: no decay) or each
    slice's own acquisition time (``"NONE"``).  Slice ``k`` is acquired at
    ``scan_time + k * slice_seconds``.  ``units``: ``"BQML"`` (activity), ``"CNTS"`` (counts of
    :data:`CNTS_BQML_PER_COUNT` Bq/mL, with the Philips private SUV scale factor (7053,1000) and
    activity concentration scale factor (7053,1009)) or ``"GML"`` (the SUV itself).  Each slice
    stores ``round(value / slope)`` in int16 with its own ``RescaleSlope``.
    """
    if nuclide not in NUCLIDE_CODES:
        raise ValueError(f"nuclide must be one of {', '.join(NUCLIDE_CODES)}, not {nuclide!r}")
    if decay_correction not in ("START", "ADMIN", "NONE") or units not in ("BQML", "CNTS", "GML"):
        raise ValueError(f"unknown decay_correction {decay_correction!r} or units {units!r}")
    half_life = HALF_LIFE_S[nuclide]
    series_time = scan_time if series_time is None else series_time
    study_uid = study_uid or _uid("study", patient_id, seed)
    frame_uid = frame_of_reference_uid or _uid("frame", patient_id, seed)
    series_uid = _uid("pet", study_uid, seed, series_number, nuclide, decay_correction, units, reverse)
    positions, _D, iop = _slice_geometry(suv)
    array = sitk.GetArrayFromImage(suv).astype(np.float64)
    datasets = []
    for k in range(array.shape[0]):
        acquired = scan_time + dt.timedelta(seconds=k * slice_seconds)
        decay_to = {"START": min(series_time, scan_time), "ADMIN": injection_time, "NONE": acquired}[decay_correction]
        decayed_dose = dose_bq * 2.0 ** (-(decay_to - injection_time).total_seconds() / half_life)
        suv_per_bqml = weight_kg * 1000.0 / decayed_dose
        value = array[k] / suv_per_bqml  # Bq/mL
        if units == "CNTS":
            value = value / CNTS_BQML_PER_COUNT
        elif units == "GML":
            value = array[k]
        top = float(np.abs(value).max())
        slope = float(_ds(top / _INT16_TOP)) if top > 0 else 1.0
        stored = np.round(value / slope).astype(np.int16)
        sop_uid = _uid(series_uid, k)
        ds = _base_dataset(PET_STORAGE, sop_uid, patient_id, study_uid, series_uid, frame_uid, "PT",
                           series_number, series_time)
        _pet_tags(ds, nuclide, units, decay_correction, weight_kg, series_time, acquired, decay_to, half_life,
                  array.shape[0], k)
        ds.RadiopharmaceuticalInformationSequence = DicomSequence(
            [_radiopharmaceutical(nuclide, injection_time, dose_bq)])
        _plane(ds, suv, positions[k], iop)
        ds.RescaleSlope, ds.RescaleIntercept = _ds(slope), "0"
        if units == "CNTS":
            block = ds.private_block(0x7053, PHILIPS_GROUP, create=True)
            block.add_new(0x00, "DS", _ds(suv_per_bqml * CNTS_BQML_PER_COUNT))
            block.add_new(0x09, "DS", _ds(CNTS_BQML_PER_COUNT))
        _pixel_module(ds, stored, signed=True)
        datasets.append(ds)
    return _write_slices(datasets, Path(out_dir), "PT", reverse)


def write_ct_series(ct: sitk.Image, out_dir: "str | os.PathLike", *, study_uid: str, frame_of_reference_uid: str,
                    patient_id: str = "SYNTH0001", seed: int = 0, scan_time: dt.datetime = SCAN_TIME,
                    reverse: bool = False, series_number: int = 1) -> list[Path]:
    """Write ``ct`` (HU, integers) as a CT series: unsigned values, ``RescaleIntercept`` -1024."""
    series_uid = _uid("ct", study_uid, seed, series_number, reverse)
    positions, _D, iop = _slice_geometry(ct)
    hu = np.round(sitk.GetArrayFromImage(ct)).astype(np.int32)
    if hu.min() < -1024 or hu.max() > 65535 - 1024:
        raise ValueError(f"CT values {hu.min()}..{hu.max()} HU do not fit an unsigned 16-bit series")
    datasets = []
    for k in range(hu.shape[0]):
        ds = _base_dataset(CT_STORAGE, _uid(series_uid, k), patient_id, study_uid, series_uid,
                           frame_of_reference_uid, "CT", series_number, scan_time)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SeriesDate, ds.SeriesTime = _da(scan_time), _tm(scan_time)
        ds.AcquisitionDate, ds.AcquisitionTime = _da(scan_time), _tm(scan_time)
        ds.ContentDate, ds.ContentTime = _da(scan_time), _tm(scan_time)
        ds.SeriesDescription = "CT low dose"
        ds.KVP, ds.AcquisitionNumber, ds.PatientPosition = "120", 1, "FFS"
        _plane(ds, ct, positions[k], iop)
        ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
        _pixel_module(ds, hu[k] + 1024, signed=False)
        datasets.append(ds)
    return _write_slices(datasets, Path(out_dir), "CT", reverse)


def write_seg(mask: sitk.Image, source_files: Sequence[Path], path: "str | os.PathLike", *, seed: int = 0,
              label: str = "lesion") -> Path:
    """Write a binary ``mask`` on the grid of the source series (files in slice order) as a DICOM SEG."""
    sources = [hd.imread(str(f)) for f in source_files]
    frames = sitk.GetArrayFromImage(mask).astype(bool)
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label=label,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description], series_instance_uid=_uid("seg", sources[0].SeriesInstanceUID, seed),
        series_number=10, sop_instance_uid=_uid("seg-sop", sources[0].SeriesInstanceUID, seed), instance_number=1,
        manufacturer=MANUFACTURER, manufacturer_model_name="phantom", software_versions=__version__,
        device_serial_number="0", omit_empty_frames=bool(frames.any()))  # a lesion-free SEG keeps its frames
    seg.save_as(path)
    return Path(path)


def write_rtstruct(mask: sitk.Image, series_dir: "str | os.PathLike", path: "str | os.PathLike",
                   label: str = "lesion") -> Path:
    """Write a binary ``mask`` on the grid of the series in ``series_dir`` (that series only) as an
    RTSTRUCT with rt-utils (square slices; rt-utils orders slices along their normal, as SimpleITK)."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # rt-utils sets pydicom 3's deprecated is_little_endian
        rtstruct = RTStructBuilder.create_new(dicom_series_path=str(series_dir))
        # rt-utils masks are (row, column, slice)
        rtstruct.add_roi(mask=sitk.GetArrayFromImage(mask).transpose(1, 2, 0).astype(bool), name=label)
    ds, source = rtstruct.ds, rtstruct.series_data[0]
    for roi in ds.ROIContourSequence:  # rt-utils writes decimal strings longer than DICOM's 16 characters
        for contour in roi.get("ContourSequence", []):
            contour.ContourData = [_ds(float(v)) for v in contour.ContourData]
    # and leaves out these attributes of the RT Structure Set IOD
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = source.FrameOfReferenceUID, ""
    ds.AccessionNumber, ds.ReferringPhysicianName, ds.OperatorsName = source.get("AccessionNumber", ""), "", ""
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


def write_synthetic_study(out_dir: "str | os.PathLike", *, seed: int = 0, nuclide: str = "F-18",
                          contours: Sequence[str] = ("seg", "rtstruct"), reverse: bool = False,
                          oblique: bool = False, n_lesions: int | None = None,
                          slices: "tuple[int, int] | None" = None, **pet_options) -> dict:
    """Write a synthetic PET/CT study of ``generate_case(seed)`` under ``out_dir`` (a new folder):
    ``PET/``, ``CT/``, and ``SEG.dcm`` / ``RTSTRUCT.dcm`` as ``contours`` asks.

    ``slices=(k0, k1)`` keeps only those slices of the phantom (fast tests); ``pet_options`` go to
    :func:`write_pet_series` (dose, weight, times, ``decay_correction``, ``units``).  Returns the
    paths (``"pet"``, ``"ct"``: files in slice order; ``"seg"``, ``"rtstruct"``: a file or None),
    the phantom's ``"suv"``, ``"ct_image"`` and ``"seg_image"``, and ``"case"`` (the
    :class:`~sam_l1dfl.data.synthetic.SyntheticCase`).
    """
    unknown = set(contours) - {"seg", "rtstruct"}
    if unknown:
        raise ValueError(f"contours must be 'seg' and/or 'rtstruct', not {sorted(unknown)}")
    case = generate_case(seed, case_id=f"synth_{seed:03d}", direction="oblique" if oblique else "lps",
                         n_lesions=n_lesions)
    suv, ct, seg = case.pet, case.ct, case.seg
    if slices is not None:
        suv, ct, seg = (img[:, :, slices[0]:slices[1]] for img in (suv, ct, seg))
    patient_id = f"SYNTH{seed:04d}"
    study_uid = _uid("study", patient_id, seed)
    frame_uid = _uid("frame", patient_id, seed)
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        pet_files = write_pet_series(suv, tmp / "PET", nuclide=nuclide, reverse=reverse, study_uid=study_uid,
                                     frame_of_reference_uid=frame_uid, patient_id=patient_id, seed=seed,
                                     **pet_options)
        ct_files = write_ct_series(ct, tmp / "CT", study_uid=study_uid, frame_of_reference_uid=frame_uid,
                                   patient_id=patient_id, seed=seed, reverse=reverse,
                                   scan_time=pet_options.get("scan_time", SCAN_TIME))
        seg_path = write_seg(seg, pet_files, tmp / "SEG.dcm", seed=seed) if "seg" in contours else None
        rt_path = write_rtstruct(seg, tmp / "PET", tmp / "RTSTRUCT.dcm") if "rtstruct" in contours else None
    moved = [out / p.relative_to(tmp) for p in pet_files], [out / p.relative_to(tmp) for p in ct_files]
    return {"pet": moved[0], "ct": moved[1],
            "seg": None if seg_path is None else out / seg_path.name,
            "rtstruct": None if rt_path is None else out / rt_path.name,
            "suv": suv, "ct_image": ct, "seg_image": seg, "case": case}


__all__ = ["CNTS_BQML_PER_COUNT", "DOSE_BQ", "INJECTION_TIME", "NUCLIDE_CODES", "SCAN_TIME", "WEIGHT_KG",
           "write_ct_series", "write_pet_series", "write_rtstruct", "write_seg", "write_synthetic_study"]
