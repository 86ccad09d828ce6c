"""Prepaid credit in Redis: the key names the gateway (admission) and billing (grants, expiries,
the rebuild) share, and nothing else.

An account on prepaid billing has one balance counter in integer pico-units (10^-12) of
billing's currency under its `{a:<id>}` hash tag, so the admission script reserves from it in
the same call as every other limit. Billing adds each ledger movement to it exactly once (the
ids of the movements applied are a set beside it); the gateway reserves a request's most
possible cost and settles to its rated cost. The ledger in PostgreSQL is the truth: the epoch
key marks a Redis that holds the counters, and billing rebuilds them when it is missing.
"""


def credit_keys(account_id: int) -> tuple[str, str]:
    """The account's balance counter and the set of ledger entry ids applied to it."""
    tag = f"{{a:{account_id}}}"
    return f"{tag}:credit-pico", f"{tag}:credit-applied"


def credit_held_key(account_id: int) -> str:
    """The hash of what the gateway holds from the balance for each request in flight
    (request id -> pico-units), given back at its settle; a rebuilt counter starts without."""
    return f"{{a:{account_id}}}:credit-held"


# Present while Redis holds the credit counters; gone after Redis lost its data.
CREDIT_EPOCH = "{limits}:epoch:credit"
