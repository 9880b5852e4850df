"""docker (a private dockerd) and podman, as the end-to-end tests drive them.

Both keep everything under their own temporary directory, use the vfs storage
driver (no overlay mounts needed) and never touch the host's networking:
dockerd runs with `--iptables=false --ip6tables=false --bridge=none`, and only
pulls are ever asked of either.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.e2e.services import ServiceError, _Service, require_binary, run_command


class Dockerd(_Service):
    """A private `dockerd` (root required) with its own data root, exec root and socket."""

    name = "dockerd"
    uses_tcp_port = False
    startup_timeout = 60.0

    def __init__(self, insecure_registries: tuple[str, ...] = ()) -> None:
        self.binary = require_binary("dockerd")
        self.client = require_binary("docker")
        if os.geteuid() != 0:
            raise ServiceError("dockerd must run as root")
        super().__init__()
        self.insecure = insecure_registries
        self.socket = self.tmpdir / "docker.sock"
        # dockerd's exec root holds its containerd socket: unix paths stay short.
        self.exec_root = Path(tempfile.mkdtemp(prefix="pse-", dir="/tmp"))

    def _command(self) -> list[str]:
        command = [
            self.binary,
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            "--storage-driver=vfs",
            f"--data-root={self.tmpdir / 'data'}",
            f"--exec-root={self.exec_root}",
            f"--pidfile={self.tmpdir / 'docker.pid'}",
            f"--host=unix://{self.socket}",
        ]
        return command + [f"--insecure-registry={host}" for host in self.insecure]

    def _ready(self) -> bool:
        return self.socket.exists() and self.docker("version", check=False).returncode == 0

    def docker(
        self, *args: str, check: bool = True, timeout: float = 300.0
    ) -> subprocess.CompletedProcess[str]:
        return run_command(
            [self.client, "--host", f"unix://{self.socket}", *args], check=check, timeout=timeout
        )

    def remove_all_images(self) -> None:
        """`docker rmi -f` of every image, and of the manifests docker 20.10 caches in its
        containerd's content store (collected later, at a time of containerd's choosing:
        until then a pull HEADs the tag and skips the GET), so the next pull fetches."""
        images = self.docker("images", "--all", "--quiet").stdout.split()
        if images:
            self.docker("rmi", "--force", *sorted(set(images)))
        left = self.docker("images", "--all", "--quiet").stdout.split()
        if left:
            raise ServiceError(f"docker still holds images {left}")
        cached = self.ctr("content", "ls", "--quiet").stdout.split()
        if cached:
            self.ctr("content", "rm", *cached)

    def ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`ctr` against the containerd this dockerd manages, in its `moby` namespace."""
        socket = self.exec_root / "containerd" / "containerd.sock"
        return run_command(
            [require_binary("ctr"), "--address", str(socket), "--namespace", "moby", *args]
        )

    def close(self) -> None:
        super().close()
        shutil.rmtree(self.exec_root, ignore_errors=True)

    def __enter__(self) -> Dockerd:
        self.start()
        return self


class Podman:
    """`podman` with its own storage root and run root, the vfs driver and no systemd."""

    def __init__(self) -> None:
        self.binary = require_binary("podman")
        self.tmpdir = Path(tempfile.mkdtemp(prefix="pullstats-podman-"))

    def podman(
        self, *args: str, check: bool = True, timeout: float = 300.0
    ) -> subprocess.CompletedProcess[str]:
        return run_command(
            [
                self.binary,
                "--root",
                str(self.tmpdir / "root"),
                "--runroot",
                str(self.tmpdir / "run"),
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
                *args,
            ],
            check=check,
            timeout=timeout,
        )

    def close(self) -> None:
        self.podman("system", "reset", "--force", check=False)
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    def __enter__(self) -> Podman:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
