"""etcd user/password auth and TLS, each on its own etcd started here (the session etcd is plain).

Auth: root user added and auth enabled with the venv's etcdctl; tokens live 1 s
(--auth-token-ttl 1) so that renewal is exercised. TLS: a CA, a server certificate for
127.0.0.1 and a client certificate made with `cryptography`; etcd listens on https, once with
server TLS only and once requiring client certificates.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import shutil
import tempfile
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from activities.switch_store import SwitchStore
from core import procs
from core.etcd import Etcd, EtcdAuthError, EtcdUnavailable
from core.watcher import SwitchWatcher
from tests.support.store_helpers import EtcdProcess, req, run_cli
from tests.support.waits import wait_until


@pytest.fixture(scope="module")
def tmp_dir():
    d = Path(tempfile.mkdtemp(prefix="rbctl-etcd-sec-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


# -- auth ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def auth_etcd(tmp_dir):
    srv = EtcdProcess(tmp_dir / "auth", ["--auth-token-ttl", "1"]).start()
    try:
        for args in (("user", "add", "root:root-pw"), ("user", "add", "bob:bob-pw"), ("auth", "enable")):
            r = srv.etcdctl(*args)
            assert r.returncode == 0, r.stderr
        yield srv
    finally:
        srv.stop()


async def test_auth_user_password_works_end_to_end(auth_etcd):
    async with Etcd([auth_etcd.endpoint], username="root", password="root-pw") as e:
        store = SwitchStore(e, "/perps/")
        await store.init(super_admin="alice")
        seen: list = []
        w = SwitchWatcher(e, "/perps/", on_change=seen.append)
        await w.start()
        try:
            await store.apply(req("alice", {"withdrawal_enabled": False}))
            await wait_until(lambda: any(u.name == "withdrawal_enabled" for u in seen), 5, "the update")
        finally:
            await w.stop()


async def test_wrong_or_missing_credentials_are_refused(auth_etcd):
    async with Etcd([auth_etcd.endpoint], username="root", password="wrong") as e:
        with pytest.raises(EtcdAuthError, match="authentication failed"):
            await e.get("/perps/switches/hedge_enabled")
    async with Etcd([auth_etcd.endpoint]) as e:
        with pytest.raises(EtcdAuthError, match="requires authentication"):
            await e.get("/perps/switches/hedge_enabled")
    async with Etcd([auth_etcd.endpoint], username="bob", password="bob-pw") as e:  # no role, no access
        with pytest.raises(EtcdAuthError, match="permission denied"):
            await e.get("/perps/switches/hedge_enabled")


async def test_expired_token_is_renewed_for_calls_and_watches(auth_etcd):
    async with Etcd([auth_etcd.endpoint], username="root", password="root-pw") as e:
        await e.put("/ttl/a", b"1")
        first = e._token
        # Let the token lapse: etcd drops a simple token TTL (1 s) after its last use, checking once
        # a second. Polling would use it and keep it alive, so this waits out the clock instead.
        await asyncio.sleep(2.2)

        async def first_batch():  # a watch opened with the lapsed token would be refused
            async for evs in e.watch_prefix("/ttl/", 1):
                return evs

        evs = await asyncio.wait_for(first_batch(), 5)
        assert evs[0].kv.value == b"1"
        assert e._token != first, "the client should have authenticated again"
        assert (await e.get("/ttl/a")).value == b"1"


async def test_auth_with_a_dead_first_endpoint(auth_etcd):
    async with Etcd([f"127.0.0.1:{procs.free_port()}", auth_etcd.endpoint], username="root", password="root-pw") as e:
        assert (await e.put("/fo/a", b"1")) > 0
        assert e.endpoint == auth_etcd.endpoint


def test_cli_uses_the_auth_settings(auth_etcd):
    env = {"ROLLBACKCTL_ETCD_ENDPOINTS": auth_etcd.endpoint, "ROLLBACKCTL_ETCD_PREFIX": "/cli-auth/",
           "ROLLBACKCTL_ETCD_USERNAME": "root", "ROLLBACKCTL_ETCD_PASSWORD": "root-pw"}
    r = run_cli("init", "--super-admin", "alice", env=env)
    assert r.code == 0, r.err
    r = run_cli("switch", "get", "hedge_enabled", "--json", env=env)
    assert r.code == 0 and r.json()["value"] is True
    r = run_cli("switch", "list", env={**env, "ROLLBACKCTL_ETCD_PASSWORD": "nope"})
    assert r.code == 3 and "authentication failed" in r.err and "nope" not in r.err
    r = run_cli("switch", "list", env={k: v for k, v in env.items() if "USERNAME" not in k and "PASSWORD" not in k})
    assert r.code == 3 and "ROLLBACKCTL_ETCD_USERNAME" in r.err


# -- TLS -----------------------------------------------------------------------------------------

def _pem_key(k) -> bytes:
    return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def make_pki(d: Path, ca_name: str = "rollbackctl test CA") -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, as PEM files."""
    d.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    valid = dict(not_valid_before=now - datetime.timedelta(minutes=5), not_valid_after=now + datetime.timedelta(days=1))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
    ca = (x509.CertificateBuilder().subject_name(issuer).issuer_name(issuer).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(valid["not_valid_before"])
          .not_valid_after(valid["not_valid_after"])
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))

    def leaf(cn: str, usages, san=None):
        key = ec.generate_private_key(ec.SECP256R1())
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
             .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(valid["not_valid_before"]).not_valid_after(valid["not_valid_after"])
             .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(ca_key, hashes.SHA256()), key

    server, server_key = leaf("127.0.0.1", [ExtendedKeyUsageOID.SERVER_AUTH],
                              [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    client, client_key = leaf("rollbackctl", [ExtendedKeyUsageOID.CLIENT_AUTH])
    files = {
        "ca": ca.public_bytes(serialization.Encoding.PEM),
        "server": server.public_bytes(serialization.Encoding.PEM), "server_key": _pem_key(server_key),
        "client": client.public_bytes(serialization.Encoding.PEM), "client_key": _pem_key(client_key),
    }
    out = {}
    for name, data in files.items():
        (d / f"{name}.pem").write_bytes(data)
        out[name] = d / f"{name}.pem"
    return out


@pytest.fixture(scope="module")
def pki(tmp_dir):
    return make_pki(tmp_dir / "pki")


@pytest.fixture(scope="module")
def tls_etcd(tmp_dir, pki):
    srv = EtcdProcess(tmp_dir / "tls", ["--cert-file", str(pki["server"]), "--key-file", str(pki["server_key"])],
                      scheme="https").start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def mtls_etcd(tmp_dir, pki):
    srv = EtcdProcess(tmp_dir / "mtls", ["--cert-file", str(pki["server"]), "--key-file", str(pki["server_key"]),
                                         "--client-cert-auth", "--trusted-ca-file", str(pki["ca"])],
                      scheme="https").start()
    yield srv
    srv.stop()


async def test_tls_with_a_ca_certificate(tls_etcd, pki):
    async with Etcd([tls_etcd.endpoint], ca_cert=pki["ca"].read_bytes()) as e:
        store = SwitchStore(e, "/perps/")
        await store.init(super_admin="alice")
        seen: list = []
        w = SwitchWatcher(e, "/perps/", on_change=seen.append)
        await w.start()
        try:
            await store.apply(req("alice", {"liquidation_enabled": False}))
            await wait_until(lambda: any(u.name == "liquidation_enabled" for u in seen), 5, "the update")
        finally:
            await w.stop()


async def test_tls_refuses_plaintext_and_a_foreign_ca(tls_etcd, tmp_dir):
    async with Etcd([tls_etcd.endpoint]) as e:
        with pytest.raises(EtcdUnavailable):
            await e.get("/perps/x")
    other = make_pki(tmp_dir / "other-pki", "some other CA")
    async with Etcd([tls_etcd.endpoint], ca_cert=other["ca"].read_bytes()) as e:
        with pytest.raises(EtcdUnavailable, match="(?i)handshake|certificate"):
            await e.get("/perps/x")


async def test_mutual_tls(mtls_etcd, pki):
    async with Etcd([mtls_etcd.endpoint], ca_cert=pki["ca"].read_bytes(), cert=pki["client"].read_bytes(),
                    key=pki["client_key"].read_bytes()) as e:
        await e.put("/m/a", b"1")
        assert (await e.get("/m/a")).value == b"1"
    async with Etcd([mtls_etcd.endpoint], ca_cert=pki["ca"].read_bytes()) as e:  # no client certificate
        with pytest.raises(EtcdUnavailable):
            await e.get("/m/a")


def test_cli_uses_the_tls_settings(mtls_etcd, pki):
    env = {"ROLLBACKCTL_ETCD_ENDPOINTS": mtls_etcd.endpoint, "ROLLBACKCTL_ETCD_PREFIX": "/cli-tls/",
           "ROLLBACKCTL_ETCD_CA_CERT": str(pki["ca"]), "ROLLBACKCTL_ETCD_CERT": str(pki["client"]),
           "ROLLBACKCTL_ETCD_KEY": str(pki["client_key"])}
    r = run_cli("init", "--super-admin", "alice", env=env)
    assert r.code == 0, r.err
    r = run_cli("switch", "list", "--json", env=env)
    assert r.code == 0 and len(r.json()) == 22
    r = run_cli("switch", "list", env={k: v for k, v in env.items() if k not in ("ROLLBACKCTL_ETCD_CERT",
                                                                                "ROLLBACKCTL_ETCD_KEY")})
    assert r.code == 5 and r.err.count("\n") == 1
