"""The API keeps the promises of its own OpenAPI document (/api/openapi.json).

Schemathesis generates requests for every operation the document lists (valid ones, and invalid
ones that the app must refuse with a documented answer) and sends them in-process through WSGI,
authenticated as a caller with plenty of credits (an administrator, so that the grant endpoint
is exercised past its admin check) and as a caller with nothing. Every answer must be no 5xx,
have a documented status code and content type, and match its documented schema. After the run
the ledger must agree with every balance, and no hold may be left open.

The operations are read from the document itself when the module is collected, so a new route
is tested without anyone adding it here. Nothing is excluded.
"""
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance, response_schema_conformance, status_code_conformance,
)
from sqlalchemy import func, select

from creditapp.credits import credit_service
from creditapp.extensions import db
from creditapp.models import CreditHold

from .conftest import make_app

DOCUMENT = "/api/openapi.json"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
MAX_EXAMPLES = 30
PLENTY = 10**9

# Known bugs, by operation label ("POST /api/generate"): each is run and must fail
# (xfail strict), so a fix shows up as an XPASS to remove from here. Empty: none known.
KNOWN_BUGS: dict[str, str] = {}


def _document_operations() -> list[str]:
    """Every operation of the API document, as "METHOD /path" (no database is touched)."""
    app = make_app("sqlite://")
    document = app.test_client().get(DOCUMENT).get_json()
    methods = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
    return [
        f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        for method in item
        if method in methods
    ]


OPERATIONS = _document_operations()


def _operation_params():
    for label in OPERATIONS:
        marks = [pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[label])] if label in KNOWN_BUGS else []
        yield pytest.param(label, id=label, marks=marks)


def _open_holds() -> int:
    return db.session.execute(
        select(func.count()).select_from(CreditHold).where(CreditHold.status == "open")
    ).scalar_one()


def _strategy(operation, headers: dict):
    """Valid requests and, where the operation has anything to get wrong, invalid ones."""
    positive = operation.as_strategy(GenerationMode.POSITIVE, headers=headers)
    has_input = bool(list(operation.iter_parameters())) or bool(operation.body)
    if not has_input:
        return positive
    return st.one_of(positive, operation.as_strategy(GenerationMode.NEGATIVE, headers=headers))


def test_every_operation_of_the_document_is_tested():
    # Guards the collection above: an empty or broken document would otherwise test nothing.
    assert "POST /api/generate" in OPERATIONS
    assert "GET /api/credits/balance" in OPERATIONS
    assert len(OPERATIONS) == len(set(OPERATIONS))


@pytest.mark.parametrize("caller", ["rich_admin", "broke_user"])
@pytest.mark.parametrize("label", list(_operation_params()))
def test_operation_keeps_the_document(app, stub, make_user, caller, label):
    stub.failure_rate = 0.0
    if caller == "rich_admin":
        user = make_user(credits=PLENTY, tokens=PLENTY, admin=True)
    else:
        user = make_user(credits=0, tokens=0)
    # Built per test: the app (and its database) is the fixture's, and differs per backend.
    schema = schemathesis.openapi.from_wsgi(DOCUMENT, app)
    method, path = label.split(" ", 1)
    operation = schema[path][method]

    @settings(
        max_examples=MAX_EXAMPLES, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(case=_strategy(operation, user.headers))
    def run(case):
        case.call_and_validate(checks=CHECKS)

    run()

    assert credit_service.verify() == []
    assert _open_holds() == 0, "a request left its credit hold open"
    if caller == "broke_user":
        # Nobody in this test can grant, so whatever was asked, nothing was spent or given.
        balance = credit_service.get_credit_balance(user.id)
        assert (balance.generation_credits, balance.ai_tokens) == (0, 0)
