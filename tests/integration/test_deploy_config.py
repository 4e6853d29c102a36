"""Deployment settings, commands and CLIs without starting Flower (fast)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import tomli_w
from typer.testing import CliRunner

from fedvault.client import flower_log, site_config, supernode
from fedvault.client.client_cli import client_app
from fedvault.common import certs
from fedvault.common.data import default_dataset
from fedvault.common.errors import ConfigError
from fedvault.server import coordinator as coord
from fedvault.server import superlink
from fedvault.server.certs_cli import certs_app
from fedvault.server.deploy import (
    CoordinatorLayout,
    load_coordinator_config,
    parse_coordinator_config,
    run_config,
)
from fedvault.server.registry import SiteRegistry
from fedvault.server.server_cli import server_app
from fedvault.server.settings import APP_KEYS, ServerSettings

runner = CliRunner()


def _coordinator(tmp_path, **coordinator):
    raw = {"coordinator": {"run-dir": "run", **coordinator}, "training": {"rounds": 2}}
    return parse_coordinator_config(raw, base=tmp_path)


@pytest.mark.parametrize(
    "address", ["0.0.0.0:9093", "[::]:9093", "8.8.8.8:9093", "example.org:9093"]
)
def test_control_api_never_faces_partners(tmp_path, address):
    with pytest.raises(ConfigError, match="control-address"):
        _coordinator(tmp_path, **{"control-address": address})


@pytest.mark.parametrize("address", ["127.0.0.1:9093", "10.0.0.5:9093", "[::1]:1"])
def test_control_api_on_loopback_or_private_is_accepted(tmp_path, address):
    cfg = _coordinator(tmp_path, **{"control-address": address})
    assert cfg.options.control_address == address


def test_coordinator_config_paths_and_run_config(tmp_path):
    (tmp_path / "coordinator.toml").write_text(
        textwrap.dedent("""
        [coordinator]
        run-dir = "run"
        certs = "pki"
        test-data = "test.parquet"
        [training]
        rounds = 3
        min-sites = 2
        [sites]
        a = "keys/a.pub"
        """)
    )
    cfg = load_coordinator_config(tmp_path / "coordinator.toml")
    assert cfg.run_dir == tmp_path / "run"
    assert cfg.ca_cert == tmp_path / "pki" / "ca.crt"
    assert cfg.sites == {"a": tmp_path / "keys" / "a.pub"}
    assert cfg.expected_sites == 2  # defaults to min-sites
    values = run_config(cfg, tmp_path / "out", run_key="k")
    assert set(APP_KEYS) <= set(values)
    settings = ServerSettings.from_run_config(values)
    assert settings.training.rounds == 3
    assert settings.test_data == tmp_path / "test.parquet"
    assert settings.out_dir == tmp_path / "out"


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"coordinator": {"fleet-adress": "x:1"}}, "unknown key"),
        ({"coordinator": {"fleet-address": "nohost"}}, "fleet-address"),
        ({"training": {"rounds": 0}}, "rounds"),
        ({"extra": {}}, "unknown table"),
        ({"sites": {"a": 3}}, "public key path"),
        (
            {"coordinator": {"expected-sites": 2}, "training": {"min-sites": 9}},
            "min-sites: 9 is more than the 2 sites",
        ),
    ],
)
def test_bad_coordinator_config_names_the_key(tmp_path, raw, match):
    with pytest.raises(ConfigError, match=match):
        parse_coordinator_config(raw, base=tmp_path)


def test_superlink_command_is_tls_authenticated_with_a_database(tmp_path):
    cfg = _coordinator(
        tmp_path, **{"fleet-address": "0.0.0.0:9092", "control-address": "127.0.0.1:1"}
    )
    cmd = superlink.superlink_command(cfg, insecure=False)
    joined = " ".join(cmd)
    for flag in ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile"):
        assert flag in cmd
    assert "--enable-supernode-auth" in cmd and "--insecure" not in cmd
    assert "--fleet-api-type grpc-rere --fleet-api-address 0.0.0.0:9092" in joined
    assert "--host 127.0.0.1 --port 1" in joined
    assert "--disable-runtime-dependency-installation" in cmd
    assert f"--database {tmp_path / 'run' / 'superlink' / 'state.db'}" in joined
    insecure = superlink.superlink_command(cfg, insecure=True)
    assert "--insecure" in insecure and "--enable-supernode-auth" not in insecure


def test_existing_run_is_not_overwritten(tmp_path):
    layout = CoordinatorLayout(tmp_path)
    layout.output.mkdir(parents=True)
    (layout.output / "progress.jsonl").write_text("{}\n")
    with pytest.raises(ConfigError, match=r"cannot be resumed.*--restart"):
        coord.prepare_output(layout, restart=False)
    coord.prepare_output(layout, restart=True)
    assert not layout.output.exists()
    assert len(list(tmp_path.glob("output-*"))) == 1


def _site(tmp_path, **site):
    table = {
        "name": "site-a",
        "coordinator": "coord.example.org:9092",
        "data": "data/a.parquet",
        "ca-certificate": "ca.crt",
        "private-key": "keys/site.key",
        **site,
    }
    return site_config.parse_site_config({"site": table}, base=tmp_path)


def test_site_command_and_node_config(tmp_path):
    from flwr.common.config import parse_config_args

    cfg = _site(
        tmp_path,
        data='my "odd" data/a b.parquet',
        **{"runtime-address": "127.0.0.1:9201", "max-retries": 5},
    )
    node_file = site_config.write_node_config(cfg)
    cmd = supernode.supernode_command(cfg)
    joined = " ".join(cmd)
    assert "--grpc-rere --superlink coord.example.org:9092" in joined
    assert f"--root-certificates {tmp_path / 'ca.crt'}" in joined
    assert f"--auth-supernode-private-key {tmp_path / 'keys' / 'site.key'}" in joined
    assert "--host 127.0.0.1 --port 9201" in joined and "--max-retries 5" in joined
    assert "--insecure" not in cmd
    # Flower's own parser reads the node config back, odd characters included.
    node = parse_config_args([str(node_file)])
    assert node["data"] == str(tmp_path / 'my "odd" data' / "a b.parquet")
    assert node["site-name"] == "site-a"
    assert node["state"] == str(tmp_path / "site-state")
    assert "policy" not in node


def _site_files(tmp_path, **extra):
    """A site's files on disk (CA, private key, data) and its [site] table."""
    certs.create_ca(tmp_path)  # a real one: client start reads its expiry
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "site.key").write_text("x")
    (tmp_path / "keys" / "site.key").chmod(0o600)  # else refused: others can read
    (tmp_path / "a.parquet").write_text("x")
    return {
        "name": "site-a",
        "coordinator": "c:1",
        "data": "a.parquet",
        "ca-certificate": "ca.crt",
        "private-key": "keys/site.key",
        **extra,
    }


def test_site_policy_comes_from_its_privacy_table(tmp_path):
    site = _site_files(tmp_path)
    path = tmp_path / "site.toml"
    path.write_text(tomli_w.dumps({"site": site}))
    with pytest.raises(ConfigError, match="no privacy policy"):
        site_config.check_files(site_config.load_site_config(path))
    privacy = {"dataset-id": "d", "epsilon-max": 8.0, "delta": 1e-5}
    path.write_text(tomli_w.dumps({"site": site, "privacy": privacy}))
    cfg = site_config.load_site_config(path)
    site_config.check_files(cfg)
    assert cfg.policy_file == path.resolve()
    from flwr.common.config import parse_config_args

    node = parse_config_args([str(site_config.write_node_config(cfg))])
    assert node["policy"] == str(path.resolve())
    path.write_text(tomli_w.dumps({"site": site, "privacy": {"delta": 2.0}}))
    with pytest.raises(ConfigError, match=r"dataset-id|delta"):
        site_config.check_files(site_config.load_site_config(path))


SCHEMA = """
[dataset]
name = "breast-cancer"

[columns.target]
type = "category"
role = "target"
categories = ["0", "1"]

[columns."mean radius"]
type = "float"
role = "feature"
min = 6.981
max = 28.11
"""


def test_data_site_declares_its_schema(tmp_path):
    """A site training on a plain file names a schema contract: its node config
    carries it, and the site declares its bounds and label classes from it (so
    that a small site keeps both classes at a small epsilon, docs/privacy.md)."""
    from flwr.common.config import parse_config_args

    from fedvault.client.releases import declared
    from fedvault.client.site import site_settings

    (tmp_path / "schema.toml").write_text(SCHEMA)
    cfg = _site(tmp_path, schema="schema.toml")
    node = parse_config_args([str(site_config.write_node_config(cfg))])
    assert node["schema"] == str(tmp_path / "schema.toml")
    site = declared(site_settings(node, {}))
    assert site.categories == {"target": ("0", "1")}
    assert site.bounds == {"mean radius": (6.981, 28.11)}
    without = parse_config_args([str(site_config.write_node_config(_site(tmp_path)))])
    assert "schema" not in without


def test_data_site_schema_is_checked_before_start(tmp_path):
    site = _site_files(tmp_path, schema="schema.toml")
    default_dataset().head(40).to_parquet(tmp_path / "a.parquet")
    privacy = {"dataset-id": "d", "epsilon-max": 8.0, "delta": 1e-5}
    path = tmp_path / "site.toml"
    path.write_text(tomli_w.dumps({"site": site, "privacy": privacy}))
    schema = tmp_path / "schema.toml"

    def refused(text: str | None, match: str) -> None:
        if text is not None:
            schema.write_text(text)
        with pytest.raises(ConfigError, match=match):
            site_config.check_files(site_config.load_site_config(path))

    refused(None, r"^schema: .*schema.toml not found$")
    schema.mkdir()
    refused(None, r"^schema: .*schema.toml is a folder, not a file$")
    schema.rmdir()
    refused("[columns]\n", r"^schema: .*schema.toml: \[columns\] is empty")
    refused("[privacy]\n", r"^schema: .*schema.toml: privacy: unknown key")
    # a role that only an import applies is refused, not silently not applied
    drop = '\n[columns."mean area"]\ntype = "float"\nrole = "drop"\n'
    refused(SCHEMA + drop, r"^schema: .*column 'mean area' has role drop, which only")
    # a column the file lacks (a typo: underscores for spaces)
    typo = SCHEMA.replace('"mean radius"', "mean_radius")
    refused(typo, r"^schema: .*schema.toml names column\(s\) .*a.parquet lacks: 'mean_")
    # class names that are not the file's labels: every row would lose its label
    named = SCHEMA.replace('["0", "1"]', '["M", "B"]')
    refused(named, r"^schema: target 'target' in .* holds label\(s\) .* does not "
            r"declare: '0', '1' \(declared: 'M', 'B'\)$")  # fmt: skip
    schema.write_text(SCHEMA)
    site_config.check_files(site_config.load_site_config(path))


def test_site_runs_flower_through_fedvault_launcher_by_default(tmp_path):
    cfg = _site(tmp_path, **{"runtime-address": "127.0.0.1:9201"})
    cmd = supernode.supernode_command(cfg)
    assert cmd[1:6] == ["-P", "-m", "fedvault.client.runtime", "supernode", "0.25"]
    assert cmd[6:9] == ["--", "--isolation", "process"]
    launcher = supernode.launcher_command(cfg, 4242)
    assert launcher[1:] == [
        "-P",
        "-m",
        "fedvault.client.runtime",
        "launcher",
        "127.0.0.1:9201",
        "4242",
    ]
    own = _site(tmp_path, isolation="subprocess", **{"poll-interval": 1})
    cmd = supernode.supernode_command(own)
    assert Path(cmd[0]).name == "flower-supernode" and "--isolation" not in cmd


@pytest.mark.parametrize(
    ("site", "match"),
    [
        ({"isolation": "thread"}, "isolation"),
        ({"poll-interval": 0}, "poll-interval"),
        ({"runtime-address": "0.0.0.0:9094"}, "loopback"),
        ({"private-key": ""}, "private-key"),
        ({"name": "bad name"}, "name"),
        ({"coordinator": "no-port"}, "coordinator"),
        ({"unknown": 1}, "unknown key"),
        (
            {"data": "", "vault": "v", "key-file": "k", "schema": "s.toml"},
            r"^schema: only with data",
        ),
    ],
)
def test_bad_site_config_names_the_key(tmp_path, site, match):
    with pytest.raises(ConfigError, match=match):
        _site(tmp_path, **site)


def test_insecure_site_needs_no_keys(tmp_path):
    cfg = _site(tmp_path, insecure=True, **{"private-key": "", "ca-certificate": ""})
    cmd = supernode.supernode_command(cfg)
    assert "--insecure" in cmd and "--auth-supernode-private-key" not in cmd


@pytest.mark.parametrize(
    ("log", "meaning"),
    [
        (
            "ERROR: [code: 2004] Failed to activate SuperNode.",
            "refused this site's key",
        ),
        ("last error: UNAVAILABLE: ipv4:127.0.0.1:1: Socket closed", "cannot reach"),
        ("CERTIFICATE_VERIFY_FAILED", "not trusted"),
        ("UNKNOWN: ipv4:127.0.0.1:9: Connection refused", "nothing answers"),
    ],
)
def test_supernode_failures_are_explained(log, meaning):
    assert meaning in flower_log.explain_failure(log)


def test_registry_names_and_keys_are_unique(tmp_path):
    for name in ("a", "b"):
        assert client_app is not None
        result = runner.invoke(client_app, ["keygen", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
    registry = SiteRegistry(tmp_path / "sites.json")
    registry.add("site-a", tmp_path / "a" / "site.pub")
    with pytest.raises(ConfigError, match="already registered"):
        registry.add("site-a", tmp_path / "b" / "site.pub")
    with pytest.raises(ConfigError, match="already registered as 'site-a'"):
        registry.add("site-b", tmp_path / "a" / "site.pub")
    with pytest.raises(ConfigError, match="site name"):
        registry.add("bad/name", tmp_path / "b" / "site.pub")
    registry.save()
    again = SiteRegistry(tmp_path / "sites.json")
    assert list(again.sites) == ["site-a"] and again.sites["site-a"].node_id is None


def test_sites_cli_without_a_running_coordinator(tmp_path):
    (tmp_path / "coordinator.toml").write_text('[coordinator]\nrun-dir = "run"\n')
    runner.invoke(client_app, ["keygen", str(tmp_path / "k")], catch_exceptions=False)
    config = ["--config", str(tmp_path / "coordinator.toml")]
    pub = str(tmp_path / "k" / "site.pub")
    result = runner.invoke(server_app, ["sites", "add", "site-a", pub, *config])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # Rich wraps lines
    assert "registered with Flower when the coordinator starts" in text
    listed = runner.invoke(server_app, ["sites", "list", *config, "--format", "json"])
    sites = json.loads(listed.output)
    assert [(s["name"], s["status"]) for s in sites] == [("site-a", "pending")]
    status = runner.invoke(server_app, ["status", *config, "--format", "json"])
    assert json.loads(status.output)["running"] is False
    removed = runner.invoke(server_app, ["sites", "remove", "site-a", *config])
    assert removed.exit_code == 0, removed.output
    assert SiteRegistry(tmp_path / "run" / "sites.json").sites == {}


def test_certs_cli(tmp_path):
    d = str(tmp_path / "pki")
    assert runner.invoke(certs_app, ["init", d]).exit_code == 0
    result = runner.invoke(
        certs_app, ["server", d, "--host", "h.example", "--ip", "10.0.0.1"]
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(certs_app, ["check", d, "--format", "json"])
    assert result.exit_code == 0, result.output
    assert {r["state"] for r in json.loads(result.output)} == {"ok"}
    result = runner.invoke(certs_app, ["check", d, "--warn-days", "400"])
    assert result.exit_code == 3  # server.crt lives 397 days: "expiring" at 400
    result = runner.invoke(certs_app, ["init", d])
    assert isinstance(result.exception, ConfigError)
