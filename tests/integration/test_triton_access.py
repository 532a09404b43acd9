"""Triton has no authentication of its own. Started as the deployments start it, every API but health answers only
calls that carry its access token: without it, anyone who reached its ports could run the models flat out, change its
log and trace settings, load and unload models (where the model control mode allows it, as docker-compose.yml's
does), or read which shared-memory regions the workers registered and register them again under a name of its own
to have Triton write into a worker's pixels or answers."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

from services.preprocessing.triton_models import TRITON_ACCESS_KEY

pytestmark = pytest.mark.integration


def http(stack, method: str, path: str, body: dict | None = None, token: str = "") -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{stack.triton.http_port}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={TRITON_ACCESS_KEY: token} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as refused:
        return refused.code


def test_without_the_token_triton_answers_health_and_nothing_else(stack):
    model = stack.triton.model_names[0]
    calls = [("GET", f"/v2/models/{model}", None), ("GET", f"/v2/models/{model}/config", None),
             ("POST", f"/v2/models/{model}/infer", {"inputs": []}), ("POST", "/v2/repository/index", {}),
             ("POST", f"/v2/repository/models/{model}/unload", {}), ("GET", "/v2/logging", None),
             ("POST", "/v2/logging", {"log_verbose_level": 3}), ("POST", "/v2/trace/setting", {"trace_rate": "1"}),
             ("GET", "/v2/systemsharedmemory/status", None), ("GET", "/v2/models/stats", None),
             ("POST", "/v2/systemsharedmemory/region/mine/register", {"key": "/theirs", "offset": 0, "byte_size": 8})]
    for method, path, body in calls:
        assert http(stack, method, path, body) == 403, (method, path)
    assert http(stack, "GET", "/v2/health/ready") == 200 and http(stack, "GET", f"/v2/models/{model}/ready") == 200
    assert http(stack, "GET", "/v2/logging", token=stack.triton.access_token) == 200
    assert http(stack, "GET", "/v2/logging", token="not-the-token") == 403

    anyone = triton_grpc.InferenceServerClient(stack.triton.grpc_url)
    try:
        assert anyone.is_server_ready() and anyone.is_model_ready(model)
        tensor = triton_grpc.InferInput("x", [1, 1], "UINT8")
        tensor.set_data_from_numpy(np.zeros((1, 1), np.uint8))
        refused = [lambda: anyone.get_model_metadata(model), lambda: anyone.get_model_config(model),
                   lambda: anyone.get_model_repository_index(), lambda: anyone.unload_model(model),
                   lambda: anyone.get_system_shared_memory_status(), lambda: anyone.get_log_settings(),
                   lambda: anyone.update_log_settings({"log_verbose_level": 3}),
                   lambda: anyone.register_system_shared_memory("mine", "/theirs", 8),
                   lambda: anyone.get_inference_statistics(), lambda: anyone.infer(model, [tensor])]
        for call in refused:
            with pytest.raises(InferenceServerException) as raised:
                call()
            assert "restricted" in raised.value.message(), raised.value
    finally:
        anyone.close()
    with stack.triton.client() as ours:  # the services' calls carry it
        assert ours.get_model_metadata(model, as_json=True)["name"] == model
        assert ours.get_system_shared_memory_status(as_json=True) is not None
