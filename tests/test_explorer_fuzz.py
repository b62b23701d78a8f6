"""The explorer's HTTP API fuzzed from its own OpenAPI schema with schemathesis: valid and
invalid requests of every operation, each answered without a server error (no 5xx), with a
status the schema documents and a body that conforms to it. Bounded: a fixed number of
examples per operation (CI runs it with the slow tests)."""

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance
from webtools import tiny_explorer

from torch_vae.explorer.app import create_app

EXAMPLES = 60  # per operation and generation mode (valid, invalid)


@pytest.fixture(scope="module")
def api_schema():
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(tiny_explorer()))


@pytest.fixture(scope="module")
def conditional_schema():
    """A conditional model's API, whose requests name a class."""
    return schemathesis.openapi.from_asgi(
        "/openapi.json", create_app(tiny_explorer(conditional=True))
    )


@pytest.fixture(scope="module")
def discrete_schema():
    """A discrete (VQ) model's API, whose codes are grids of code indices."""
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(tiny_explorer(discrete=True)))


schema = schemathesis.pytest.from_fixture("api_schema")
conditional = schemathesis.pytest.from_fixture("conditional_schema")
discrete = schemathesis.pytest.from_fixture("discrete_schema")


def check(case):
    excluded = []
    if case.operation.path == "/api/encode":
        # the schema can say "a file", not "an image": most valid bodies are not one (415)
        excluded.append(positive_data_acceptance)
    case.call_and_validate(excluded_checks=excluded)


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_from_its_schema(case):
    check(case)


@pytest.mark.slow
@conditional.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_conditional_api_from_its_schema(case):
    check(case)


@pytest.mark.slow
@discrete.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_discrete_api_from_its_schema(case):
    check(case)
