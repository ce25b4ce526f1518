"""Property: for arbitrary bodies the gateway never answers 5xx and never forwards an invalid
request. "Invalid" is judged by the simulator's own, independently written validator: anything
the gateway forwards must be accepted there, and anything refused (400) must not arrive."""

from __future__ import annotations

import json
from typing import Any

import httpx
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.support.api import MODEL, SUBMIT_PATH
from tests.support.images import JPEG, PNG, data_uri
from tests.support.simulator import SimulatorProbe
from tests.support.strategies import scalars
from tests.support.tenants import Tenant

json_scalars = scalars(max_text_size=30)
any_json = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
field_values: dict[str, st.SearchStrategy[Any]] = {
    "model": st.sampled_from([MODEL, MODEL, MODEL, "grok-imagine-video-1", "", 15]) | json_scalars,
    "prompt": st.text(min_size=0, max_size=40).filter(lambda s: "#sim" not in s) | json_scalars,
    "duration": st.integers(min_value=-3, max_value=18)
    | st.floats(min_value=0, max_value=20, allow_nan=False)
    | st.sampled_from([1, 15, 10, 2.5, 14.999, 1.0005, "5", True, None]),
    "resolution": st.sampled_from(["480p", "720p", "1080p", "720P", "", 720, None]),
    "aspect_ratio": st.sampled_from(["1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "21:9", 1]),
    "image": st.sampled_from(
        [
            "https://example.com/a.png",
            "http://example.com/b.jpg",
            data_uri("image/png", PNG),
            data_uri("image/png", JPEG),
            "data:image/png;base64,@@@",
            "ftp://example.com/x.png",
            "file-abcdef123",
            "not an image",
            "",
        ]
    )
    | json_scalars,
}
valid_fields: dict[str, st.SearchStrategy[Any]] = {
    "duration": st.integers(min_value=1, max_value=15) | st.sampled_from([1.5, 2.25, 14.999, 15.0]),
    "resolution": st.sampled_from(["480p", "720p"]),
    "aspect_ratio": st.sampled_from(["1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3"]),
    "image": st.sampled_from(
        ["https://example.com/a.png", data_uri("image/png", PNG), "file-abcdef123"]
    ),
}
nonblank_prompt = st.text(min_size=1, max_size=40).filter(lambda s: s.strip() and "#sim" not in s)
valid_body = st.fixed_dictionaries(
    {"model": st.just(MODEL), "prompt": nonblank_prompt}, optional=valid_fields
)
# One field of a valid body replaced by anything: the near misses where validators disagree.
near_miss_body = st.tuples(valid_body, st.sampled_from(sorted(field_values))).flatmap(
    lambda pair: field_values[pair[1]].map(lambda value: {**pair[0], pair[1]: value})
)
structured_body = st.fixed_dictionaries(
    {}, optional={**field_values, "seed": json_scalars, "Model": json_scalars}
).map(lambda d: json.dumps(d).encode())
bodies = st.one_of(
    valid_body.map(lambda d: json.dumps(d).encode()),
    near_miss_body.map(lambda d: json.dumps(d).encode()),
    structured_body,
    any_json.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=64),
)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(raw=bodies)
def test_arbitrary_bodies_never_5xx_and_never_forward_invalid(
    gateway: httpx.Client, simulator: SimulatorProbe, tenant: Tenant, raw: bytes
) -> None:
    seen_before = len(simulator.submits())
    response = gateway.post(
        SUBMIT_PATH, content=raw, headers={**tenant.headers, "Content-Type": "application/json"}
    )
    assert response.status_code < 500, response.text
    event(f"gateway answered {response.status_code}")
    forwarded = simulator.submits()[seen_before:]
    if response.status_code == 400:
        assert response.json()["error"]["type"] == "invalid_request_error"
        assert forwarded == []
    else:
        assert response.status_code == 200, response.text
        assert [r["status"] for r in forwarded] == [200]  # the upstream's validator agrees
