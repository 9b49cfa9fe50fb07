"""keel-harness: boot Keel images under QEMU in pytest, one machine or a cluster.

The vocabulary follows the NixOS test driver (``start``, ``wait_for_unit``, ``succeed``,
``fail``, ``shutdown``, ``crash`` ...); the gate follows kola. See ``docs/harness.md``.
"""

from keel_harness.cluster import Cluster
from keel_harness.errors import (
    CommandFailed,
    GateFailure,
    HarnessError,
    QemuError,
    RetryTimeout,
    SshError,
)
from keel_harness.gate import run_gate
from keel_harness.machine import Machine, MachineConfig
from keel_harness.retry import retry

__version__ = "0.1.0"
__all__ = [
    "Cluster",
    "CommandFailed",
    "GateFailure",
    "HarnessError",
    "Machine",
    "MachineConfig",
    "QemuError",
    "RetryTimeout",
    "SshError",
    "retry",
    "run_gate",
]
