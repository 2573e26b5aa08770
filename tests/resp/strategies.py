"""Hypothesis strategies for every RESP value type and for client commands."""

from __future__ import annotations

from hypothesis import strategies as st

from flux_proxy.resp.values import (
    Array,
    Attribute,
    BigNumber,
    Boolean,
    BulkError,
    BulkString,
    Double,
    Integer,
    Map,
    Null,
    NullKind,
    Push,
    RespValue,
    Set,
    SimpleError,
    SimpleString,
    VerbatimString,
)

line_bytes = st.binary(max_size=20).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
binary = st.binary(max_size=40)

double_texts = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(Double.of),
    st.sampled_from([b"1", b"-0", b"1.5e10", b"3.", b".5", b"-1E-3", b"+2", b"inf", b"-inf",
                     b"nan"]).map(lambda t: Double(t, float(t))),
)

scalars: st.SearchStrategy[RespValue] = st.one_of(
    line_bytes.map(SimpleString),
    line_bytes.map(SimpleError),
    st.integers(-(2**63), 2**63 - 1).map(Integer),
    binary.map(BulkString),
    st.sampled_from(list(NullKind)).map(Null),
    st.booleans().map(Boolean),
    double_texts,
    st.integers(-(10**60), 10**60).map(BigNumber),
    binary.map(BulkError),
    st.tuples(st.binary(min_size=3, max_size=3), binary).map(lambda t: VerbatimString(*t)),
)


def _aggregates(children: st.SearchStrategy[RespValue]) -> st.SearchStrategy[RespValue]:
    items = st.lists(children, max_size=4).map(tuple)
    pairs = st.lists(st.tuples(children, children), max_size=3).map(tuple)
    return st.one_of(
        items.map(Array),
        items.map(Set),
        items.map(Push),
        pairs.map(Map),
        st.tuples(pairs, children).map(lambda t: Attribute(*t)),
    )


values: st.SearchStrategy[RespValue] = st.recursive(scalars, _aggregates, max_leaves=12)

command_args = st.lists(st.binary(max_size=16), min_size=1, max_size=5)
inline_tokens = st.lists(
    st.text("abcdefghijklmnopqrstuvwxyz0123456789:_-", min_size=1, max_size=8).map(str.encode),
    min_size=1, max_size=4)
