"""A predicted mask as a DICOM Segmentation (SEG) of its source PET series, with highdicom.

:func:`write_dicom_seg` writes a binary mask (one segment, ``"lesion"``) or a lesion label map
(``per_lesion=True``: one segment per label, ``"lesion <label>"``, in label order, with the
label as tracking ID) as a BINARY DICOM SEG (``highdicom.seg.Segmentation``) that references
every instance of the source series.  Each segment is coded with SNOMED CT, as DICOM CID 7150 /
7151 ask: category ``49755003`` *Morphologically abnormal structure*, type ``108369006``
*Neoplasm* (``pydicom.sr.codedict.codes.SCT``); its algorithm type is SEMIAUTOMATIC (a
prompted model) with an algorithm identification naming ``sam-l1dfl``, its version and
its parameters (the checkpoint; family ``DCM 123110`` *Artificial Intelligence*).

**Geometry.**  The source series is read with SimpleITK's ``ImageSeriesReader`` (slice order,
spacing, origin, direction), and frame ``k`` of the SEG is slice ``k`` of that image, so the
files are passed to highdicom in the reader's order.  The mask must be on that grid, by the
package's one "same grid" rule (:func:`sam_l1dfl.data.geometry.grid_mismatches`); otherwise it
is refused in one line naming what differs, never resampled.  A mask from ``sam-l1dfl infer``
is on its PET's grid, and a PET converted from this series with SimpleITK has the series' grid,
so a difference means another series (or a reoriented copy); resampling would move or blur
lesions without anyone noticing, and a SEG of the wrong series is worse than none.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.sr.codedict import codes

from sam_l1dfl import __version__
from sam_l1dfl.data.dicom.read import PET_STORAGE, read_dataset, series_reader
from sam_l1dfl.data.geometry import grid_differences
from sam_l1dfl.data.io import itk_message
from sam_l1dfl.errors import InputError
from sam_l1dfl.io_utils import atomic_path

#: DICOM CID 7150 segmentation property category / CID 7151 type of every segment we write.
CATEGORY = codes.SCT.MorphologicallyAbnormalStructure  # SCT 49755003
PROPERTY_TYPE = codes.SCT.Neoplasm  # SCT 108369006
ALGORITHM_NAME = "sam-l1dfl"
SERIES_NUMBER = 901


@dataclass
class DicomSegSummary:
    """What :func:`write_dicom_seg` wrote."""

    path: Path
    segments: list[str]  #: segment labels, in segment-number order
    referenced_series_uid: str
    frames: int  #: source slices


def read_reference_series(reference_dir: "str | os.PathLike") -> tuple[list[str], sitk.Image]:
    """The files of the one DICOM series in ``reference_dir`` (a PET Image Storage series, else
    refused), in SimpleITK's slice order, and the series' image geometry (an empty image on its grid: the reader's spacing, origin, direction)."""
    d = Path(reference_dir)
    if not d.is_dir():
        raise InputError(d, "not a folder; give the folder of the source PET series (--dicom-ref)")
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(d))
    if len(ids) != 1:
        what = "no DICOM image series" if not ids else f"{len(ids)} DICOM series"
        raise InputError(d, f"holds {what}; give the folder of exactly one series, the source PET")
    files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(d), ids[0]))
    first = read_dataset(files[0], stop_before_pixels=True)
    if first.get("SOPClassUID") != PET_STORAGE:
        what = pydicom.uid.UID(str(first.get("SOPClassUID", ""))).name or "unknown"
        raise InputError(d, f"holds a {first.get('Modality', '?')} series ({what}), not a PET image series; "
                            "give the folder of the source PET series (--dicom-ref)")
    reader = series_reader(files, sitk.sitkUnknown)  # the stored pixel type; only the geometry is kept
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(d, f"cannot read the DICOM series ({itk_message(exc)})") from None
    ref = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    ref.CopyInformation(image)
    return files, ref


def check_series_grid(image: sitk.Image, reference_dir: "str | os.PathLike",
                      name: "str | os.PathLike | None" = None) -> list[str]:
    """The files of the series in ``reference_dir`` (slice order), after checking that ``image``
    (named ``name`` in the error) is on its grid; a mismatch is one line naming what differs."""
    files, ref = read_reference_series(reference_dir)
    diff = grid_differences(ref, image)
    if diff:
        raise InputError(name, f"is not on the grid of the DICOM series in {reference_dir} ({'; '.join(diff)}); "
                               "give the series the PET image was converted from")
    return files


def _segments(mask: sitk.Image, per_lesion: bool, names: dict) -> tuple[np.ndarray, list[str], list[int]]:
    """``(pixel array with consecutive segment numbers, segment labels, source label values)``."""
    arr = sitk.GetArrayFromImage(mask)
    if not np.issubdtype(arr.dtype, np.integer) and not np.array_equal(arr, np.round(arr)):
        raise InputError(None, "the mask has non-integer values; give a binary mask or a lesion label map")
    arr = arr.astype(np.int64)
    if arr.min() < 0:
        raise InputError(None, "the mask has negative values; give a binary mask or a lesion label map")
    if not per_lesion:
        return (arr > 0).astype(np.uint8), ["lesion"], [1]
    values = [int(v) for v in np.unique(arr) if v > 0]
    lut = np.zeros(int(arr.max()) + 1, np.uint16)
    lut[values] = np.arange(1, len(values) + 1)
    return lut[arr], [names.get(v, f"lesion {v}") for v in values], values


def write_dicom_seg(mask: sitk.Image, reference_dir: "str | os.PathLike", out_path: "str | os.PathLike", *,
                    per_lesion: bool = False, segment_labels: Optional[dict[int, str]] = None,
                    algorithm_parameters: Optional[dict[str, str]] = None,
                    series_description: str = "sam-l1dfl lesions", series_number: int = SERIES_NUMBER,
                    mask_name: "str | os.PathLike | None" = None) -> DicomSegSummary:
    """Write ``mask`` (binary, or a label map with ``per_lesion``) as a DICOM SEG of the series in
    ``reference_dir``; ``mask_name`` names the mask in error messages.

    ``segment_labels`` maps label values to segment labels (default ``"lesion <value>"``);
    ``algorithm_parameters`` (e.g. the checkpoint) go into the algorithm identification.

    A prediction with no lesion voxels gives a SEG with one empty segment (every frame kept), so
    "nothing found" is stored too.
    """
    files = check_series_grid(mask, reference_dir, mask_name)
    pixels, labels, values = _segments(mask, per_lesion, segment_labels or {})
    if not values:  # empty label map: one empty "lesion" segment
        pixels, labels, values = pixels.astype(np.uint8), ["lesion"], [1]
    sources = [read_dataset(f) for f in files]
    params = {k: str(v) for k, v in (algorithm_parameters or {}).items() if v is not None} or None
    algorithm = hd.AlgorithmIdentificationSequence(name=ALGORITHM_NAME, family=codes.cid7162.ArtificialIntelligence,
                                                   version=__version__, parameters=params)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i + 1, segment_label=label, segmented_property_category=CATEGORY,
            segmented_property_type=PROPERTY_TYPE, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
            algorithm_identification=algorithm, tracking_id=label, tracking_uid=hd.UID())
        for i, label in enumerate(labels)]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=series_number,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=ALGORITHM_NAME,
        manufacturer_model_name=ALGORITHM_NAME, software_versions=__version__, device_serial_number="0",
        content_description="lesions predicted by sam-l1dfl (not for clinical use)", content_label="LESIONS",
        omit_empty_frames=bool(pixels.any()))
    seg.SeriesDescription = series_description
    with atomic_path(out_path) as tmp:
        seg.save_as(tmp)
    return DicomSegSummary(Path(out_path), labels, str(sources[0].SeriesInstanceUID), len(files))


__all__ = ["CATEGORY", "PROPERTY_TYPE", "DicomSegSummary", "check_series_grid", "read_reference_series",
           "write_dicom_seg"]
