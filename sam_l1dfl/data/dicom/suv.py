"""SUV body-weight from the DICOM header of a PET series (the QIBA vendor-neutral definition).

:func:`suv_factors` gives, for each slice of a PET series (pydicom headers in slice order), the
factor that turns the rescaled pixel value (``stored * RescaleSlope + RescaleIntercept``, per slice)
into SUVbw.  It follows the QIBA "Vendor-neutral pseudo-code for SUV calculation" (QIBA FDG-PET/CT
Profile, Appendix G; QIBA wiki "Standardized Uptake Value (SUV)"; also the IBSI SUV computation
notes, https://oncoray.github.io/suv_computation/suv.html):

* ``Units`` (0054,1001) ``BQML``: ``SUVbw = value * PatientWeight[kg] * 1000 / decayed dose``,
  with ``decayed dose = RadionuclideTotalDose * 2 ** (-decay time / RadionuclideHalfLife)``
  (dose 0018,1074 in Bq, half-life 0018,1075 in s, weight 0010,1030; from the first item of the
  RadiopharmaceuticalInformationSequence 0054,0016).  The decay time follows ``DecayCorrection``
  (0054,1102):

  - ``START``: from the injection to the series reference time: ``SeriesDate``/``SeriesTime``
    when they are not after the earliest ``AcquisitionDate``/``AcquisitionTime`` of the series,
    else (a post-processed series) the earliest acquisition time (QIBA uses the GE private scan
    time there; the earliest acquisition is its vendor-neutral stand-in);
  - ``ADMIN``: the pixels are decay-corrected to the injection: no decay;
  - ``NONE``: no decay correction: each slice's own acquisition time
    (``AcquisitionDateTime``, or ``AcquisitionDate`` + ``AcquisitionTime``).

  The injection is ``RadiopharmaceuticalStartDateTime`` (0018,1078) when it holds a time (not
  only a date), or
  ``RadiopharmaceuticalStartTime`` (0018,1072) on the ``SeriesDate`` (the day before when that
  would be after the scan: QIBA's "consider spanning midnight").
* ``CNTS`` (Philips): the SUV scale factor ``(7053,1000)`` of the "Philips PET Private Group";
  without it, ``(7053,1009)`` (activity concentration scale factor) turns counts into Bq/mL and
  the ``BQML`` rule applies.
* ``GML``: the series already holds SUVbw (factor 1).

Everything that would give a silently wrong SUV is refused with an
:class:`~sam_l1dfl.errors.InputError` naming the file and the tag: a missing or non-positive
dose, half-life or weight, missing times, an injection after the scan or more than 10 half-lives
before it, other ``Units``, values that differ between slices, an image that is not
attenuation-corrected, or one that says it is decay-corrected without ``DECY`` in
``CorrectedImage``.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.valuerep import DA, DT, TM

from sam_l1dfl.errors import InputError

#: Half-lives (s) of the PSMA/FDG nuclides our synthetic studies use.
HALF_LIFE_S = {"F-18": 109.77 * 60.0, "Ga-68": 67.71 * 60.0}
PHILIPS_GROUP = "Philips PET Private Group"
UNITS = ("BQML", "CNTS", "GML")
DECAY_CORRECTIONS = ("START", "ADMIN", "NONE")
#: A decay time of more than this many half-lives is refused (a wrong date or time).
MAX_HALF_LIVES = 10.0


@dataclass
class SuvConversion:
    """Per-slice SUVbw factors of one PET series and what they came from."""

    factors: np.ndarray  # SUV per rescaled pixel value, one per slice (slice order)
    units: str
    decay_correction: str
    weight_kg: float | None = None
    dose_bq: float | None = None
    half_life_s: float | None = None
    decay_s: float | None = None  # START: the one decay time; NONE: the first slice's
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if self.units == "GML":
            return "Units GML (already SUVbw)"
        text = f"Units {self.units}, DecayCorrection {self.decay_correction}"
        if self.dose_bq is not None:
            text += (f", dose {self.dose_bq / 1e6:.1f} MBq, weight {self.weight_kg:g} kg, "
                     f"half-life {self.half_life_s / 60:.2f} min")
        if self.decay_s is not None:
            text += f", decay time {self.decay_s / 60:.1f} min"
        return text


def _number(ds: Dataset, keyword: str, path, where: str = "") -> float:
    value = ds.get(keyword)
    if value is None or value == "":
        raise InputError(path, f"{where}{keyword} is missing; cannot compute SUV")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(path, f"{where}{keyword} {value!r} is not a number") from None
    if not np.isfinite(number) or number <= 0:
        raise InputError(path, f"{where}{keyword} is {number:g}; cannot compute SUV")
    return number


def _naive(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=None)


def _has_clock_time(ds: Dataset, datetime_kw: str | None) -> bool:
    """Whether ``datetime_kw`` is present with at least hours and minutes (a DT may stop at the
    date: ``20260105`` would put the injection at midnight)."""
    return bool(datetime_kw) and re.match(r"\s*\d{12}", str(ds.get(datetime_kw) or "")) is not None


def _datetime(ds: Dataset, date_kw: str, time_kw: str, datetime_kw: str | None, path,
              where: str = "", date_from: Dataset | None = None) -> dt.datetime:
    """``datetime_kw`` (DT) when it holds a clock time, else ``date_kw`` + ``time_kw`` (the date
    from ``date_from`` when given)."""
    try:
        if _has_clock_time(ds, datetime_kw):
            return _naive(DT(str(ds.get(datetime_kw))))
        date_ds = ds if date_from is None else date_from
        date, time = date_ds.get(date_kw), ds.get(time_kw)
        if not date or not time:
            missing = date_kw if not date else time_kw
            raise InputError(path, f"{where}{missing} is missing; cannot compute SUV")
        return dt.datetime.combine(DA(str(date)), TM(str(time)))
    except ValueError as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(path, f"{where}{datetime_kw or time_kw}: invalid date or time ({exc})") from None


def _same(values: list, keyword: str, paths: Sequence) -> object:
    """The one value a tag has on every slice; refuse a series where it differs."""
    for v, p in zip(values, paths):
        if v != values[0]:
            raise InputError(p, f"{keyword} is {v!r} here but {values[0]!r} in {paths[0]}; "
                                "one series must have one value")
    return values[0]


def _philips_factor(ds: Dataset, element: int) -> float | None:
    try:
        block = ds.private_block(0x7053, PHILIPS_GROUP)
        value = block[element].value
    except KeyError:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _check_corrections(ds: Dataset, decay: str, path) -> None:
    corrected = ds.get("CorrectedImage")
    if not corrected:
        return
    corrected = [str(c).upper() for c in ([corrected] if isinstance(corrected, str) else corrected)]
    if "ATTN" not in corrected:
        raise InputError(path, f"CorrectedImage {corrected} lacks ATTN: not attenuation-corrected, "
                               "SUV would be meaningless")
    if decay != "NONE" and "DECY" not in corrected:
        raise InputError(path, f"DecayCorrection is {decay} but CorrectedImage {corrected} lacks DECY")


def _radiopharmaceutical_items(headers: Sequence[Dataset], paths: Sequence["str | os.PathLike"]) -> list:
    """The first RadiopharmaceuticalInformationSequence item of each slice."""
    items = []
    for h, p in zip(headers, paths):
        seq = h.get("RadiopharmaceuticalInformationSequence")
        if not seq:
            raise InputError(p, "RadiopharmaceuticalInformationSequence is missing; cannot compute SUV")
        items.append(seq[0])
    return items


def _reference_times(decay: str, series_time: dt.datetime, injection: dt.datetime, acquisitions: list,
                     notes: list[str]) -> list:
    """The time each slice's activity is decay-corrected to (``DecayCorrection`` START, ADMIN or NONE);
    a note when SeriesTime is after the acquisition."""
    n = len(acquisitions)
    if decay == "START":
        earliest = min(acquisitions)
        reference = series_time if series_time <= earliest else earliest
        if reference is earliest and series_time != earliest:
            notes.append("SeriesTime is after the acquisition: the earliest AcquisitionTime is the reference")
        times = [reference] * n
    elif decay == "ADMIN":
        times = [injection] * n
    else:
        times = acquisitions
    return times


def _check_decay_times(decay_s: np.ndarray, half_life: float, injection: dt.datetime, times: list,
                       paths: Sequence["str | os.PathLike"]) -> None:
    """Refuse a reference time before the injection or more than MAX_HALF_LIVES half-lives after it."""
    bad = int(np.argmax((decay_s < 0) | (decay_s > MAX_HALF_LIVES * half_life)))
    if decay_s[bad] < 0 or decay_s[bad] > MAX_HALF_LIVES * half_life:
        raise InputError(paths[bad], f"injection at {injection:%Y-%m-%d %H:%M:%S} and reference time "
                                     f"{times[bad]:%Y-%m-%d %H:%M:%S} are {decay_s[bad] / 3600:.2f} h apart "
                                     f"(half-life {half_life / 60:.1f} min); check the dates and times")


def suv_factors(headers: Sequence[Dataset], paths: Sequence["str | os.PathLike"]) -> SuvConversion:
    """SUVbw factor of each slice (``headers`` and their ``paths`` in slice order)."""
    if not headers:
        raise InputError(None, "no PET slices")
    first, path0 = headers[0], paths[0]
    units = str(_same([str(h.get("Units", "")).upper() for h in headers], "Units", paths))
    if units not in UNITS:
        raise InputError(path0, f"Units {units or '(missing)'} cannot be converted to SUV "
                                f"(known: {', '.join(UNITS)})")
    decay = str(_same([str(h.get("DecayCorrection", "")).upper() for h in headers], "DecayCorrection", paths))
    if units == "GML":
        return SuvConversion(np.ones(len(headers)), units, decay or "-")
    if decay not in DECAY_CORRECTIONS:
        raise InputError(path0, f"DecayCorrection {decay or '(missing)'} is not one of "
                                f"{', '.join(DECAY_CORRECTIONS)}; cannot compute SUV")
    for h, p in zip(headers, paths):
        _check_corrections(h, decay, p)
    n = len(headers)
    if units == "CNTS":
        suv_scale = [_philips_factor(h, 0x00) for h in headers]
        if all(s is not None for s in suv_scale):
            return SuvConversion(np.asarray(suv_scale, float), units, decay,
                                 notes=["Philips SUV scale factor (7053,1000)"])
        to_bqml = [_philips_factor(h, 0x09) for h in headers]
        missing = next((p for s, p in zip(to_bqml, paths) if s is None), None)
        if missing is not None:
            raise InputError(missing, "Units CNTS without the Philips SUV scale factor (7053,1000) or "
                                      "activity concentration scale factor (7053,1009); cannot compute SUV")
        scale = np.asarray(to_bqml, float)
    else:
        scale = np.ones(n)

    weight = _same([_number(h, "PatientWeight", p) for h, p in zip(headers, paths)], "PatientWeight", paths)
    where = "RadiopharmaceuticalInformationSequence: "
    items = _radiopharmaceutical_items(headers, paths)
    dose = _same([_number(it, "RadionuclideTotalDose", p, where) for it, p in zip(items, paths)],
                 "RadionuclideTotalDose", paths)
    half_life = _same([_number(it, "RadionuclideHalfLife", p, where) for it, p in zip(items, paths)],
                      "RadionuclideHalfLife", paths)
    series_time = _datetime(first, "SeriesDate", "SeriesTime", None, path0)
    injection = _same([_datetime(it, "SeriesDate", "RadiopharmaceuticalStartTime",
                                 "RadiopharmaceuticalStartDateTime", p, where, date_from=h)
                       for it, h, p in zip(items, headers, paths)], "RadiopharmaceuticalStartDateTime", paths)
    acquisitions = [_datetime(h, "AcquisitionDate", "AcquisitionTime", "AcquisitionDateTime", p)
                    for h, p in zip(headers, paths)]
    notes = []
    times = _reference_times(decay, series_time, injection, acquisitions, notes)
    no_date = not _has_clock_time(items[0], "RadiopharmaceuticalStartDateTime")
    if no_date and injection > min(times):
        injection -= dt.timedelta(days=1)
        notes.append("RadiopharmaceuticalStartTime is after the scan on the SeriesDate: taken as the day before")
    decay_s = np.array([(t - injection).total_seconds() for t in times])
    _check_decay_times(decay_s, half_life, injection, times, paths)
    decayed = dose * np.exp2(-decay_s / half_life)
    factors = scale * weight * 1000.0 / decayed
    if units == "CNTS":
        notes.append("Philips activity concentration scale factor (7053,1009)")
    return SuvConversion(factors, units, decay, weight, dose, half_life,
                         None if decay == "ADMIN" else float(decay_s[0]), notes)


__all__ = ["DECAY_CORRECTIONS", "HALF_LIFE_S", "MAX_HALF_LIVES", "PHILIPS_GROUP", "SuvConversion", "UNITS",
           "suv_factors"]
