"""RESP2/RESP3: sans-IO codec (`codec`, `values`), session state (`session`), the record proxy
(`proxy`) and the standalone runner (`standalone`)."""

from flux_proxy.resp.codec import Frame, Limits, ProtocolError, RespParser, encode, encode_command
from flux_proxy.resp.proxy import RedisProxy
from flux_proxy.resp.standalone import run_standalone

__all__ = ["Frame", "Limits", "ProtocolError", "RedisProxy", "RespParser", "encode",
           "encode_command", "run_standalone"]
