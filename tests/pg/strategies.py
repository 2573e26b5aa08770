"""Hypothesis strategies: one per Postgres message type, valid by construction."""

from __future__ import annotations

from hypothesis import strategies as st

from flux_proxy.pg import messages as m

text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
               max_size=40)
u32 = st.integers(0, 2**32 - 1)
i16 = st.integers(-(2**15), 2**15 - 1)
i32 = st.integers(-(2**31), 2**31 - 1)
blob = st.binary(max_size=60)
nullable = st.none() | blob
formats = st.lists(st.integers(0, 1), max_size=4).map(tuple)
values = st.lists(nullable, max_size=5).map(tuple)
key = st.binary(min_size=4, max_size=256)
oids = st.lists(u32, max_size=5).map(tuple)
pairs = st.lists(st.tuples(text.filter(bool), text), max_size=4).map(tuple)
error_fields = st.lists(st.tuples(st.sampled_from("SVCMDHPpqWstcdnFLR"), text),
                        max_size=6).map(tuple)
field_description = st.builds(m.FieldDescription, text, u32, i16, u32, i16, i32,
                              st.integers(0, 1))

startup_messages = st.one_of(
    st.builds(m.StartupMessage, st.sampled_from([m.PROTOCOL_3_0, m.PROTOCOL_3_2]), pairs),
    st.just(m.SSLRequest()),
    st.just(m.GSSENCRequest()),
    st.builds(m.CancelRequest, u32, key),
)

frontend_messages = st.one_of(
    st.builds(m.Query, text),
    st.builds(m.Parse, text, text, oids),
    st.builds(m.Bind, text, text, formats, values, formats),
    st.builds(m.Describe, st.sampled_from("SP"), text),
    st.builds(m.Execute, text, u32),
    st.just(m.Sync()), st.just(m.Flush()), st.just(m.Terminate()),
    st.builds(m.Close, st.sampled_from("SP"), text),
    st.builds(m.CopyData, blob), st.just(m.CopyDone()), st.builds(m.CopyFail, text),
    st.builds(m.FunctionCall, u32, formats, values, st.integers(0, 1)),
)

# 'p' bodies depend on context; each is checked with its decoding hint.
auth_responses = st.one_of(
    st.tuples(st.just("password"), st.builds(m.PasswordMessage, text)),
    st.tuples(st.just("sasl_initial"),
              st.builds(m.SASLInitialResponse, text.filter(bool), st.none() | blob)),
    st.tuples(st.just("sasl"), st.builds(m.SASLResponse, blob)),
    st.tuples(st.just("gss"), st.builds(m.GSSResponse, blob)),
)

backend_messages = st.one_of(
    st.just(m.AuthenticationOk()), st.just(m.AuthenticationKerberosV5()),
    st.just(m.AuthenticationCleartextPassword()),
    st.builds(m.AuthenticationMD5Password, st.binary(min_size=4, max_size=4)),
    st.just(m.AuthenticationGSS()), st.builds(m.AuthenticationGSSContinue, blob),
    st.just(m.AuthenticationSSPI()),
    st.builds(m.AuthenticationSASL, st.lists(text.filter(bool), max_size=3).map(tuple)),
    st.builds(m.AuthenticationSASLContinue, blob), st.builds(m.AuthenticationSASLFinal, blob),
    st.builds(m.ParameterStatus, text, text),
    st.builds(m.BackendKeyData, u32, key),
    st.builds(m.ReadyForQuery, st.sampled_from("ITE")),
    st.builds(m.RowDescription, st.lists(field_description, max_size=4).map(tuple)),
    st.builds(m.DataRow, values),
    st.builds(m.CommandComplete, text),
    st.just(m.EmptyQueryResponse()),
    st.builds(m.ErrorResponse, error_fields), st.builds(m.NoticeResponse, error_fields),
    st.just(m.ParseComplete()), st.just(m.BindComplete()), st.just(m.CloseComplete()),
    st.just(m.NoData()), st.just(m.PortalSuspended()),
    st.builds(m.ParameterDescription, oids),
    st.builds(m.CopyInResponse, st.integers(0, 1), formats),
    st.builds(m.CopyOutResponse, st.integers(0, 1), formats),
    st.builds(m.CopyBothResponse, st.integers(0, 1), formats),
    st.builds(m.CopyData, blob), st.just(m.CopyDone()),
    st.builds(m.NotificationResponse, u32, text, text),
    st.builds(m.NegotiateProtocolVersion, u32, st.lists(text, max_size=3).map(tuple)),
    st.builds(m.FunctionCallResponse, nullable),
)
