"""`fedvault model` and `fedvault report` on image runs of `fedvault simulate`: a
cnn on a folder of digit PNGs, and a plug-in model (`mynets.nets:build`) on the
same folder, each made once for the module (2 sites, 1 round, 8x8); a cnn on a
DICOM folder (16x16)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from image_sources import dicom_folder, image_folder
from trained_run import assert_refused, fedvault

from fedvault.common.images import read_folder
from fedvault.common.model_zoo import plugin_sha256
from fedvault.server import simulate as sim
from fedvault.server import trained
from fedvault.server.simulate_data import _no_burned_in

pytestmark = pytest.mark.slow

PLUGINS = Path(__file__).parents[1] / "common" / "plugins"
PLUGIN = "mynets.nets:build"
TINY = {"sites": 2, "rounds": 1, "timeout": 600.0, "batch-size": 16}
CLASSES = ["digit0", "digit1", "digit2"]


@pytest.fixture(scope="module", name="images")
def images_fixture(tmp_path_factory):
    """A folder per class: 3 x 20 digit PNGs of 16x16 (the runs read them as 8x8)."""
    return image_folder(tmp_path_factory.mktemp("images") / "images")


def _simulate(out, folder, **values):
    settings = TINY | {"data": str(folder), "target": "label", "image-size": 8}
    summary = sim.run(sim.load_config(settings | values), out)
    assert summary["status"] == "completed"
    return out


@pytest.fixture(scope="module", name="cnn")
def cnn_fixture(tmp_path_factory, images):
    return _simulate(tmp_path_factory.mktemp("cnn") / "run", images, model="cnn")


@pytest.fixture(scope="module", name="plugin")
def plugin_fixture(tmp_path_factory, images):
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(PLUGINS))
        patch.setenv("PYTHONPATH", str(PLUGINS))  # the sites import it too
        out = tmp_path_factory.mktemp("plugin") / "run"
        yield _simulate(out, images, model=PLUGIN)


@pytest.fixture(name="with_bad")
def with_bad_fixture(images, tmp_path):
    """The class folder and one file that is not an image."""
    folder = tmp_path / "images"
    shutil.copytree(images, folder)
    (folder / "digit1" / "broken.png").write_bytes(b"not a png")
    return folder


def test_predict_writes_one_row_per_image_as_the_run_reads_them(
    cnn, with_bad, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "preds.csv"
    code, stdout, err = fedvault(
        monkeypatch, capsys, "model", "predict", cnn, with_bad, "--out", out
    )
    assert code == 0, err
    # the unreadable file is reported by name and left out
    assert "digit1/broken.png: unreadable image" in err and "left out" in err
    preds = pd.read_csv(out)
    probability = [f"probability_{c}" for c in CLASSES]
    assert list(preds.columns) == ["path", "label", "predicted", *probability]
    assert len(preds) == 60 and "Predicted 60 images" in stdout
    # the same pixels as the run's reader at the run's size give the same output
    model = trained.load(cnn)
    read = read_folder(with_bad, size=(8, 8), channels=1)
    expected = model.probabilities(read.images.numpy())
    np.testing.assert_allclose(preds[probability].to_numpy(), expected, atol=1e-9)
    assert list(preds["path"]) == list(read.meta["path"])
    assert (preds["predicted"] == np.array(CLASSES)[expected.argmax(axis=1)]).all()


def test_a_flat_folder_gets_the_same_predictions_without_labels(
    cnn, images, tmp_path, monkeypatch, capsys
):
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in sorted((images / "digit2").glob("*.png"))[:5]:
        shutil.copyfile(path, flat / path.name)
    code, stdout, err = fedvault(monkeypatch, capsys, "model", "predict", cnn, flat)
    assert code == 0, err
    flat_preds = pd.read_csv(pd.io.common.StringIO(stdout))
    assert "label" not in flat_preds and len(flat_preds) == 5
    code, stdout, _ = fedvault(monkeypatch, capsys, "model", "predict", cnn, images)
    all_preds = pd.read_csv(pd.io.common.StringIO(stdout))
    same = all_preds.set_index(all_preds["path"].str.split("/").str[-1])
    np.testing.assert_allclose(
        flat_preds["probability_digit2"].to_numpy(),
        same.loc[flat_preds["path"], "probability_digit2"].to_numpy(),
        atol=1e-9,
    )


def test_onnx_export_checks_itself_on_the_folder_and_runs_alone(
    cnn, images, tmp_path, monkeypatch, capsys
):
    import onnxruntime

    target = tmp_path / "cnn.onnx"
    code, stdout, err = fedvault(
        monkeypatch, capsys, "model", "export", cnn, "--out", target, "--data", images
    )
    assert code == 0, err
    assert "on 60 images of" in stdout and "tolerance 1e-05" in stdout
    diff = float(stdout.split("vs PyTorch = ")[1].split(" ")[0])
    assert diff <= 1e-5
    side = json.loads(target.with_name("cnn.onnx.json").read_text())
    assert side["inputs"][0]["name"] == "pixels"
    assert side["inputs"][0]["shape"] == ["n", 1, 8, 8]
    assert side["output"]["classes"] == CLASSES
    pixels = read_folder(images, size=(8, 8), channels=1).images.numpy()
    session = onnxruntime.InferenceSession(str(target))
    got = session.run(None, {"pixels": pixels})[0]
    np.testing.assert_allclose(got, trained.load(cnn).probabilities(pixels), atol=1e-5)


def test_compress_prunes_convolutions_and_measures_the_folder(
    cnn, images, tmp_path, monkeypatch, capsys
):
    target = tmp_path / "small.pt"
    args = ["model", "compress", cnn, "--prune", "0.5", "--data", images]
    code, stdout, err = fedvault(
        monkeypatch, capsys, *args, "--out", target, "--format", "json"
    )
    assert code == 0, err
    result = json.loads(stdout)
    assert result["evaluated_on"].startswith("60 labelled images")
    names = [v["name"] for v in result["variants"]]
    assert names == ["as trained", "pruned 50%", "int8", "int8 + pruned 50%"]
    for variant in result["variants"]:
        assert 0 <= variant["accuracy"] <= 1
    assert "convolutions stay float32" in err
    small = trained.load(target)
    weights = [m.weight for m in small.model.modules() if type(m).__name__ == "Conv2d"]
    assert weights and all(float((w == 0).float().mean()) >= 0.49 for w in weights)
    code, _, err = fedvault(monkeypatch, capsys, "model", "predict", target, images)
    assert code == 0, err


def test_explain_writes_attribution_maps_and_the_class_balance(
    cnn, images, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "explain"
    code, stdout, err = fedvault(
        monkeypatch, capsys, "model", "explain", cnn, images, "--out", out
    )
    assert code == 0, err
    assert "Integrated Gradients (Captum)" in stdout
    assert "digit0: 20, digit1: 20, digit2: 20" in stdout
    data = json.loads((out / "attributions.json").read_text())
    assert data["computed_on"] == str(images)
    assert data["class_balance"] == {c: 20 for c in CLASSES}
    # one image of each class first
    assert [i["label"] for i in data["images"][:3]] == CLASSES
    from PIL import Image

    with Image.open(out / "attributions.png") as png:
        pixels = np.asarray(png.convert("RGB"))
    # the maps' colours (bwr) are on the picture: not a blank page
    reddish = (pixels[..., 0] > 200) & (pixels[..., 2] < 150)
    assert reddish.sum() > 20


def test_the_card_and_the_report_describe_the_image_model(
    cnn, tmp_path, monkeypatch, capsys
):
    card = json.loads((cnn / "model_card.json").read_text())
    assert card["model"]["input"] == {
        "kind": "image",
        "channels": 1,
        "height": 8,
        "width": 8,
        "pixels": "float32 in [0, 1], resized to the run's image size",
    }
    assert "input 1x8x8" in card["model"]["architecture"]
    assert "small CNN (3x3 conv 16 channels" in card["model"]["architecture"]
    assert card["metrics"]["test_split"]["rows"] > 0  # the run's own test split
    code, _, err = fedvault(
        monkeypatch, capsys, "report", cnn, "--out", tmp_path / "r.html"
    )
    assert code == 0, err
    assert "image classification" in (tmp_path / "r.html").read_text()


def test_a_plugin_model_loads_by_its_name_for_every_command(
    plugin, images, tmp_path, monkeypatch, capsys
):
    monkeypatch.syspath_prepend(str(PLUGINS))
    card = json.loads((plugin / "model_card.json").read_text())
    assert card["model"]["plugin"] == {
        "factory": PLUGIN,
        "module_sha256": plugin_sha256(PLUGIN),
    }
    assert (
        "Plug-in factory `mynets.nets:build`" in (plugin / "model_card.md").read_text()
    )
    code, stdout, err = fedvault(
        monkeypatch, capsys, "model", "predict", plugin, images
    )
    assert code == 0, err
    assert len(pd.read_csv(pd.io.common.StringIO(stdout))) == 60
    code, stdout, err = fedvault(
        monkeypatch, capsys, "model", "export", plugin, "--out", tmp_path / "p.onnx"
    )
    assert code == 0, err
    assert "random images of the model's shape" in stdout


def test_bad_inputs_for_image_models_are_one_line_and_write_nothing(
    cnn, images, tmp_path, monkeypatch, capsys
):
    table = tmp_path / "rows.csv"
    pd.DataFrame({"a": [1.0]}).to_csv(table, index=False)
    out = tmp_path / "p.csv"
    args = ["model", "predict", cnn, table, "--out", out]
    assert_refused(*fedvault(monkeypatch, capsys, *args), "is an image model (1x8x8)")
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copyfile(next((images / "digit0").glob("*.png")), flat / "a.png")
    args = ["model", "compress", cnn, "--data", flat, "--out", tmp_path / "c.pt"]
    assert_refused(*fedvault(monkeypatch, capsys, *args), "holds images without labels")
    broken = tmp_path / "broken"
    (broken / "x").mkdir(parents=True)
    (broken / "x" / "a.png").write_bytes(b"no image")
    args = ["model", "predict", cnn, broken, "--out", out]
    assert_refused(*fedvault(monkeypatch, capsys, *args), "no usable image")
    assert not out.exists() and not (tmp_path / "c.pt").exists()


def test_a_dicom_run_predicts_a_dicom_folder_through_the_runs_reader(
    tmp_path_factory, monkeypatch, capsys
):
    root = tmp_path_factory.mktemp("dicom")
    folder = dicom_folder(root / "dicom", copies=12)
    run = _simulate(root / "run", folder, model="cnn", **{"image-size": 16})
    out = root / "preds.csv"
    code, _, err = fedvault(
        monkeypatch, capsys, "model", "predict", run, folder, "--out", out
    )
    assert code == 0, err
    # the file the run refused (burned-in annotations) is refused here too
    assert "burned_in.dcm: burned-in annotations" in err
    preds = pd.read_csv(out)
    assert set(preds["label"]) == {"ct", "mr"}
    assert not preds["path"].str.contains("burned_in").any()
    # DICOM rescale and window, 16x16, as the run read its images
    read = read_folder(folder, size=(16, 16), channels=1, dicom_check=_no_burned_in)
    expected = trained.load(run).probabilities(read.images.numpy())
    got = preds[["probability_ct", "probability_mr"]].to_numpy()
    np.testing.assert_allclose(got, expected, atol=1e-9)
