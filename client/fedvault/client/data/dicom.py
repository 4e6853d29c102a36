"""DICOM de-identification at the site: the PS3.15 Annex E Basic Application Level
Confidentiality Profile, with keyed UIDs and shifted dates.

The action for each attribute comes from the Annex E table (E.1-1) as Kitware's
``dicom-anonymizer`` package carries it, regenerated from the standard (edition
2026c); fedvault applies it to every data set, nested sequence items and the file
meta information included:

- ``X`` remove; ``Z`` empty; ``D`` replace with a dummy value of the VR; the
  combined actions (``X/Z``, ``X/D``, ``Z/D``, ``X/Z/D``) keep the attribute
  (emptied or replaced) so that the object stays valid, as that package does.
- UIDs (``U``, and every other UID that is not a UID of the standard such as a SOP
  class or transfer syntax) become ``2.25.<HMAC-SHA256(site secret, uid)>``: the
  same original UID gives the same pseudonym in every file of the site, so series,
  studies and references stay linked; without the secret nothing links back.
- The patient ID becomes the keyed pseudonym tables use
  (:func:`fedvault.client.data.anonymize.pseudonym`); name and birth date are
  emptied.
- Dates (DA, and the date of DT) that are kept are shifted by a whole number of
  days keyed on the site secret and the patient (the Retain Longitudinal Temporal
  Information with Modified Dates Option): intervals within a patient survive.
- Private attributes are removed. A header that says ``BurnedInAnnotation = YES``
  is refused unless allowed: pixel text is not covered by this profile.

Not covered: text burned into pixels without that flag, faces in the pixels
(e.g. head CT surface renderings), free text in attributes the profile keeps.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import io
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from fedvault.client.data.anonymize import pseudonym
from fedvault.common.errors import DataError

if TYPE_CHECKING:
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset

ANNEX_E_EDITION = "dicomfields_2026c"
_UID = b"fedvault dicom uid v1\x00"
_SHIFT = b"fedvault dicom date shift v1\x00"
Action = Literal["X", "Z", "D", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"]
_CATEGORIES: dict[str, Action] = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}
_EMPTIED: frozenset[Action] = frozenset({"Z", "X/Z"})
_PATIENT_ID = 0x00100020
_BIRTH_DATE = 0x00100030
_METHOD = "fedvault: PS3.15 E.1 Basic Profile, keyed UIDs, modified dates"
DEMO_FILES = {
    "ct": ("CT_small.dcm",),
    "mr": ("MR_small.dcm", "MR_small_implicit.dcm", "examples_overlay.dcm"),
}


@dataclass(frozen=True, kw_only=True)
class DeidOptions:
    """``allow_burned_in``: accept headers saying the pixels carry burned-in text.
    ``max_shift_days``: dates move by a keyed offset in [-max, +max] days."""

    allow_burned_in: bool = False
    max_shift_days: int = 365


def check_burned_in(dataset: Dataset, *, allowed: bool) -> None:
    """Refuse a data set whose header says it has burned-in annotations.

    Raises :class:`DataError` when ``BurnedInAnnotation`` is ``YES`` and
    ``allowed`` is false.
    """
    flag = str(dataset.get("BurnedInAnnotation", "") or "").strip().upper()
    if flag == "YES" and not allowed:
        raise DataError(
            "burned-in annotations (BurnedInAnnotation = YES): refused unless "
            "burned-in annotations are allowed (--allow-burned-in)"
        )


def deidentify(
    dataset: Dataset, *, secret: bytes, options: DeidOptions | None = None
) -> Dataset:
    """De-identify ``dataset`` in place (as the module docstring says); returns it.

    Raises :class:`DataError` for burned-in annotations that are not allowed.
    """
    options = options or DeidOptions()
    check_burned_in(dataset, allowed=options.allow_burned_in)
    _Profile(secret, _shift_days(dataset, secret, options.max_shift_days)).apply(
        dataset
    )
    _mark(dataset)
    return dataset


def deidentify_bytes(
    data: bytes, *, secret: bytes, options: DeidOptions | None = None
) -> bytes:
    """A de-identified copy of the DICOM file ``data``.

    Raises :class:`DataError` for a file that is not DICOM, or is refused.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, ValueError, KeyError) as exc:
        raise DataError(f"unreadable DICOM: {exc}") from None
    deidentify(dataset, secret=secret, options=options)
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=False)
    return out.getvalue()


def write_dicom_demo(folder: Path) -> list[Path]:
    """Copy DICOM sample files bundled in pydicom's wheel into ``folder/<modality>/``
    as a hospital's export would look (identified headers), plus ``mr/burned_in.dcm``,
    a copy of an MR sample whose header flags burned-in annotations.

    Raises :class:`DataError` if a sample file is not in the installed pydicom
    (nothing is downloaded).
    """
    import pydicom

    written = []
    for label, names in DEMO_FILES.items():
        (folder / label).mkdir(parents=True, exist_ok=True)
        for name in names:
            target = folder / label / name
            shutil.copyfile(_sample(name), target)
            written.append(target)
    burned = pydicom.dcmread(_sample("MR_small.dcm"))
    burned.BurnedInAnnotation = "YES"
    burned.SOPInstanceUID = burned.SOPInstanceUID + ".1"
    written.append(folder / "mr" / "burned_in.dcm")
    burned.save_as(written[-1])
    return written


def _sample(name: str) -> Path:
    from pydicom.data import get_testdata_file

    found = get_testdata_file(name, download=False)
    if not isinstance(found, str):
        raise DataError(f"pydicom sample file {name} is not installed")
    return Path(found)


class _Profile:
    """Applies the Annex E actions to one file's data sets."""

    def __init__(self, secret: bytes, shift: int) -> None:
        self.secret, self.shift = secret, shift

    def apply(self, dataset: Dataset) -> None:
        dataset.remove_private_tags()
        self._walk(dataset)
        meta = getattr(dataset, "file_meta", None)
        if meta is not None:
            self._walk(meta)
            meta.pop(0x00020016, None)  # Source Application Entity Title

    def _walk(self, dataset: Dataset) -> None:
        for tag in list(dataset.keys()):
            element = dataset[tag]
            action = _action_for(int(tag))
            if action == "X":
                del dataset[tag]
            elif element.VR == "SQ":
                self._sequence(element, action)
            else:
                self._element(element, action)

    def _sequence(self, element: DataElement, action: Action | None) -> None:
        if action in _EMPTIED:
            element.value = []
            return
        for item in element.value:
            self._walk(item)

    def _element(self, element: DataElement, action: Action | None) -> None:
        from dicomanonymizer.simpledicomanonymizer import empty_element, replace_element

        if element.tag == _PATIENT_ID:
            element.value = (
                pseudonym(str(element.value), self.secret) if element.value else ""
            )
        elif element.tag == _BIRTH_DATE:
            element.value = ""
        elif element.VR == "UI":
            element.value = _map(element.value, self._uid)
        elif element.VR in ("DA", "DT"):
            element.value = _map(element.value, self._date)
        elif action in _EMPTIED:
            empty_element(element)
        elif action is not None and action != "U":
            replace_element(element)

    def _uid(self, uid: str) -> str:
        from pydicom.uid import UID

        if not uid or UID(uid).name != uid:  # empty, or a UID of the standard
            return uid
        mac = hmac.new(self.secret, _UID + uid.encode("ascii"), hashlib.sha256)
        return f"2.25.{int.from_bytes(mac.digest()[:16], 'big')}"

    def _date(self, value: str) -> str:
        try:
            day = dt.datetime.strptime(value[:8], "%Y%m%d").date()
        except ValueError:
            return ""
        return (day + dt.timedelta(days=self.shift)).strftime("%Y%m%d") + value[8:]


def _map(value: object, change: Callable[[str], str]) -> object:
    from pydicom.multival import MultiValue

    if isinstance(value, MultiValue | list):
        return [change(str(v)) for v in value]
    return change(str(value)) if value not in (None, "") else value


def _shift_days(dataset: Dataset, secret: bytes, max_days: int) -> int:
    person = str(dataset.get("PatientID", "") or dataset.get("StudyInstanceUID", ""))
    mac = hmac.new(secret, _SHIFT + person.encode("utf-8"), hashlib.sha256).digest()
    return int.from_bytes(mac[:8], "big") % (2 * max_days + 1) - max_days


def _mark(dataset: Dataset) -> None:
    from pydicom.dataset import Dataset as Item
    from pydicom.sequence import Sequence

    dataset.PatientIdentityRemoved = "YES"
    dataset.LongitudinalTemporalInformationModified = "MODIFIED"
    dataset.DeidentificationMethod = _METHOD
    codes = []
    for value, meaning in (
        ("113100", "Basic Application Confidentiality Profile"),
        ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    ):
        code = Item()
        code.CodeValue, code.CodingSchemeDesignator = value, "DCM"
        code.CodeMeaning = meaning
        codes.append(code)
    dataset.DeidentificationMethodCodeSequence = Sequence(codes)


def _action_for(tag: int) -> Action | None:
    exact, masked = _table()
    group, element = tag >> 16, tag & 0xFFFF
    found = exact.get((group, element))
    if found is not None:
        return found
    for (g, e, g_mask, e_mask), action in masked:
        if group & g_mask == g & g_mask and element & e_mask == e & e_mask:
            return action
    return None


@cache
def _table() -> tuple[
    dict[tuple[int, int], Action], tuple[tuple[tuple[int, ...], Action], ...]
]:
    from dicomanonymizer.dicomfields_selector import (
        dicom_anonymization_database_selector,
    )

    categories = dicom_anonymization_database_selector(ANNEX_E_EDITION)
    exact: dict[tuple[int, int], Action] = {}
    masked: list[tuple[tuple[int, ...], Action]] = []
    for category, action in _CATEGORIES.items():
        for tag in categories[category]:
            if len(tag) == 2:
                exact[(tag[0], tag[1])] = action
            else:
                masked.append((tuple(tag), action))
    return exact, tuple(masked)
