"""What a SuperNode's log says went wrong, in one line for the site's operator."""

from __future__ import annotations

import re

# The coordinator refused to activate this site's key: not registered, revoked, or
# still counted online from a connection that crashed (Flower gives no detail).
KEY_REFUSED = re.compile(r"code: 2004|Failed to activate SuperNode")

# Known SuperNode failures, by the text Flower logs, and what they mean for a site.
_REFUSALS = (
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
    """One line for the operator: what a SuperNode's log says went wrong."""
    for pattern, meaning in _REFUSALS:
        if pattern.search(log_text):
            return meaning
    lines = [
        ln for ln in log_text.splitlines() if "ERROR" in ln
    ] or log_text.splitlines()
    return (lines or ["no output"])[-1].strip()[:300]
