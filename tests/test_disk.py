"""Full disks: etcd out of quota refuses writes with a clear error and nothing half
written; a node whose log disk is full fails the attempt saying so and keeps serving."""
from __future__ import annotations

import os
import subprocess
import time
import uuid

import pytest

import shoal
from shoal.errors import StoreFull
from shoal.model import TaskRecord, TaskSpec, new_ids
from shoal.store import Store
from shoal.cluster.etcd import EtcdConfig

from conftest import EtcdProcess


class SmallEtcd(EtcdProcess):
    def __init__(self, root):
        super().__init__(root)
        self.cfg = EtcdConfig(data_dir=str(root / "data"), client_port=self.cfg.client_port,
                              peer_port=self.cfg.peer_port, quota_bytes=2 * 1024 * 1024)


async def test_etcd_out_of_space_is_a_clear_error_and_changes_nothing(tmp_path):
    proc = SmallEtcd(tmp_path)
    proc.start()
    store = Store([proc.url], prefix=f"/t-{uuid.uuid4().hex[:6]}/", retry_for_s=5)
    try:
        await store.connect(wait_s=5)
        payload = {"PAD": "x" * 200_000}
        with pytest.raises(StoreFull, match="quota-backend-bytes"):
            for _ in range(200):
                recs = [TaskRecord(id=i, spec=TaskSpec(command=["true"], env=payload), submitted_at=time.time())
                        for i in new_ids(1)]
                await store.tasks.submit(recs)
        # the refused task is not there, and reads still work
        found, _ = await store.tasks.get_tasks([recs[0].id])
        assert found == {}
    finally:
        await store.close()
        proc.stop()


@pytest.fixture
def tiny_fs(tmp_path):
    """A 256 KiB tmpfs we mount for the test (needs root, as on this project's machines)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.cluster
def test_full_log_disk_fails_the_attempt_with_the_reason(make_cluster, tiny_fs):
    cluster = make_cluster(nodes=1)
    node = cluster.add_node("tiny", node_args=["--labels", "tiny", "--home", str(tiny_fs)])
    with open(tiny_fs / "filler", "wb") as f:
        try:
            f.write(b"\0" * 1024 * 1024)
        except OSError:
            pass
    with shoal.connect(node["api"]) as c:
        rec = c.wait(c.submit("seq 1 100000", labels=["tiny"]).id, timeout=60)
        assert rec.state.value == "failed"
        assert "log disk" in rec.reason and "is full" in rec.reason
        (tiny_fs / "filler").unlink()
        ok = c.wait(c.submit(["echo", "fine"], labels=["tiny"]).id, timeout=60)
        assert ok.state.value == "succeeded" and ok.stdout_tail == "fine\n"
