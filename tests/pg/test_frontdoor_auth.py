"""Sans-IO tests of the client greeting and of the upstream auth building blocks."""

from __future__ import annotations

import base64

import pytest

from flux_proxy.pg import messages as m
from flux_proxy.pg.auth import (
    Handshake,
    ScramClient,
    UpstreamConfig,
    UpstreamError,
    md5_password,
)
from flux_proxy.pg.frontdoor import Cancel, Greeting, Refuse, Reply, Start

STARTUP = m.StartupMessage(parameters=(("user", "app"), ("database", "db")))


def test_ssl_and_gssenc_requests_are_answered_n_then_startup_starts() -> None:
    greeting = Greeting()
    assert greeting.receive(m.GSSENCRequest().encode()) == [Reply(b"N")]
    assert greeting.receive(m.SSLRequest().encode()) == [Reply(b"N")]
    query = m.Query("SELECT 1").encode()
    raw = STARTUP.encode() + query
    assert greeting.receive(raw[:7]) == []
    [start] = greeting.receive(raw[7:])
    assert isinstance(start, Start) and start.startup == STARTUP and start.rest == query


def test_bytes_pipelined_after_ssl_request_are_refused() -> None:
    [refuse] = Greeting().receive(m.SSLRequest().encode() + STARTUP.encode())
    assert isinstance(refuse, Refuse) and "after SSLRequest" in refuse.message


def test_direct_tls_client_hello_is_refused_clearly() -> None:
    [refuse] = Greeting().receive(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    assert isinstance(refuse, Refuse) and "direct TLS" in refuse.message


def test_garbage_and_bad_versions_are_refused() -> None:
    [bad_length] = Greeting().receive(b"\xff\xff\xff\xff")
    assert isinstance(bad_length, Refuse) and "invalid startup packet length" in bad_length.message
    [v2] = Greeting().receive(b"\0\0\0\x08\0\x02\0\0")
    assert isinstance(v2, Refuse) and "unsupported frontend protocol 2.0" in v2.message
    [no_user] = Greeting().receive(m.StartupMessage(parameters=(("database", "x"),)).encode())
    assert isinstance(no_user, Refuse) and no_user.sqlstate == "28000"


def test_cancel_request_is_handed_over() -> None:
    cancel = m.CancelRequest(12, b"\1\2\3\4")
    assert Greeting().receive(cancel.encode()) == [Cancel(cancel)]


def test_url_settings() -> None:
    config = UpstreamConfig.from_url(
        "postgresql://us%40er:p%3Ass@db.example:6543/my%20db?sslmode=verify-full"
        "&sslrootcert=/ca.pem&application_name=flux&connect_timeout=3")
    assert (config.host, config.port, config.user, config.password, config.database) == (
        "db.example", 6543, "us@er", "p:ss", "my db")
    assert (config.sslmode, config.sslrootcert, config.connect_timeout) == (
        "verify-full", "/ca.pem", 3.0)
    assert config.startup_parameters({"user": "client", "database": "other",
                                      "client_encoding": "UTF8"}) == {
        "application_name": "flux", "user": "us@er", "database": "my db",
        "client_encoding": "UTF8"}
    assert UpstreamConfig.from_url("postgres://h/d").sslmode == "prefer"
    socket = UpstreamConfig.from_url("postgresql:///db?host=/run/pg&port=5433")
    assert socket.unix_socket == "/run/pg/.s.PGSQL.5433"
    with pytest.raises(ValueError, match="sslmode"):
        UpstreamConfig.from_url("postgresql://h/d?sslmode=bogus")


def test_md5_password_matches_postgres_formula() -> None:
    # 'md5' || md5(md5('secret' || 'user') || salt); the auth matrix proves it against a server
    assert md5_password("user", "secret", b"salt") == "md5440c573f34f2e2f3ff4b6dbdd8a2686b"


def test_scram_sha_256_rfc7677_vector() -> None:
    client = ScramClient("pencil", nonce="rOprNGfwEbeRWgbNEkqO")
    client.first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO"  # the RFC's vector names the user
    server_first = (b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                    b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    final = client.final_message(server_first)
    assert final == (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                     b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    client.verify_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
    with pytest.raises(UpstreamError, match="signature"):
        client.verify_final(b"v=" + base64.b64encode(b"x" * 32))


def test_handshake_relays_upstream_error_and_collects_parameters() -> None:
    config = UpstreamConfig.from_url("postgresql://u:pw@h/d")
    hs = Handshake(config, config.startup_parameters({}))
    assert m.StartupMessage(parameters=(("user", "u"), ("database", "d"))).encode() == \
        hs.startup_message()
    reply = hs.receive(m.AuthenticationMD5Password(b"salt").encode())
    assert reply == m.PasswordMessage(md5_password("u", "pw", b"salt")).encode()
    assert hs.receive(m.AuthenticationOk().encode()) == b""
    hs.receive(m.ParameterStatus("server_version", "15").encode())
    hs.receive(m.BackendKeyData(9, b"keyy").encode())
    hs.receive(m.ReadyForQuery("I").encode())
    assert hs.result is not None and hs.result.backend_key == m.BackendKeyData(9, b"keyy")
    assert hs.result.parameter_status == [m.ParameterStatus("server_version", "15").encode()]
    failing = Handshake(config, {"user": "u"})
    error = m.ErrorResponse((("S", "FATAL"), ("C", "28P01"),
                             ("M", 'password authentication failed for user "u"')))
    with pytest.raises(UpstreamError) as info:
        failing.receive(error.encode())
    assert info.value.error_frame == error.encode()
    with pytest.raises(UpstreamError, match="unsupported authentication method"):
        Handshake(config, {"user": "u"}).receive(m.AuthenticationGSS().encode())
    no_password = UpstreamConfig.from_url("postgresql://u@h/d")
    with pytest.raises(UpstreamError, match="has none"):
        Handshake(no_password, {"user": "u"}).receive(
            m.AuthenticationCleartextPassword().encode())
