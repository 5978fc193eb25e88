"""The API keeps the promises of its own OpenAPI document (/api/openapi.json).

Schemathesis generates requests for every operation the document lists (valid ones, and invalid
ones the app must refuse with a documented answer) and sends them in-process through WSGI,
authenticated as a caller with plenty of credits (an administrator, so the grant endpoint is
exercised past its admin check) and, in a second run, as a caller with nothing. Every answer must
be no 5xx, and have a documented status code, a documented content type and a body matching its
documented schema. After each run the ledger must agree with every balance and no credit hold may
be left open.

The operations are read from the document when the module is collected, so a new route is tested
without anyone adding it here. Nothing is excluded.

EDGE_REQUESTS are requests at edges the generator rarely or never reaches (ids past 32 and 64 bits,
NUL characters, lone surrogates), sent through the same checks on both backends. Those that show a
known bug are xfail(strict=True) on the backends that have it, and the contract run steers its
generator away from just those inputs there, so that it keeps checking everything else and does
not fail at random. When a bug is fixed its test XPASSes, which fails the run: empty its
`broken_on`, and the contract run covers those inputs again.

Runs on both backends (SQLite and, where a server answers, PostgreSQL); about 10 seconds each.
"""
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

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
from creditapp.jobs.queue import job_queue
from creditapp.ledger.tables import CreditHold

from creditapp.testing import make_app

DOCUMENT = "/api/openapi.json"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
MAX_EXAMPLES = 30
PLENTY = 10**9
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
BOTH = ("sqlite", "postgresql")


def _backend() -> str:
    return db.engine.dialect.name


def _int_above(value, limit: int) -> bool:
    """`value` (as generated: an int, or text in a negative case) is an integer above `limit`."""
    text = str(value)
    return text.isdigit() and int(text) > limit


def _body_text(case, name: str) -> str | None:
    body = case.body if isinstance(case.body, dict) else {}
    value = body.get(name)
    return value if isinstance(value, str) else None


class StillBroken(AssertionError):
    """A known bug's request still gets a 5xx (the only failure its xfail expects)."""


@dataclass(frozen=True)
class EdgeRequest:
    """A request at an edge the generator rarely or never reaches, sent on every backend: it must
    not get a 5xx and its answer must keep the document. Where it is a known bug (`broken_on`),
    its test is xfail(strict=True) with `reason`, and the contract run does not generate the cases
    `triggers` matches on those backends, so that the rest of the operation stays checked."""

    name: str
    operation: str  # label, "METHOD /path"; "self" below names the caller (its id or username)
    path_parameters: dict = field(default_factory=dict)
    query: dict = field(default_factory=dict)
    body: dict | None = None
    broken_on: tuple[str, ...] = ()
    reason: str = ""  # request, wrong answer, expected answer
    triggers: Callable[[object], bool] | None = None


GRANT = "POST /api/admin/users/{user_id}/credits"
TRANSACTIONS = "GET /api/credits/transactions"
EDGE_REQUESTS = [
    EdgeRequest(
        "grant-to-user-id-over-int32", GRANT,
        path_parameters={"user_id": INT32_MAX + 1}, body={"amount": 1},
        reason="PostgreSQL: POST /api/admin/users/2147483648/credits {\"amount\": 1} as an admin answers "
        "500 internal_error (psycopg NumericValueOutOfRange: the user id columns are INTEGER) instead of "
        "404 unknown_user; the document gives user_id no maximum",
        triggers=lambda case: _int_above(case.path_parameters.get("user_id"), INT32_MAX),
    ),
    EdgeRequest(
        "grant-to-user-id-over-int64", GRANT,
        path_parameters={"user_id": INT64_MAX + 1}, body={"amount": 1},
        reason="POST /api/admin/users/9223372036854775808/credits {\"amount\": 1} as an admin answers 500 "
        "internal_error (SQLite: OverflowError, Python int too large to convert to SQLite INTEGER; "
        "PostgreSQL: integer out of range) instead of 404 unknown_user",
        triggers=lambda case: _int_above(case.path_parameters.get("user_id"), INT64_MAX),
    ),
    EdgeRequest(
        "grant-reason-with-nul", GRANT, path_parameters={"user_id": "self"},
        body={"amount": 1, "reason": "a\x00b"},
        reason="PostgreSQL: POST /api/admin/users/<own id>/credits {\"amount\": 1, \"reason\": "
        "\"a\\u0000b\"} (likewise \"reference\") answers 500 internal_error (psycopg.DataError: "
        "PostgreSQL text fields cannot contain NUL (0x00) bytes) instead of 201 as on SQLite, or a 422",
        triggers=lambda case: any(
            "\x00" in (_body_text(case, name) or "")
            for name in ("reason", "reference")
        ),
    ),
    EdgeRequest("grant-reference-with-nul", GRANT, path_parameters={"user_id": "self"},
                body={"amount": 1, "reference": "a\x00b"},
                reason="PostgreSQL: as grant-reason-with-nul, with the NUL in \"reference\""),
    # Lone UTF-16 surrogates ("\ud800" in JSON): hypothesis never generates them.
    EdgeRequest("grant-reason-lone-surrogate", GRANT, path_parameters={"user_id": "self"},
                body={"amount": 1, "reason": "a\ud800b"}),
    EdgeRequest("grant-reference-lone-surrogate", GRANT, path_parameters={"user_id": "self"},
                body={"amount": 1, "reference": "a\ud800b"}),
    EdgeRequest("register-password-lone-surrogate", "POST /api/auth/register",
                body={"username": "surrogate1", "password": "a\ud800bcdefghij"}),
    EdgeRequest("login-password-lone-surrogate", "POST /api/auth/login",
                body={"username": "self", "password": "a\ud800bcdefghij"}),
    EdgeRequest("generate-prompt-lone-surrogate", "POST /api/generate", body={"prompt": "a\ud800b"}),
    # Cursors near the 64-bit limit of ledger ids (19 digits used to reach past it: a 500).
    EdgeRequest("transactions-cursor-18-digits", TRANSACTIONS, query={"cursor": "9" * 18}),
    EdgeRequest("transactions-cursor-19-digits", TRANSACTIONS, query={"cursor": "9" * 19}),
    EdgeRequest("transactions-cursor-over-int64", TRANSACTIONS, query={"cursor": str(INT64_MAX + 1)}),
]


@pytest.fixture(scope="module", autouse=True)
def url_format():
    """The document says `format: url` (marshmallow's Url field), which is no standard format, so
    schemathesis would send any string and every valid-looking image request would be a 422: teach
    it what an image URL looks like, for this module only."""
    urls = st.builds(
        "{}://{}/{}".format,
        st.sampled_from(["http", "https"]),
        st.sampled_from(["images.example.com", "cdn.example.org", "photos.example.net:8080"]),
        st.text(alphabet=string.ascii_letters + string.digits + "-._~/", max_size=40),
    )
    schemathesis.openapi.format("url", urls)
    yield
    from schemathesis.specs.openapi.formats import unregister_string_format

    unregister_string_format("url")


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


def _open_holds() -> int:
    return db.session.execute(
        select(func.count()).select_from(CreditHold).where(CreditHold.status == "open")
    ).scalar_one()


def _strategy(operation, headers: dict):
    """Valid requests and, where the operation has any input to get wrong, invalid ones; minus
    the inputs of known bugs of this operation on this backend."""
    strategy = operation.as_strategy(GenerationMode.POSITIVE, headers=headers)
    if list(operation.iter_parameters()) or operation.body:
        strategy = st.one_of(strategy, operation.as_strategy(GenerationMode.NEGATIVE, headers=headers))
    known = [
        bug for bug in EDGE_REQUESTS
        if bug.operation == operation.label and _backend() in bug.broken_on and bug.triggers is not None
    ]
    if known:
        strategy = strategy.filter(lambda case: not any(bug.triggers(case) for bug in known))
    return strategy


def _settings():
    return settings(
        max_examples=MAX_EXAMPLES, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


def test_the_document_lists_the_operations():
    # Guards the collection above: an empty or broken document would otherwise test nothing.
    assert {"POST /api/generate", "POST /api/ai/complete", "GET /api/credits/balance"} <= set(OPERATIONS)
    assert len(OPERATIONS) == len(set(OPERATIONS))
    assert {edge.operation for edge in EDGE_REQUESTS} <= set(OPERATIONS)
    assert all(edge.reason for edge in EDGE_REQUESTS if edge.broken_on)


@pytest.mark.parametrize("caller", ["rich_admin", "broke_user"])
@pytest.mark.parametrize("label", OPERATIONS)
def test_operation_keeps_the_document(app, stub, make_user, caller, label):
    stub.failure_rate = 0.0
    if caller == "rich_admin":
        user = make_user(credits=PLENTY, tokens=PLENTY, admin=True)
    else:
        user = make_user(credits=0, tokens=0)
    # Built here, not at import: the app and its database are the fixtures', one per backend.
    schema = schemathesis.openapi.from_wsgi(DOCUMENT, app)
    method, path = label.split(" ", 1)
    operation = schema[path][method]

    @_settings()
    @given(case=_strategy(operation, user.headers))
    def run(case):
        case.call_and_validate(checks=CHECKS)

    run()

    job_queue().drain()  # jobs (Prefer: respond-async) hold their credits until they have run
    assert credit_service.verify() == []
    assert _open_holds() == 0, "a request left its credit hold open"
    if caller == "broke_user":
        # Nobody in this test can grant, so whatever was asked, nothing was spent or given, but
        # what a free plan gives whoever chooses it (its allowance, a lot of source "plan").
        lots = credit_service.list_lots(user.id, include_spent=True, limit=100).items
        assert all(lot["source"] == "plan" and lot["remaining"] == lot["granted"] for lot in lots), lots
        balance = credit_service.get_credit_balance(user.id)
        assert (balance.generation_credits, balance.ai_tokens) == (
            sum(lot["granted"] for lot in lots if lot["credit_type"] == "generation_credits"),
            sum(lot["granted"] for lot in lots if lot["credit_type"] == "ai_tokens"))


def _edge_case(schema, edge: EdgeRequest, user):
    """`edge` as a schemathesis case sent by `user` ("self" in it names the user)."""
    method, path = edge.operation.split(" ", 1)
    own = {"self": user.id}
    kwargs = {}
    if edge.body is not None:
        body = dict(edge.body)
        if body.get("username") == "self":
            body["username"] = user.username
        kwargs = {"body": body, "media_type": "application/json"}
    return schema[path][method].Case(
        path_parameters={name: own.get(value, value) for name, value in edge.path_parameters.items()},
        query=dict(edge.query) or None,
        headers=user.headers,
        **kwargs,
    )


def test_known_bug_filters_catch_their_requests():
    """What the contract run steers away from must include the request that shows the bug."""
    schema = schemathesis.openapi.from_wsgi(DOCUMENT, make_app("sqlite://"))
    user = SimpleNamespace(id=1, username="someone", headers={"Authorization": "Bearer x"})
    for edge in EDGE_REQUESTS:
        if edge.triggers is not None:
            assert edge.triggers(_edge_case(schema, edge, user)), edge.name


def _edge_params():
    for edge in EDGE_REQUESTS:
        for backend in BOTH:
            marks = []
            if backend in edge.broken_on:
                marks = [pytest.mark.xfail(strict=True, raises=StillBroken, reason=edge.reason)]
            yield pytest.param(backend, edge, id=f"{backend}-{edge.name}", marks=marks)


@pytest.mark.parametrize("database_url, edge", list(_edge_params()), indirect=["database_url"])
def test_edge_request(app, stub, make_user, edge):
    """The request, as an administrator with a few credits, through the contract run's checks."""
    admin = make_user(credits=10, tokens=10, admin=True)
    schema = schemathesis.openapi.from_wsgi(DOCUMENT, app)
    case = _edge_case(schema, edge, admin)
    response = case.call()
    if response.status_code >= 500:
        raise StillBroken(f"{response.status_code} {response.text}")
    # Not a 5xx: then the answer must keep the document and the books, like any other (a failure
    # here is a real one, not a known bug's).
    case.validate_response(response, checks=CHECKS)
    assert credit_service.verify() == []
