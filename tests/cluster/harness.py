"""Helpers of the multi-node Ray tests: the default worker nodes, TLS files for them, driver code.

The cluster itself is :class:`demo.raycluster.LocalRayCluster` (benchmarks use it too); this module
holds what only the tests need.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from demo.raycluster import NodeSpec, RayTls, ray_cli
from tests.pki import VALID_FOR, _name, _write_key

__all__ = [
    "AUTH_REFUSED",
    "CONNECT",
    "DEFAULT_WORKERS",
    "WHERE_ACTOR",
    "make_node_tls",
    "require_ray_cli",
    "worker_specs",
]

DEFAULT_WORKERS: Mapping[str, Mapping[str, float]] = {
    "ingress-a": {"ingress": 1, "pacsai_cell_a": 1},
    "model-b": {"model": 1, "ingress": 1, "pacsai_cell_b": 1},
}
"""Worker node name -> custom resources of the ``ray_cluster`` fixture (the head has none)."""

AUTH_REFUSED = "InvalidAuthToken: Authentication token is missing or incorrect"
"""What Ray 2.60 says (``ray.exceptions.AuthenticationError``) when the GCS or a raylet refuses a
call for a missing or wrong token."""

CONNECT = "import ray\nray.init(logging_level='ERROR', log_to_driver=False)\n"
"""Driver code that connects to the cluster named by ``RAY_ADDRESS`` (set by ``driver_env``)."""

WHERE_ACTOR = """
@ray.remote(num_cpus=0)
class Where:
    def node(self):
        return ray.get_runtime_context().get_node_id()
"""
"""An actor that says which node it runs on (no CPU, so placement depends on custom resources only)."""


def require_ray_cli() -> None:
    """Skip the test when the ``ray`` CLI is missing (the one reason these tests may skip)."""
    if ray_cli() is None:
        pytest.skip("the `ray` CLI is not installed (pip package ray[serve], installed by `make setup`)")


def worker_specs(workers: Mapping[str, Mapping[str, float]], num_cpus: int = 2) -> list[NodeSpec]:
    """``NodeSpec``s for ``{name: resources}``."""
    return [NodeSpec(name, dict(resources), num_cpus=num_cpus) for name, resources in workers.items()]


def _sign(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca: bool,
    names: x509.SubjectAlternativeName | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name("Ray test CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALID_FOR)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if names is not None:
        builder = builder.add_extension(names, critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def make_node_tls(directory: Path, ips: Iterable[str]) -> RayTls:
    """A throwaway CA and one node certificate it signed, for Ray's mutual TLS.

    Ray dials its peers by IP (the node IP, and ``127.0.0.1`` for the GCS address the tests use),
    and gRPC checks the certificate against that IP, so the certificate names each IP as well as
    ``localhost`` (``tests.pki``'s certificates name ``localhost`` only). Every Ray process presents
    the same certificate as server and as client: it has no extended key usage, so both are allowed.

    Args:
        directory: A new, test-owned directory (``tmp_path_factory``).
        ips: The IP addresses the certificate must name.

    Returns:
        The PEM files (``ca.crt``, ``node.crt``, ``node.key``).
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _sign("Ray test CA", ca_key, ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    names = x509.SubjectAlternativeName(
        [x509.DNSName("localhost")] + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in dict.fromkeys(ips)]
    )
    node = _sign("ray-node", key, ca_key, ca=False, names=names)
    (directory / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "node.crt").write_bytes(node.public_bytes(serialization.Encoding.PEM))
    _write_key(directory / "node.key", key)
    return RayTls(directory / "ca.crt", directory / "node.crt", directory / "node.key")
