"""Durability: consistent snapshots, restic backups with restic-identical retention, and a warm standby."""

from roost.durability.retention import KeepPolicy, apply_policy
from roost.durability.settings import BackupSettings, ReplicationSettings
from roost.durability.snapshot import Manifest, SnapshotError, take_snapshot, verify_snapshot

__all__ = [
    "BackupSettings",
    "KeepPolicy",
    "Manifest",
    "ReplicationSettings",
    "SnapshotError",
    "apply_policy",
    "take_snapshot",
    "verify_snapshot",
]
