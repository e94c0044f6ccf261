"""Issue 11, point 7: the probes and /metrics answer any method, as app.py says."""

from __future__ import annotations

import pytest

from tests.support import Api


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_probes_and_metrics_answer_any_method(api: Api, path: str, method: str) -> None:
    response = api.client.request(method, path)
    assert response.status_code == 200, response.text
