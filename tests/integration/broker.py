"""A real mosquitto broker for integration tests.

`Broker` writes a mosquitto.conf into a temporary directory, picks a free loopback port and
runs /usr/sbin/mosquitto as a subprocess. It can add a TLS listener (a throwaway CA and a
server certificate made here with `cryptography`), a password file (made with
`mosquitto_passwd -U`) and an ACL file. stop()/kill()/restart() keep the same port so clients
can reconnect, which is what the reconnect tests need.

Used by the MQTT tests and by any other stage that needs a broker (fleet, service e2e):

    broker = Broker(tmp_path, tls=True, users={"dev": "pw"}, acl=ACL_TEXT)
    broker.start()
    ... connect to broker.host:broker.port with ca_certs=broker.ca_file ...
    broker.stop()
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def _find(name: str, fallback: str) -> str | None:
    return shutil.which(name) or (fallback if Path(fallback).exists() else None)


# /usr/sbin is not on every user's PATH, hence the fallbacks.
MOSQUITTO = os.environ.get("VOXGATE_TEST_MOSQUITTO") or _find("mosquitto", "/usr/sbin/mosquitto")
MOSQUITTO_PASSWD = _find("mosquitto_passwd", "/usr/bin/mosquitto_passwd")

SKIP_REASON = (
    "mosquitto is not installed (apt-get install mosquitto mosquitto-clients; "
    "or set $VOXGATE_TEST_MOSQUITTO to the broker binary)"
)


class BrokerError(RuntimeError):
    pass


def have_mosquitto() -> bool:
    return MOSQUITTO is not None and MOSQUITTO_PASSWD is not None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class TestCA:
    """A throwaway certificate authority; issues server and client certificates into `directory`."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path, name: str = "voxgate test CA") -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.cert_file = directory / "ca.crt"
        self.cert_file.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        self._serialization = serialization

    def issue(
        self, name: str, *, server: bool, hosts: tuple[str, ...] = ("localhost", "127.0.0.1")
    ) -> tuple[Path, Path]:
        """Write <name>.crt and <name>.key (0600) signed by this CA; returns their paths."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            sans: list[x509.GeneralName] = []
            for h in hosts:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(h)))
                except ValueError:
                    sans.append(x509.DNSName(h))
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        cert_file = self.directory / f"{name}.crt"
        key_file = self.directory / f"{name}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        key_file.chmod(0o600)
        return cert_file, key_file


class Broker:
    """One mosquitto process on a fixed loopback port, configured from the arguments.

    tls:                 the listener speaks TLS with a certificate from a throwaway CA
                         (`ca_file` is what clients trust).
    require_client_cert: TLS clients must show a certificate from the same CA
                         (`client_cert(name)` makes one).
    users:               {user: password}; when given, anonymous clients are refused.
    acl:                 mosquitto ACL file text (`user NAME` / `topic read|write|readwrite T`
                         / `pattern ...` lines); when None every user may use every topic.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        directory: Path,
        *,
        tls: bool = True,
        require_client_cert: bool = False,
        users: dict[str, str] | None = None,
        acl: str | None = None,
        port: int | None = None,
        extra_conf: str = "",
    ) -> None:
        if not have_mosquitto():
            raise BrokerError(SKIP_REASON)
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.tls = tls
        self.require_client_cert = require_client_cert
        self.users = dict(users or {})
        self.acl = acl
        self.port = port or free_port(self.host)
        self.extra_conf = extra_conf
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_file = self.directory / "mosquitto.log"
        self.conf_file = self.directory / "mosquitto.conf"
        self.ca: TestCA | None = None
        self.ca_file: Path | None = None
        self.starts = 0
        self._write_files()

    # -- files -------------------------------------------------------------------------------

    def _write_files(self) -> None:
        lines = [
            f"listener {self.port} {self.host}",
            "persistence false",
            f"log_dest file {self.log_file}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp true",
        ]
        if os.geteuid() == 0:
            # Started as root, mosquitto drops to user 'mosquitto', which cannot read the
            # 0600 files in the test's temp dir. "root" tells it not to drop.
            lines.append("user root")
        if self.tls:
            self.ca = TestCA(self.directory / "pki")
            self.ca_file = self.ca.cert_file
            cert, key = self.ca.issue("server", server=True)
            lines += [
                f"cafile {self.ca_file}",
                f"certfile {cert}",
                f"keyfile {key}",
                "tls_version tlsv1.2",
            ]
            if self.require_client_cert:
                lines.append("require_certificate true")
        if self.users:
            pw = self.directory / "passwd"
            pw.write_text("".join(f"{u}:{p}\n" for u, p in self.users.items()))
            pw.chmod(0o600)
            subprocess.run(
                [str(MOSQUITTO_PASSWD), "-U", str(pw)],
                check=True,
                capture_output=True,
                timeout=30,
            )
            lines += ["allow_anonymous false", f"password_file {pw}"]
        else:
            lines.append("allow_anonymous true")
        if self.acl is not None:
            acl_file = self.directory / "acl"
            acl_file.write_text(self.acl.strip() + "\n")
            acl_file.chmod(0o600)
            lines.append(f"acl_file {acl_file}")
        if self.extra_conf:
            lines.append(self.extra_conf.strip())
        self.conf_file.write_text("\n".join(lines) + "\n")

    def client_cert(self, name: str) -> tuple[Path, Path]:
        """A client certificate + key signed by the broker's CA (for mutual TLS)."""
        if self.ca is None:
            raise BrokerError("client certificates need a TLS broker (tls=True)")
        return self.ca.issue(name, server=False)

    def password_file(self, user: str) -> Path:
        """A 0600 file holding `user`'s password, as a device would keep it."""
        path = self.directory / f"{user}.password"
        path.write_text(self.users[user] + "\n")
        path.chmod(0o600)
        return path

    def mqtt_settings(self, user: str | None = None) -> dict[str, object]:
        """The `mqtt:` config section (as a dict) that reaches this broker as `user`."""
        out: dict[str, object] = {"host": self.host, "port": self.port}
        if user is not None:
            out["username"] = user
            out["password_file"] = str(self.password_file(user))
        if self.tls:
            out["tls"] = {"ca_file": str(self.ca_file)}
        return out

    # -- process -----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self, timeout: float = 10.0) -> Broker:
        if self.running:
            return self
        self.proc = subprocess.Popen(
            [str(MOSQUITTO), "-c", str(self.conf_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.starts += 1
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise BrokerError(
                    f"mosquitto exited with {self.proc.returncode} on start:\n{err}\n"
                    f"{self.log_text()[-2000:]}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise BrokerError(f"mosquitto did not listen on port {self.port} in {timeout} s")
            time.sleep(0.02)

    def _wait_port_free(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    pass
            except OSError:
                return
            time.sleep(0.02)

    def stop(self, timeout: float = 5.0) -> None:
        """Graceful stop (SIGTERM): the broker closes client sockets cleanly."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self._close()

    def kill(self) -> None:
        """Abrupt stop (SIGKILL), like a broker crash or a pulled cable on the broker side."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._close()

    def restart(self, *, hard: bool = False, down_s: float = 0.0) -> Broker:
        """Stop (SIGKILL when `hard`), stay down `down_s` seconds, start on the same port."""
        if hard:
            self.kill()
        else:
            self.stop()
        if down_s:
            time.sleep(down_s)
        return self.start()

    def _close(self) -> None:
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None
        self._wait_port_free()

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# Users and ACL most tests want: the device publishes under its prefix, a lock controller only
# reads, an admin may send commands, an intruder may only read status, Home Assistant reads.
STANDARD_USERS = {
    "device": "device-pass-1",
    "lock": "lock-pass-2",
    "admin": "admin-pass-3",
    "intruder": "intruder-pass-4",
    "ha": "ha-pass-5",
}


def standard_acl(prefix: str = "voxgate", discovery: str = "homeassistant") -> str:
    return f"""
user device
topic readwrite {prefix}/#
topic readwrite {discovery}/#

user lock
topic read {prefix}/#
topic write {prefix}/+/decision/refused

user admin
topic read {prefix}/#
topic write {prefix}/+/cmd/#

user intruder
topic read {prefix}/+/status

user ha
topic read {prefix}/#
topic read {discovery}/#
"""
