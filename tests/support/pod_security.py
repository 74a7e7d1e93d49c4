"""The Pod Security Standards (Kubernetes v1.32, https://kubernetes.io/docs/concepts/security/
pod-security-standards/) as checks on a pod spec: there is no cluster here to admit or refuse a
pod, so the tests hold the manifests to the published rules themselves.

Each check returns the names of the rules a pod spec breaks. Not covered: Windows-only fields
beyond hostProcess, and the per-version differences before v1.25.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

BASELINE_CAPABILITIES = {
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def _containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        yield from spec.get(key, [])


def _context(container: dict[str, Any]) -> dict[str, Any]:
    context: dict[str, Any] = container.get("securityContext") or {}
    return context


def baseline(spec: dict[str, Any]) -> set[str]:
    broken: set[str] = set()
    pod = spec.get("securityContext") or {}
    if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
        broken.add("host_namespaces")
    if any(v.get("hostPath") is not None for v in spec.get("volumes", [])):
        broken.add("host_path_volumes")
    if (pod.get("windowsOptions") or {}).get("hostProcess"):
        broken.add("host_process")
    if {sysctl["name"] for sysctl in pod.get("sysctls", [])} - SAFE_SYSCTLS:
        broken.add("sysctls")
    contexts = [pod, *(_context(c) for c in _containers(spec))]
    for context in contexts:
        if (context.get("seccompProfile") or {}).get("type") == "Unconfined":
            broken.add("seccomp")
        if (context.get("appArmorProfile") or {}).get("type") == "Unconfined":
            broken.add("apparmor")
        selinux = context.get("seLinuxOptions") or {}
        if selinux.get("type", "") not in SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
            broken.add("selinux")
    for container in _containers(spec):
        context = _context(container)
        if context.get("privileged"):
            broken.add("privileged")
        if (context.get("windowsOptions") or {}).get("hostProcess"):
            broken.add("host_process")
        if set((context.get("capabilities") or {}).get("add", [])) - BASELINE_CAPABILITIES:
            broken.add("capabilities")
        if any(port.get("hostPort", 0) for port in container.get("ports", [])):
            broken.add("host_ports")
        if context.get("procMount", "Default") != "Default":
            broken.add("proc_mount")
    return broken


def restricted(spec: dict[str, Any]) -> set[str]:
    broken = baseline(spec)
    pod = spec.get("securityContext") or {}
    for volume in spec.get("volumes", []):
        if not set(volume) - {"name"} <= RESTRICTED_VOLUMES:
            broken.add("volume_types")
    pod_seccomp = (pod.get("seccompProfile") or {}).get("type")
    for container in _containers(spec):
        context = _context(container)
        if context.get("allowPrivilegeEscalation") is not False:
            broken.add("privilege_escalation")
        non_root = context.get("runAsNonRoot", pod.get("runAsNonRoot"))
        if non_root is not True:
            broken.add("run_as_non_root")
        if context.get("runAsUser", pod.get("runAsUser")) == 0:
            broken.add("run_as_user")
        seccomp = (context.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            broken.add("seccomp")
        capabilities = context.get("capabilities") or {}
        if "ALL" not in capabilities.get("drop", []):
            broken.add("capabilities_drop_all")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            broken.add("capabilities")
    if pod.get("runAsUser") == 0:
        broken.add("run_as_user")
    return broken


LEVELS = {"privileged": lambda spec: set(), "baseline": baseline, "restricted": restricted}
