"""Hypothesis strategies for the property-based tests against real servers."""

from __future__ import annotations

from hypothesis import strategies as st

from shared.rpc import inference_pb2 as pb

TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80)
INT32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
REQUESTS = st.builds(
    pb.GenerateRequest,
    request_id=TEXT,
    prompt=TEXT,
    sampling=st.builds(
        pb.SamplingParams,
        max_new_tokens=INT32,
        temperature=st.floats(width=32),
        top_p=st.floats(width=32),
        stop=st.lists(TEXT, max_size=20),
    ),
    route=st.integers(min_value=-1, max_value=5),
    priority=INT32,
    device_id=TEXT,
    draft=st.builds(pb.Draft, token_ids=st.lists(INT32, max_size=10)),
)
