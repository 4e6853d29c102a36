"""DICOM de-identification: Annex E actions, keyed UIDs that keep series linked,
shifted dates, no private tags, burned-in annotations refused; and the bytes of the
de-identified demo files hold nothing that identified the samples."""

import io

import pydicom
import pytest
from pydicom.uid import UID

from fedvault.client.data.anonymize import pseudonym
from fedvault.client.data.dicom import (
    DeidOptions,
    check_burned_in,
    deidentify,
    deidentify_bytes,
    write_dicom_demo,
)
from fedvault.common.errors import DataError
from fedvault.common.images import read_folder

SECRET = bytes(range(32))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_dicom_demo(tmp_path_factory.mktemp("dicom"))


def _read(data):
    return pydicom.dcmread(io.BytesIO(data))


def _instance_uids(dataset):
    """Every UID value in the file that is not a UID of the standard."""
    found = set()

    def visit(_, element):
        if element.VR == "UI" and element.value:
            values = element.value if element.VM > 1 else [element.value]
            found.update(str(v) for v in values if UID(str(v)).name == str(v))

    dataset.walk(visit)
    dataset.file_meta.walk(visit)
    return found


def _identifiers(dataset):
    values = {str(dataset.get(k, "") or "") for k in ("PatientName", "PatientID")}
    values.add(str(dataset.get("PatientBirthDate", "") or ""))
    values |= {str(dataset.PatientName).replace("^", " ")} - {""}
    return {v for v in values if v} | _instance_uids(dataset)


def test_no_name_id_birth_date_or_uid_of_the_samples_is_left_in_the_bytes(demo):
    checked = 0
    for path in demo:
        if path.name == "burned_in.dcm":
            continue
        original = path.read_bytes()
        secrets = _identifiers(_read(original))
        assert secrets, path.name
        out = deidentify_bytes(original, secret=SECRET)
        for value in secrets:
            assert value.encode() not in out, (path.name, value)
        checked += len(secrets)
    assert checked >= 20
    assert b"11111111" in demo[-2].read_bytes()  # examples_overlay's birth date


def test_pixels_survive_and_the_result_is_valid_dicom(demo):
    path = next(p for p in demo if p.name == "CT_small.dcm")
    original = pydicom.dcmread(path)
    clean = _read(deidentify_bytes(path.read_bytes(), secret=SECRET))
    assert (clean.pixel_array == original.pixel_array).all()
    assert clean.SOPClassUID == original.SOPClassUID
    assert clean.file_meta.MediaStorageSOPInstanceUID == clean.SOPInstanceUID
    assert clean.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert clean.PatientIdentityRemoved == "YES"
    assert [c.CodeValue for c in clean.DeidentificationMethodCodeSequence] == [
        "113100",
        "113107",
    ]
    assert clean.PatientName == "" and clean.PatientBirthDate == ""
    assert clean.PatientID == pseudonym(original.PatientID, SECRET)
    assert original.InstitutionName and clean.InstitutionName == "ANONYMIZED"


def test_uids_are_keyed_pseudonyms_that_keep_series_linked(demo):
    small, implicit = (
        pydicom.dcmread(next(p for p in demo if p.name == name))
        for name in ("MR_small.dcm", "MR_small_implicit.dcm")
    )
    assert small.SeriesInstanceUID == implicit.SeriesInstanceUID
    a, b = (deidentify(d, secret=SECRET) for d in (small, implicit))
    assert a.SeriesInstanceUID == b.SeriesInstanceUID
    assert a.StudyInstanceUID == b.StudyInstanceUID
    assert a.SeriesInstanceUID.startswith("2.25.")
    assert len(a.SeriesInstanceUID) <= 64
    other = deidentify(
        pydicom.dcmread(next(p for p in demo if p.name == "MR_small.dcm")),
        secret=b"another site secret",
    )
    assert other.SeriesInstanceUID != a.SeriesInstanceUID


def test_dates_move_by_one_keyed_offset_per_patient(demo):
    path = next(p for p in demo if p.name == "CT_small.dcm")
    original = pydicom.dcmread(path)
    clean = deidentify(pydicom.dcmread(path), secret=SECRET)
    shift = _days(clean.StudyDate) - _days(original.StudyDate)
    assert shift != 0 and abs(shift) <= 365
    assert _days(clean.SeriesDate) - _days(original.SeriesDate) == shift
    narrow = deidentify(
        pydicom.dcmread(path), secret=SECRET, options=DeidOptions(max_shift_days=3)
    )
    assert abs(_days(narrow.StudyDate) - _days(original.StudyDate)) <= 3


def _days(value):
    import datetime as dt

    return dt.datetime.strptime(value, "%Y%m%d").toordinal()


def test_private_tags_and_profile_removals_are_gone(demo):
    path = next(p for p in demo if p.name == "examples_overlay.dcm")
    original = pydicom.dcmread(path)
    original.add_new(0x00091001, "LO", "hospital private note")
    overlay = [e.tag for e in original if e.tag.group & 0xFF00 == 0x6000]
    assert overlay
    clean = deidentify(original, secret=SECRET)
    assert not any(e.tag.is_private for e in clean)
    assert not any(
        e.tag.group & 0xFF00 == 0x6000 and e.tag.element == 0x3000 for e in clean
    )
    assert "PatientAddress" not in clean and "OtherPatientIDs" not in clean


def test_burned_in_annotations_are_refused_unless_allowed(demo):
    path = next(p for p in demo if p.name == "burned_in.dcm")
    with pytest.raises(DataError, match="BurnedInAnnotation = YES"):
        deidentify_bytes(path.read_bytes(), secret=SECRET)
    allowed = deidentify_bytes(
        path.read_bytes(), secret=SECRET, options=DeidOptions(allow_burned_in=True)
    )
    assert _read(allowed).PatientIdentityRemoved == "YES"


def test_the_demo_folder_reads_with_the_burned_in_file_reported(demo):
    root = demo[0].parent.parent
    data = read_folder(
        root, size=(32, 32), dicom_check=lambda d: check_burned_in(d, allowed=False)
    )
    assert sorted(data.meta["label"]) == ["ct", "mr", "mr", "mr"]
    assert [(b.path, b.reason.split(" (")[0]) for b in data.report.bad] == [
        ("mr/burned_in.dcm", "burned-in annotations")
    ]
