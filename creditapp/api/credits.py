from ..auth import caller_must_exist, require_login, session_checked_by_ledger, session_to_check
from ..features import price_list
from ..ledger import credit_service
from .bodies import Blueprint
from .spending import current_wallet_id
from .schemas import (
    BalanceReadSchema, CostListSchema, ErrorSchema, LotPageSchema, LotQuerySchema, TransactionPageSchema,
    TransactionQuerySchema,
)

blp = Blueprint("credits", __name__, url_prefix="/api/credits", description="Balances and history.")


@blp.get("/balance")
@blp.response(200, BalanceReadSchema)
@blp.alt_response(401, schema=ErrorSchema, description="Missing or invalid token")
@blp.doc(security=[{"bearerAuth": []}])
@session_checked_by_ledger
def balance():
    """What the caller can spend now, per credit type, the next credits to expire, and what the
    caller owes (refunds that took back credits already spent; later grants pay it first)."""
    with caller_must_exist():
        found = credit_service.overview(current_wallet_id(), session_id=session_to_check())
    return {**found.balance.as_dict(), "expiring": found.expiring, "debt": found.debt}


@blp.get("/lots")
@blp.arguments(LotQuerySchema, location="query", as_kwargs=True)
@blp.response(200, LotPageSchema)
@blp.alt_response(401, schema=ErrorSchema, description="Missing or invalid token")
@blp.doc(security=[{"bearerAuth": []}])
def lots(credit_type, include_spent, limit, cursor):
    """The caller's lots in spending order: what was granted, what remains, what is held."""
    with caller_must_exist():
        page = credit_service.list_lots(current_wallet_id(), credit_type=credit_type, include_spent=include_spent,
                                        offset=int(cursor) if cursor else 0, limit=limit)
    next_cursor = str(page.next_cursor) if page.next_cursor is not None else None
    return {"items": page.items, "next_cursor": next_cursor}


@blp.get("/transactions")
@blp.arguments(TransactionQuerySchema, location="query", as_kwargs=True)
@blp.response(200, TransactionPageSchema)
@blp.alt_response(401, schema=ErrorSchema, description="Missing or invalid token")
@blp.doc(security=[{"bearerAuth": []}])
def transactions(limit, cursor, credit_type):
    """The caller's ledger, newest first, a page at a time."""
    with caller_must_exist():
        page = credit_service.list_transactions(
            current_wallet_id(), limit=limit, before_id=int(cursor) if cursor else None,
            credit_type=credit_type,
        )
    next_cursor = str(page.next_cursor) if page.next_cursor is not None else None
    return {"items": page.items, "next_cursor": next_cursor}


@blp.get("/costs")
@blp.response(200, CostListSchema)
def costs():
    """The price of every paid feature."""
    return {"costs": price_list()}


# The price list is public: clients show it before anyone logs in.
blp.before_request(require_login(public_endpoints={"credits.costs"}))
