"""The fast float encoding produces exactly the messages protobuf itself would."""
from __future__ import annotations

import numpy as np
import pytest

from percolate.reading.v1 import reading_pb2 as pb
from reading_frontend import wire


@pytest.mark.parametrize("length", [0, 1, 31, 32, 384, 5000])
def test_packed_floats_equal_the_repeated_field(length):
    values = np.random.default_rng(length).standard_normal(length).astype(np.float32)
    fast = pb.Chunk(ordinal=3)
    fast.MergeFromString(wire.packed_floats(pb.Chunk.EMBEDDING_FIELD_NUMBER, values))
    slow = pb.Chunk(ordinal=3, embedding=values.tolist())
    assert fast == slow
    assert fast.SerializeToString() == slow.SerializeToString()


def test_nested_messages_round_trip():
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
    response = pb.EmbedResponse(model="m", dimensions=4)
    response.MergeFromString(b"".join(
        wire.length_delimited(3, wire.packed_floats(1, v) + pb.Embedding(token_count=i).SerializeToString())
        for i, v in enumerate(vectors)))
    assert [list(e.values) for e in response.embeddings] == vectors.tolist()
    assert [e.token_count for e in response.embeddings] == [0, 1, 2]
