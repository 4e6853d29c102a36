"""Reading images: class folders, manifests, DICOM, the embedded digits; bad files
are reported one by one and left out."""

import shutil

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file

from fedvault.common.errors import DataError
from fedvault.common.images import (
    dicom_pixels,
    digits_dataset,
    encode_labels,
    read_folder,
    read_manifest,
)


def _png(path, pixels, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(pixels, dtype=np.uint8), mode=mode).save(path)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        for i in range(3):
            _png(root / label / f"{i}.png", rng.integers(0, 256, (20, 30)))
    _png(root / "cat" / "rgb.png", rng.integers(0, 256, (20, 30, 3)))
    (root / "dog" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (root / "dog" / "empty.png").write_bytes(b"")
    shutil.copy(root / "cat" / "0.png", root / "dog" / "copy.png")
    (root / "notes.txt").write_text("ignored: not in a class folder")
    return root


def test_a_folder_per_class_reads_into_one_tensor(folder):
    data = read_folder(folder, size=(16, 16))
    assert data.images.shape == (7, 1, 16, 16)
    assert data.images.dtype == torch.float32
    assert float(data.images.min()) >= 0.0 and float(data.images.max()) <= 1.0
    assert sorted(data.meta["label"].value_counts().items()) == [("cat", 3), ("dog", 4)]
    labels, classes = encode_labels(data.meta["label"])
    assert classes == ("cat", "dog") and labels.tolist().count(1) == 4


def test_bad_files_are_reported_not_fatal(folder):
    report = read_folder(folder, size=(16, 16)).report
    reasons = {bad.path: bad.reason for bad in report.bad}
    assert reasons["cat/rgb.png"] == "3 channel(s), expected 1"
    assert reasons["dog/broken.jpg"].startswith("unreadable image")
    assert "BytesIO" not in reasons["dog/broken.jpg"]  # the same text every run
    assert reasons["dog/empty.png"].startswith("unreadable image")
    assert (report.files, report.read) == (10, 7)
    assert report.sizes == {"20x30": 7} and report.channels == {1: 7}
    assert report.duplicates == (("cat/0.png", "dog/copy.png"),)


def test_pixels_are_scaled_and_resized_faithfully(tmp_path):
    _png(tmp_path / "a" / "flat.png", np.full((8, 8), 51))
    data = read_folder(tmp_path, size=(8, 8))
    assert torch.allclose(data.images, torch.full((1, 1, 8, 8), 0.2))
    bigger = read_folder(tmp_path, size=(4, 6))
    assert bigger.shape == (1, 4, 6)
    assert torch.allclose(bigger.images, torch.full((1, 1, 4, 6), 0.2))


def test_colour_folders_keep_three_channels(tmp_path):
    _png(tmp_path / "x" / "c.png", np.zeros((5, 5, 3)) + np.array([255, 0, 0]))
    _png(tmp_path / "x" / "g.png", np.zeros((5, 5)))
    data = read_folder(tmp_path, size=(5, 5), channels=3)
    assert data.shape == (3, 5, 5)
    assert data.images[0, :, 0, 0].tolist() == [1.0, 0.0, 0.0]
    assert [b.reason for b in data.report.bad] == ["1 channel(s), expected 3"]


def test_a_manifest_keeps_its_site_column_and_reports_missing_files(folder, tmp_path):
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(
        {
            "path": [f"images/cat/{i}.png" for i in range(3)] + ["images/gone.png"],
            "diagnosis": ["a", "b", "a", "b"],
            "hospital": ["h1", "h1", "h2", "h2"],
        }
    ).to_csv(manifest, index=False)
    data = read_manifest(manifest, label="diagnosis", size=(10, 10))
    assert data.images.shape == (3, 1, 10, 10)
    assert data.meta["hospital"].tolist() == ["h1", "h1", "h2"]
    assert data.label == "diagnosis"
    assert data.report.bad[0].path == "images/gone.png"
    assert data.report.bad[0].reason.startswith("unreadable: No such file")


def test_manifest_rows_without_a_path_or_label_are_reported(folder, tmp_path):
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(
        {
            "path": ["images/cat/0.png", "", "images/cat/1.png"],
            "diagnosis": ["a", "b", None],
        }
    ).to_csv(manifest, index=False)
    data = read_manifest(manifest, label="diagnosis", size=(10, 10))
    assert data.images.shape[0] == 1
    assert data.report.files == 3 and data.report.read == 1
    assert [(b.path, b.reason) for b in data.report.bad] == [
        ("manifest.csv row 3", "no path in the manifest"),
        ("manifest.csv row 4", "no label in the manifest"),
    ]


def test_a_manifest_without_the_label_column_is_refused(tmp_path):
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"path": ["a.png"]}).to_csv(manifest, index=False)
    with pytest.raises(DataError, match="manifest has no 'label' column"):
        read_manifest(manifest)


def test_nothing_usable_is_one_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"junk")
    with pytest.raises(
        DataError, match=r"no usable image \(first: a/x.png: unreadable"
    ):
        read_folder(tmp_path)
    with pytest.raises(DataError, match="no images in class folders"):
        read_folder(tmp_path / "a")
    with pytest.raises(DataError, match="image folder not found"):
        read_folder(tmp_path / "missing")


def test_dicom_pixels_apply_rescale_and_window():
    dataset = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    center, width = float(dataset.WindowCenter), float(dataset.WindowWidth)
    raw = dataset.pixel_array.astype(np.float64)
    expected = np.clip((raw - (center - width / 2)) / width, 0, 1)
    assert np.allclose(dicom_pixels(dataset)[0], expected, atol=1e-6)
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hounsfield = ct.pixel_array * float(ct.RescaleSlope) + float(ct.RescaleIntercept)
    lung = dicom_pixels(ct, window=(-600.0, 1500.0))[0]
    assert np.allclose(lung, np.clip((hounsfield + 1350) / 1500, 0, 1), atol=1e-6)


def test_dicom_files_in_class_folders_and_their_bad_cases(tmp_path):
    for label, name in [("ct", "CT_small.dcm"), ("mr", "MR_small.dcm")]:
        (tmp_path / label).mkdir()
        shutil.copy(get_testdata_file(name), tmp_path / label / name)
    shutil.copy(get_testdata_file("rtdose.dcm"), tmp_path / "ct" / "dose.dcm")
    shutil.copy(get_testdata_file("rtplan.dcm"), tmp_path / "ct" / "plan.dcm")
    shutil.copy(get_testdata_file("examples_rgb_color.dcm"), tmp_path / "mr" / "c.dcm")
    (tmp_path / "mr" / "junk.dcm").write_bytes(b"\x00" * 200)

    def refuse_mr(dataset):
        if dataset.Modality == "MR":
            raise DataError("refused by the check")

    data = read_folder(tmp_path, size=(32, 32))
    assert data.images.shape == (2, 1, 32, 32)
    reasons = {bad.path: bad.reason for bad in data.report.bad}
    assert reasons["ct/dose.dcm"] == "15 frames; only single-frame images are read"
    assert reasons["ct/plan.dcm"] == "no pixel data"
    assert reasons["mr/c.dcm"] == "3 channel(s), expected 1"
    assert reasons["mr/junk.dcm"].startswith("unreadable DICOM")
    checked = read_folder(tmp_path, size=(32, 32), dicom_check=refuse_mr)
    assert checked.meta["label"].tolist() == ["ct"]
    assert {b.path: b.reason for b in checked.report.bad}["mr/MR_small.dcm"] == (
        "refused by the check"
    )


def test_digits_are_the_real_embedded_images():
    digits = digits_dataset()
    assert digits.images.shape == (1797, 1, 8, 8)
    assert digits.meta["target"].nunique() == 10
    assert float(digits.images.max()) == 1.0 and float(digits.images.min()) == 0.0
    assert digits.report.read == 1797 and not digits.report.bad
