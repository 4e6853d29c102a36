"""A coordinator certificate that would expire during the run (issue 14, case 12):
`server start` refuses before any process, naming the date and how to renew, and
`certs server --renew` re-issues it with the same key and names."""

from __future__ import annotations

import pytest
from consortium import coordinator_toml, run_fedvault
from cryptography import x509
from typer.testing import CliRunner

from fedvault.common import certs
from fedvault.common.errors import ConfigError
from fedvault.server import coordinator as coord
from fedvault.server.certs_cli import certs_app
from fedvault.server.deploy import load_coordinator_config
from fedvault.server.superlink import _check_certificates

runner = CliRunner()


def _cert(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_a_certificate_ending_before_the_run_refuses_start_until_renewed(tmp_path):
    folder = tmp_path / "certs"
    certs.create_ca(folder)
    certs.issue_server_cert(folder, host="localhost", ips=("10.0.0.7",), days=1)
    cfg = load_coordinator_config(coordinator_toml(tmp_path))  # timeout 86400 s
    with pytest.raises(ConfigError) as refused:
        coord.start(cfg)
    message = str(refused.value)
    assert "server.crt expires" in message and "before this run can end" in message
    assert f"fedvault certs server {folder} --renew" in message
    assert not (cfg.run_dir / "superlink" / "superlink.log").exists()

    before = _cert(folder / certs.SERVER_CERT)
    result = runner.invoke(
        certs_app, ["server", str(folder), "--renew", "--days", "90"]
    )
    assert result.exit_code == 0 and "renewed until" in result.output
    after = _cert(folder / certs.SERVER_CERT)
    assert after.not_valid_after_utc > before.not_valid_after_utc
    assert after.public_key() == before.public_key()
    san = x509.SubjectAlternativeName
    assert after.extensions.get_extension_for_class(san) == (
        before.extensions.get_extension_for_class(san)
    )
    certs.verify_server_cert(folder)
    _check_certificates(cfg)  # start would go on now


def test_renewing_without_a_certificate_is_one_line(monkeypatch, capsys, tmp_path):
    certs.create_ca(tmp_path)
    code, out = run_fedvault(
        monkeypatch, capsys, "certs", "server", str(tmp_path), "--renew"
    )
    assert code == 2 and "no certificate to renew" in out and "Traceback" not in out
    code, out = run_fedvault(monkeypatch, capsys, "certs", "server", str(tmp_path))
    assert code == 2 and "give --host" in out


def _site_with_ca(tmp_path, days):
    """A site TOML (TLS, its own key and data) trusting a CA valid for ``days``."""
    from consortium import write_site

    from fedvault.client.site_config import load_site_config
    from fedvault.common.data import default_dataset

    certs.create_ca(tmp_path / "certs", days=days)
    certs.generate_site_keys(tmp_path / "keys" / "site-0")
    default_dataset().head(50).to_parquet(tmp_path / "site.parquet", index=False)
    write_site(tmp_path, "site-0", 9092, "bc", data="site.parquet")
    return tmp_path / "site-0.toml", load_site_config(tmp_path / "site-0.toml")


def test_client_start_refuses_an_expired_ca_naming_the_file(
    monkeypatch, capsys, tmp_path
):
    config, _ = _site_with_ca(tmp_path, days=0)
    code, out = run_fedvault(
        monkeypatch, capsys, "client", "start", "--config", str(config)
    )
    assert code == 2 and "Traceback" not in out
    assert f"ca-certificate: {tmp_path / 'certs' / 'ca.crt'} is expired" in out
    assert not (tmp_path / "state" / "site-0" / "supernode.log").exists()


def test_client_start_warns_of_a_ca_ending_within_30_days(tmp_path, caplog):
    from fedvault.client.site_config import check_files

    _, cfg = _site_with_ca(tmp_path, days=10)
    check_files(cfg)  # start goes on
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    expires = _cert(tmp_path / "certs" / "ca.crt").not_valid_after_utc
    assert any(
        f"{tmp_path / 'certs' / 'ca.crt'} expires {expires:%Y-%m-%d}" in w
        and "(in 10 days)" in w
        for w in warned
    ), warned
