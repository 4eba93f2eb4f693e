"""When the trainer calls jax.distributed.initialize by itself: launch environments simulated (env vars, a fake TPU
metadata server), no network."""

from __future__ import annotations

import pytest
import requests
from jax._src.clusters import cloud_tpu_cluster

from regnet_jax.config import ConfigError
from regnet_jax.core import distributed

LAUNCH_VARS = (
    "JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID",
    "OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK",
    "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "TPU_WORKER_ID", "TPU_SKIP_MDS_QUERY", "KUBERNETES_SERVICE_HOST",
    "MEGASCALE_COORDINATOR_ADDRESS", "MEGASCALE_NUM_SLICES", "MEGASCALE_SLICE_ID",
)  # fmt: skip


class _Response:
    def __init__(self, text: str, status_code: int = 200):
        self.text, self.status_code = text, status_code


def _metadata_server(attributes: dict[str, str], calls: list[str]):
    """A stand-in for requests.get against the GCE metadata server of a TPU VM."""

    def get(url, headers=None, timeout=None):
        assert headers == {"Metadata-Flavor": "Google"} and "/computeMetadata/v1/instance/attributes/" in url
        key = url.rsplit("/", 1)[-1]
        calls.append(key)
        return _Response(attributes[key]) if key in attributes else _Response("not found", 404)

    return get


@pytest.fixture
def bare(monkeypatch):
    """No launcher variables and not a TPU VM; every metadata request fails the test."""
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(cloud_tpu_cluster, "running_in_cloud_tpu_vm", False)
    monkeypatch.setattr(requests, "get", lambda *a, **k: pytest.fail("metadata server queried off a TPU VM"))
    monkeypatch.setattr(cloud_tpu_cluster.time, "sleep", lambda s: None)  # JAX's metadata retries
    return monkeypatch


def test_a_plain_machine_is_one_process(bare):
    assert not distributed.cluster_detected()
    bare.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")  # a plain pod: left to --distributed
    assert not distributed.cluster_detected()


@pytest.mark.parametrize("ntasks, expected", [("4", True), ("1", False)])
def test_slurm(bare, ntasks, expected):
    for var, value in dict(
        SLURM_JOB_ID="7", SLURM_STEP_NODELIST="node[001-004]", SLURM_NTASKS=ntasks, SLURM_PROCID="0", SLURM_LOCALID="0"
    ).items():
        bare.setenv(var, value)
    assert distributed.cluster_detected() is expected


def test_open_mpi_and_an_explicit_coordinator(bare):
    for var, value in dict(OMPI_MCA_orte_hnp_uri="1531576320.0;tcp://10.0.0.1:34911", OMPI_COMM_WORLD_SIZE="2",
                           OMPI_COMM_WORLD_RANK="1", OMPI_COMM_WORLD_LOCAL_RANK="0").items():  # fmt: skip
        bare.setenv(var, value)
    assert distributed.cluster_detected()
    bare.delenv("OMPI_MCA_orte_hnp_uri")
    bare.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    assert distributed.cluster_detected()


def test_gke_tpu_slice_from_its_environment(bare):
    bare.setattr(cloud_tpu_cluster, "running_in_cloud_tpu_vm", True)
    bare.setenv("TPU_SKIP_MDS_QUERY", "1")  # GKE: no metadata server query
    bare.setenv("TPU_WORKER_HOSTNAMES", "host-0,host-1,host-2,host-3")
    bare.setenv("TPU_WORKER_ID", "2")
    calls: list[str] = []
    bare.setattr(requests, "get", _metadata_server({"tpu-env": "ACCELERATOR_TYPE: 'v5litepod-16'\n"}, calls))
    assert distributed.cluster_detected()
    assert calls == ["tpu-env"]  # only JAX's look-up of MEGASCALE_NUM_SLICES (a single slice here)


@pytest.mark.parametrize(
    "endpoints, expected",
    [("t1v-n-0:0:10.130.0.2,t1v-n-1:1:10.130.0.3,t1v-n-2:2:10.130.0.4,t1v-n-3:3:10.130.0.5", True),  # v4-32: 4 hosts
     ("10.130.0.2,10.130.0.3", True),  # the newer plain-hostname format
     ("t1v-n-0:0:10.130.0.2", False)],  # a single-host TPU VM (v4-8)
)  # fmt: skip
def test_tpu_vm_slice_reached_by_ssh_found_through_the_metadata_server(bare, endpoints, expected):
    """gcloud compute tpus tpu-vm ssh --worker=all sets no launcher variables; JAX asks the TPU metadata server."""
    calls: list[str] = []
    attributes = {
        "agent-worker-number": "1",
        "worker-network-endpoints": endpoints,
        "tpu-env": "ACCELERATOR_TYPE: 'v4-32'\n",
    }
    bare.setattr(cloud_tpu_cluster, "running_in_cloud_tpu_vm", True)
    bare.setattr(requests, "get", _metadata_server(attributes, calls))
    assert distributed.cluster_detected() is expected
    assert "agent-worker-number" in calls and "worker-network-endpoints" in calls


def test_an_unanswering_metadata_server_is_a_clear_error_not_a_guess(bare):
    def down(*args, **kwargs):
        raise requests.ConnectionError("metadata.google.internal: connection refused")

    bare.setattr(cloud_tpu_cluster, "running_in_cloud_tpu_vm", True)
    bare.setattr(requests, "get", down)
    with pytest.raises(
        ConfigError, match=r"could not tell whether this is a multi-process launch \(GceTpuCluster.*--nodistributed"
    ):
        distributed.cluster_detected()


def test_initialize_is_called_only_when_detected_or_asked_with_the_heartbeat_timeout(bare):
    calls: list[dict] = []
    bare.setattr(distributed.jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
    assert not distributed.maybe_initialize_distributed()
    assert distributed.maybe_initialize_distributed(True, "localhost:1234", 2, 1, heartbeat_timeout_s=20)
    bare.setenv("TPU_WORKER_HOSTNAMES", "a,b")  # ignored off a TPU VM, as JAX does
    assert not distributed.maybe_initialize_distributed()
    bare.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1234")
    assert not distributed.maybe_initialize_distributed(False)
    assert distributed.maybe_initialize_distributed()
    assert calls == [
        {"heartbeat_timeout_seconds": 20, "coordinator_address": "localhost:1234", "num_processes": 2, "process_id": 1},
        {"heartbeat_timeout_seconds": distributed.HEARTBEAT_TIMEOUT_S},
    ]
