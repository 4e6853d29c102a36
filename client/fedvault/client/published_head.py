"""The ledger head a site publishes with its replies
(:mod:`fedvault.common.ledger_head`).

:func:`publish_head` adds the site's ledger anchor (what ``fedvault client ledger
anchor`` prints) to a reply, after the handler made it and before the access log
records it: the coordinator then holds an anchor of the site's ledger taken at every
answer. A site without a policy or a ledger yet publishes none; a ledger that fails
verification publishes none either (the handler has already refused to charge it);
a decline carries none (a site that refuses a run, an unapproved coordinator's
included, tells it nothing about its ledger).
"""

from __future__ import annotations

import logging

from flwr.app import Context, Message

from fedvault.client.budget import policy_path
from fedvault.client.ledger import anchor
from fedvault.client.policy import load_policy
from fedvault.client.site import site_settings
from fedvault.common.errors import ConfigError, FedVaultError
from fedvault.common.ledger_head import LEDGER_HEAD, LedgerHead
from fedvault.common.protocol import Decline

logger = logging.getLogger(__name__)


def ledger_head(ctxt: Context) -> LedgerHead | None:
    """The site's ledger head now, or None (no policy, no ledger yet, or a ledger
    that does not verify: logged)."""
    try:
        site = site_settings(ctxt.node_config, ctxt.run_config)
        policy_file, state_dir = policy_path(site.state, site.policy)
        dataset = load_policy(policy_file).dataset_id
        return LedgerHead.from_anchor(anchor(state_dir, dataset))
    except ConfigError:
        return None  # nothing to publish: no policy, or nothing charged yet
    except (OSError, FedVaultError, ValueError) as exc:
        logger.warning("the ledger head is not published: %s", exc)
        return None


def publish_head(reply: Message, ctxt: Context, *, protocol_stage: bool) -> Message:
    """``reply`` with the site's ledger head added (not to an error or a decline:
    a site that refuses a run tells it nothing more; nor to a SecAgg+
    ``protocol_stage``, whose replies are Flower's own)."""
    if reply.has_error() or protocol_stage or Decline.from_content(reply.content):
        return reply
    head = ledger_head(ctxt)
    if head is not None:
        reply.content.config_records[LEDGER_HEAD] = head.to_record()
    return reply
