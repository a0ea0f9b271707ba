"""The OpenAI endpoint is no weak door: vLLM's own `--api-key` and TLS options work with `--executor helix`."""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import ssl
import urllib.error
import urllib.request

import pytest
from serve_helpers import COMMON, write_plan

from vllm_helix.vllm_server import VllmServer

pytestmark = [pytest.mark.engine, pytest.mark.slow]
API_KEY = "helix-test-key-0123"
ONE_NODE = {"name": "solo", "coordinator": {"address": "local"},
            "nodes": [{"name": "solo", "gpu": "cpu", "vram": "4GB", "address": "local"}],
            "default_link": {"bandwidth": "10Gbps", "latency": "0.1ms"}}


def self_signed(tmp_path):
    """A certificate for 127.0.0.1 signed by its own key (cryptography, a vLLM dependency)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    return tmp_path / "key.pem", tmp_path / "cert.pem"


def complete(url, model, context, api_key=None):
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {api_key}"} if api_key else {})
    body = {"model": str(model), "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
    request = urllib.request.Request(url + "/completions", json.dumps(body).encode(), headers)
    with urllib.request.urlopen(request, timeout=300, context=context) as response:
        return json.load(response)


def test_api_key_and_tls_with_the_helix_executor(tiny_llama_path, tmp_path):
    plan = write_plan(tmp_path, tiny_llama_path, ONE_NODE, {"solo": [0, 8]})
    key, cert = self_signed(tmp_path)
    args = ["--executor", "helix", "--helix-plan", str(plan), "--api-key", API_KEY, "--ssl-keyfile", str(key),
            "--ssl-certfile", str(cert), *COMMON]
    trusted = ssl.create_default_context(cafile=str(cert))  # verifies the server's certificate
    with VllmServer(tiny_llama_path, args, log_path=tmp_path / "serve.log") as url:
        assert url.startswith("https://")
        out = complete(url, tiny_llama_path, trusted, API_KEY)
        assert out["choices"][0]["finish_reason"] in ("length", "stop") and out["usage"]["completion_tokens"] > 0
        for wrong in (None, "not-the-key"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                complete(url, tiny_llama_path, trusted, wrong)
            assert refused.value.code == 401
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            complete(url, tiny_llama_path, ssl.create_default_context(), API_KEY)  # not trusted by default
        with pytest.raises((OSError, http.client.HTTPException)):
            complete(url.replace("https://", "http://"), tiny_llama_path, None, API_KEY)  # no plain HTTP
