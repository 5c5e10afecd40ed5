"""The same real-broker fixtures as tests/integration."""

from tests.integration.conftest import *  # noqa: F403
from tests.integration.test_worker import workers  # noqa: F401
