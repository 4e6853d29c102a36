"""`fedvault client status`: the site's run, round, last contact, declines and
epsilon, from its own answers file (written by the ClientApp's answers_mod; the
real processes are in tests/integration/test_site_rounds.py)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from fedvault.client.client_cli import client_app
from fedvault.client.site_config import load_site_config
from fedvault.client.site_echo import SiteEcho

ANSWERS = [
    {"time": 1.0, "run": "old", "round": 3, "message": "train", "answer": "declined",
     "reason": "budget: spent"},
    {"time": 2.0, "run": "r1", "round": None, "message": "stats",
     "answer": "summary sent"},
    {"time": 3.0, "run": "r1", "round": 1, "message": "train", "answer": "trained",
     "epsilon": 0.5, "epsilon-lifetime": 2.5, "epsilon-budget": 8.0},
    {"time": 4.0, "run": "r1", "round": 2, "message": "train", "answer": "declined",
     "reason": "policy: the global model is not finite"},
]  # fmt: skip


def _site(tmp_path):
    (tmp_path / "site.toml").write_text(
        '[site]\nname = "a"\ncoordinator = "127.0.0.1:1"\ndata = "d.csv"\n'
        "insecure = true\nmax-retries = 4\n"
    )
    state = tmp_path / "site-state"
    state.mkdir()
    lines = "".join(json.dumps(a) + "\n" for a in ANSWERS)
    (state / "answers.jsonl").write_text(lines + '{"partial')  # one being written
    return tmp_path / "site.toml"


def test_status_sums_up_the_current_run(tmp_path):
    config = str(_site(tmp_path))
    result = CliRunner().invoke(
        client_app, ["status", "--config", config, "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["running"], doc["run"], doc["round"]) == (False, "r1", 2)
    assert doc["epsilon"] == 0.5 and doc["epsilon_lifetime"] == 2.5
    assert doc["declines"] == [
        "round 2 train: declined (policy: the global model is not finite)"
    ]
    text = CliRunner().invoke(client_app, ["status", "--config", config])
    assert "site a: not running" in text.output
    assert "epsilon 0.5 this run, 2.5 of 8 lifetime" in text.output
    assert "declines this run: 1" in text.output


def test_client_start_echoes_answers_and_explains_retries(tmp_path):
    import io

    cfg = load_site_config(_site(tmp_path))
    out = io.StringIO()
    echo = SiteEcho(cfg, out)  # starts from what is there already
    with (cfg.state_dir / "answers.jsonl").open("a") as f:
        f.write('"}\n' + json.dumps(ANSWERS[2] | {"round": 3}) + "\n")
    cfg.log.write_text(
        "\x1b[93mWARNING \x1b[0m:   Connection attempt failed, retrying in "
        "2.51 seconds\n"
    )
    echo.poll()
    assert out.getvalue().splitlines() == [
        "site a: cannot reach the coordinator at 127.0.0.1:1; trying again in "
        "2.5 s (gives up after max-wait-time = 3600 s or after max-retries = 4 "
        "attempts)",
        "site a: round 3 train: trained; epsilon 0.5 this run, 2.5 of 8 lifetime",
    ]
