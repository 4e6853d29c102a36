"""Images into the encrypted vault: DICOM de-identified (nothing identifying of
pydicom's samples reaches the vault), burned-in annotations refused, PNG folders,
and the same integrity and replace rules as tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedvault.client.data.dicom import write_dicom_demo
from fedvault.client.data.image_import import (
    ImageImportOptions,
    import_images,
    read_image_vault,
)
from fedvault.client.data.keys import write_key
from fedvault.client.data.vault import iter_batches, read_frame, read_manifest
from fedvault.client.data_cli import data_app
from fedvault.common.errors import ConfigError, DataError, IntegrityError

KEY, SECRET = bytes(range(32)), bytes(range(32, 64))


def _identifiers(folder: Path) -> set[str]:
    import pydicom

    found: set[str] = set()
    for path in folder.rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for name in (
            "PatientName",
            "PatientID",
            "PatientBirthDate",
            "StudyInstanceUID",
            "SeriesInstanceUID",
            "SOPInstanceUID",
        ):
            value = str(ds.get(name, "") or "")
            if len(value) >= 4:
                found.add(value)
    return found


def test_dicom_import_keeps_nothing_identifying(tmp_path: Path) -> None:
    demo = tmp_path / "dcm"
    write_dicom_demo(demo)
    secrets = _identifiers(demo)
    assert len(secrets) >= 6  # names, ids, birth dates, UIDs of the samples
    vault = tmp_path / "vault"
    result = import_images(
        demo, vault, key=KEY, secret=SECRET, options=ImageImportOptions(size=(32, 32))
    )
    assert result.manifest.rows == 4
    (bad,) = result.report["unreadable"]
    assert bad["file"] == "mr/burned_in.dcm" and "burned-in" in bad["reason"]
    # the same scan with another transfer syntax: one image, found by its pixels
    assert result.report["exact-duplicates"] == [
        ["mr/MR_small.dcm", "mr/MR_small_implicit.dcm"]
    ]
    images = read_image_vault(vault, KEY)
    assert tuple(images.images.shape) == (4, 1, 32, 32)
    assert sorted(images.meta["label"]) == ["ct", "mr", "mr", "mr"]
    # what the vault holds, decrypted: the stored frames and the manifest
    plain = b"".join(
        batch.to_csv(index=False).encode() + b"".join(batch["pixels"])
        for batch in iter_batches(vault, KEY, include_pseudonyms=True)
    )
    plain += repr(read_manifest(vault, KEY).to_dict()).encode()
    for value in secrets:
        assert value.encode() not in plain, value
    # images of one patient stay linked by a keyed pseudonym, an identifier: read
    # back only on request, never in the frame a site trains on
    linked = read_frame(vault, KEY, include_pseudonyms=True)
    assert linked["patient"].str.len().min() > 0
    assert {"patient", "study"}.isdisjoint(read_frame(vault, KEY).columns)
    assert {"patient", "study"}.isdisjoint(images.meta.columns)


def test_dicom_needs_a_site_secret(tmp_path: Path) -> None:
    write_dicom_demo(tmp_path / "dcm")
    with pytest.raises(DataError, match="pass a site secret"):
        import_images(tmp_path / "dcm", tmp_path / "v", key=KEY, secret=None)
    assert not (tmp_path / "v").exists()


def test_png_folder_import_integrity_and_replace(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (tmp_path / "img" / label).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "img" / label / f"{i}.png")
    (tmp_path / "img" / "dog" / "broken.png").write_bytes(b"not a png")
    vault = tmp_path / "vault"
    result = import_images(tmp_path / "img", vault, key=KEY, secret=None)
    assert result.report["stored"] == 6 and len(result.report["unreadable"]) == 1
    images = read_image_vault(vault, KEY)
    assert tuple(images.images.shape[1:]) == (3, 64, 64)
    assert images.images.min() >= 0 and images.images.max() <= 1
    with pytest.raises(ConfigError, match="already holds a dataset"):
        import_images(tmp_path / "img", vault, key=KEY, secret=None)
    chunk = next(vault.glob("*/*.fvc"))
    data = bytearray(chunk.read_bytes())
    data[-1] ^= 1
    chunk.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        read_image_vault(vault, KEY)


def test_cli_demo_import_and_inspect(tmp_path: Path) -> None:
    runner = CliRunner()
    demo = tmp_path / "dcm"
    done = runner.invoke(data_app, ["demo", "--kind", "dicom", "--out", str(demo)])
    assert done.exit_code == 0, done.output
    write_key(tmp_path / "k" / "site.key", KEY)
    write_key(tmp_path / "k" / "site.secret", SECRET)
    args = [
        "import-images",
        str(demo),
        "--vault",
        str(tmp_path / "v"),
        "--key",
        str(tmp_path / "k" / "site.key"),
        "--secret",
        str(tmp_path / "k" / "site.secret"),
        "--size",
        "16",
    ]
    done = runner.invoke(data_app, args)
    assert done.exit_code == 0, done.output
    assert "burned-in annotations" in done.stdout and "class balance" in done.stdout
    shown = runner.invoke(
        data_app,
        ["inspect", str(tmp_path / "v"), "--key", str(tmp_path / "k" / "site.key")],
    )
    assert shown.exit_code == 0 and "4 of 1x16x16" in shown.stdout


def test_declared_classes_are_the_vault_schema_contract(tmp_path: Path) -> None:
    from PIL import Image

    from fedvault.client.releases import declared
    from fedvault.client.site import SiteSettings

    for label in ("cat", "dog"):
        (tmp_path / "img" / label).mkdir(parents=True)
        for i in range(2):
            pixels = np.full((8, 8), 40 * i, dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "img" / label / f"{i}.png")
    only_cats = ImageImportOptions(classes=("cat",))
    with pytest.raises(DataError, match="label 'dog' \\(2 images\\) is not among"):
        import_images(
            tmp_path / "img", tmp_path / "v", key=KEY, secret=None, options=only_cats
        )
    assert not (tmp_path / "v").exists()
    both = ImageImportOptions(classes=("cat", "dog", "cow"))
    import_images(tmp_path / "img", tmp_path / "v", key=KEY, secret=None, options=both)
    write_key(tmp_path / "site.key", KEY)
    site = SiteSettings(name="a", vault=tmp_path / "v", key_file=tmp_path / "site.key")
    assert declared(site).categories == {"label": ("cat", "dog", "cow")}


@pytest.mark.parametrize(
    ("classes", "said"),
    [
        ("normal,normal,pneumonia", "classes: 'normal' listed more than once"),
        ("normal,,pneumonia", "classes: 'normal,,pneumonia' has an empty class name"),
    ],
)
def test_bad_declared_classes_are_refused_before_anything_is_read(
    tmp_path: Path, classes: str, said: str
) -> None:
    write_key(tmp_path / "site.key", KEY)
    args = ["import-images", str(tmp_path / "none"), "--vault", str(tmp_path / "v")]
    args += ["--key", str(tmp_path / "site.key"), "--classes", classes]
    done = CliRunner().invoke(data_app, args)
    assert done.exit_code == 2, done.output
    assert said in " ".join(done.output.split())
    assert not (tmp_path / "v").exists()
