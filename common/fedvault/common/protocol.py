"""Names both roles agree on for client-level DP and secure aggregation rounds.

The coordinator and the sites never import each other; the few strings and numbers
they must share about the privacy protocol live here:

- a site that cannot take part in a SecAgg+ round answers with a Flower ``Error``
  whose reason starts with :data:`DECLINE_PREFIX` (its typed decline) or
  :data:`MISMATCH_PREFIX` (the round's protocol is not the one the run asked for:
  the coordinator must fail the run loudly instead of carrying on without the site);
- with client-level DP every reply carries the constant weight :data:`CLIENT_WEIGHT`
  (Flower's accountant needs equal weights);
- the SecAgg+ quantization settings, which bound what a site may put in the sum.
"""

from __future__ import annotations

DECLINE_PREFIX = "fedvault-decline:"
MISMATCH_PREFIX = "fedvault-protocol-mismatch:"

CLIENT_WEIGHT = "client-weight"

# Train-config key of a SecAgg+ round: the global model's array names, in order
# (JSON list), since Flower's legacy messages carry unnamed arrays.
ARRAY_KEYS = "fedvault-array-keys"

# SecAgg+ quantization (Flower's defaults): every value a site masks is clipped to
# +-SECAGG_CLIPPING_RANGE and quantized to SECAGG_QUANTIZATION_RANGE levels; weights
# must stay <= the round's max weight.
SECAGG_CLIPPING_RANGE = 8.0
SECAGG_QUANTIZATION_RANGE = 2**22
SECAGG_MODULUS_RANGE = 2**32
SECAGG_MAX_WEIGHT = 1000.0


def quantization_step(
    clipping_range: float = SECAGG_CLIPPING_RANGE,
    quantization_range: int = SECAGG_QUANTIZATION_RANGE,
) -> float:
    """Width of one SecAgg+ quantization level; stochastic rounding moves each
    value by less than one step."""
    return 2 * clipping_range / quantization_range
