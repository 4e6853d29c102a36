"""`fedvault report`: one self-contained HTML page, opened in a real headless
Chromium whose every network request would reach a recording proxy here."""

import re
import shutil
import socketserver
import subprocess
import threading

import matplotlib.image
import numpy as np
import pytest
from trained_run import assert_refused, fedvault, run_fixture  # noqa: F401 (`run`)

from fedvault.server import html_report

PLOT_BLUE = (0x3B, 0x6E, 0xA8)  # the first line colour of every plot
LABEL_GREEN = (0x3A, 0x9A, 0x5B)  # label 1's bars (and a thin line at the top)


def _report(run, tmp_path, monkeypatch, capsys):
    folder, _ = run
    out = tmp_path / "report.html"
    code, stdout, err = fedvault(monkeypatch, capsys, "report", folder, "--out", out)
    assert code == 0, err
    assert f"Wrote {out}" in stdout
    return out


def test_the_page_is_self_contained(run, tmp_path, monkeypatch, capsys):
    html = _report(run, tmp_path, monkeypatch, capsys).read_text()
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,', html)
    assert images == [
        "accuracy, AUC and loss per round",
        "epsilon per site per round",
        "declines and failures per round",
        "label distribution per site",
        "feature shift per site",
    ]
    assert not re.search(r"(src|href|url)\s*[=(]\s*[\"']?\s*(https?:)?//", html, re.I)
    assert "<script" not in html and "<link" not in html and "@import" not in html
    for section in (
        "Model quality per round",
        "Privacy spent per site",
        "Model card",
        "Record of processing (GDPR Article 30(1))",
        "Data: quality and cross-site skew",
        "complete cells",
        "label PSI",
    ):
        assert section in html
    assert "site-3" in html and "Wilson" not in html  # the card's table, not its md
    assert "Each site's own validation figure: site-1 " in html


def test_events_per_round_counts_every_kind():
    sites = {
        "a": {"declines": [{"round": 2}], "failures": [{"round": 2}]},
        "b": {
            "declines": [{"round": 2}, {"round": 3}],
            "rejected_updates": [{"round": 1}],
        },
    }
    assert html_report.events_per_round(sites) == {
        "declines": {2: 2, 3: 1},
        "failures": {2: 1},
        "rejected updates": {1: 1},
    }


def test_missing_or_empty_run_folder(tmp_path, monkeypatch, capsys):
    code, stdout, err = fedvault(monkeypatch, capsys, "report", tmp_path / "nope")
    assert_refused(code, stdout, err, "no such run folder")
    code, stdout, err = fedvault(monkeypatch, capsys, "report", tmp_path)
    assert_refused(code, stdout, err, "no summary.json; not a finished fedvault run")
    assert list(tmp_path.iterdir()) == []


SEEN = []  # first line of every connection the proxy got


class _Recorder(socketserver.BaseRequestHandler):
    """A proxy that answers nothing and records every connection."""

    def handle(self):
        SEEN.append(self.request.recv(256).split(b"\r\n")[0].decode("latin-1"))


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="chromium is not installed (scripts/check installs it)",
)
def test_chromium_renders_the_plots_without_any_request(
    run, tmp_path, monkeypatch, capsys
):
    page = _report(run, tmp_path, monkeypatch, capsys)
    shot = tmp_path / "shot.png"
    with socketserver.TCPServer(("127.0.0.1", 0), _Recorder) as proxy:
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        port = proxy.server_address[1]
        subprocess.run(
            [
                "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-default-apps",
                "--disable-sync",
                f"--user-data-dir={tmp_path / 'profile'}",
                f"--proxy-server=http://127.0.0.1:{port}",
                "--proxy-bypass-list=<-loopback>",
                "--host-resolver-rules=MAP * ~NOTFOUND",
                f"--screenshot={shot}",
                "--window-size=1100,4000",
                page.as_uri(),
            ],
            check=True,
            timeout=180,
            capture_output=True,
        )
        proxy.shutdown()
    assert SEEN == []  # nothing left the page, not even via the proxy
    image = matplotlib.image.imread(shot)[..., :3]
    assert image.shape[:2] == (4000, 1100)
    assert image.std() > 0.05  # not a blank page
    blue = np.all(np.abs(image * 255 - PLOT_BLUE) < 24, axis=-1)
    # the plot lines and markers (nothing else on the page is this colour)
    assert blue.sum() > 500
    rows_with_blue = np.nonzero(blue.any(axis=1))[0]
    # in both plots drawn near the top: metrics, then epsilon
    assert rows_with_blue.min() < 600 and rows_with_blue.max() > 700
    # the label distribution's filled bars, below the privacy and sites sections
    green = np.all(np.abs(image * 255 - LABEL_GREEN) < 24, axis=-1)
    bars = np.nonzero(green.sum(axis=1) > 200)[0]
    assert len(bars) > 30 and bars.min() > 1200, (len(bars), bars[:3])
    # the skew heat map: a block of red/blue cells (RdBu) further down
    tinted = np.abs(image[..., 0] - image[..., 2]) > 0.05  # red or blue, not grey
    assert tinted[bars.max() :].sum() > 5000
