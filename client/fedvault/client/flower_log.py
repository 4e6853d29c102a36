"""What a SuperNode's log says went wrong, in one line for the site's operator."""

from __future__ import annotations

import re

from fedvault.common.flower_logs import explain_exit, plain

# The coordinator refused to activate this site's key: not registered, revoked, or
# still counted online from a connection that crashed (Flower gives no detail).
KEY_REFUSED = re.compile(r"code: 2004|Failed to activate SuperNode")

# Known SuperNode failures, by the text Flower logs, and what they mean for a site.
_REFUSALS = (
    (
        re.compile(r"the SuperNode ended on its own"),
        "the coordinator ended this site's connection: it no longer accepts the "
        "site's key (removed with `fedvault server sites remove`); ask the "
        "coordinator, or make a new key (`fedvault client keygen`) to be added again",
    ),
    (
        KEY_REFUSED,
        "the coordinator refused this site's key: ask the coordinator to run "
        "`fedvault server sites add NAME site.pub`",
    ),
    (
        re.compile(r"code: 2001|must be registered"),
        "the coordinator requires a registered site key; set private-key",
    ),
    (
        re.compile(r"Hostname Verification|hostname mismatch|doesn't match"),
        "the coordinator's certificate does not name the host in `coordinator`: "
        "dial the name or address it was issued for (`fedvault certs server "
        "--host NAME --ip ADDRESS` on the coordinator), or have it reissued",
    ),
    (
        re.compile(r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"),
        "the coordinator's certificate is not trusted by ca-certificate, or does not "
        "name the address in `coordinator`",
    ),
    (
        re.compile(r"Connection refused"),
        "nothing answers at `coordinator` (wrong host or port, or the coordinator "
        "is not running)",
    ),
    (
        re.compile(r"UNAVAILABLE"),
        "cannot reach the coordinator (wrong address, firewall, or TLS mismatch)",
    ),
)


def explain_failure(log_text: str) -> str:
    """One line for the operator, without terminal codes: what a SuperNode's log
    says went wrong (a known refusal, else Flower's exit code in words, else the
    last error line)."""
    text = plain(log_text)
    for pattern, meaning in _REFUSALS:
        if pattern.search(text):
            return meaning
    explained = explain_exit(text)
    if explained is not None:
        return explained
    lines = [ln for ln in text.splitlines() if "ERROR" in ln] or text.splitlines()
    return (lines or ["no output"])[-1].strip()[:300]
