"""Writes the OpenAPI document for schemathesis's positive run against the real ferry.

Usage: python3 schemathesis_real.py SCHEMA_IN SCHEMA_OUT SCRATCH_DIR

docs/api/ferry.yaml describes every request ferry accepts in general; a real, not-yet-started
ferry process also needs the host objects a request names to exist. This copy narrows only
such fields to objects the calling script created in SCRATCH_DIR, so that a schema-valid
request here is one ferry must accept (positive_data_acceptance), and the run never opens or
creates anything outside the scratch directory:

- kernel_image_path, initrd_path: a kernel and initrd file there (the kernel is not bootable:
  InstanceStart then fails instead of booting, see schemathesis-ferry.toml);
- drives: path_on_host a disk image there; drive_id (path and body) one id, since the body's id
  must equal the path's, which a schema cannot say; no chap_secret_file (iSCSI only);
- network interfaces: iface_id (path and body) one id, host_dev_name the tap the script made;
- logger.log_path, metrics.metrics_path: files there; vsock uds_path (and the snapshot's
  vsock override): a socket path there (bound at InstanceStart);
- snapshot and migration paths: names there (those requests are refused pre-boot anyway);
- machine-config: even vcpu_count and mem_size_mib, in PUT and PATCH, since `smt` needs an even
  vCPU count (or 1, the default) and `huge_pages: "2M"` an even size, whichever request set the
  other field (a schema cannot tie fields of two requests together); likewise the balloon's
  amount_mib at most 2, the smallest guest those sizes allow, as a target above the guest's
  memory is refused.
"""
import sys

import yaml

src, dst, scratch = sys.argv[1:4]
with open(src) as f:
    doc = yaml.safe_load(f)
schemas = doc["components"]["schemas"]


def only(value):
    return {"type": "string", "enum": [value]}


for name in ("MachineConfiguration", "MachineConfigurationUpdate"):
    for field in ("vcpu_count", "mem_size_mib"):
        schemas[name]["properties"][field]["multipleOf"] = 2

schemas["Balloon"]["properties"]["amount_mib"]["maximum"] = 2

boot = schemas["BootSource"]["properties"]
boot["kernel_image_path"] = only(f"{scratch}/vmlinux")
boot["initrd_path"] = {"type": "string", "enum": [f"{scratch}/initrd", None], "nullable": True}

drive = schemas["Drive"]["properties"]
drive["drive_id"] = only("d0")
drive["path_on_host"] = only(f"{scratch}/disk.img")
drive.pop("chap_secret_file")
partial = schemas["PartialDrive"]["properties"]
partial["drive_id"] = only("d0")
partial["path_on_host"] = {"type": "string", "enum": [f"{scratch}/disk.img", None], "nullable": True}

net = schemas["NetworkInterface"]["properties"]
net["iface_id"] = only("n0")
net["host_dev_name"] = only(sys.argv[4] if len(sys.argv) > 4 else "fstap0")
net["host_dev_type"] = {"type": "string", "enum": ["tap", None], "nullable": True}
schemas["PartialNetworkInterface"]["properties"]["iface_id"] = only("n0")

schemas["Logger"]["properties"]["log_path"] = {
    "type": "string", "enum": [f"{scratch}/ferry.log", None], "nullable": True}
schemas["Metrics"]["properties"]["metrics_path"] = only(f"{scratch}/metrics.json")

schemas["Vsock"]["properties"]["uds_path"] = only(f"{scratch}/vsock.sock")
schemas["VsockOverride"]["properties"]["uds_path"] = only(f"{scratch}/vsock.sock")

snap = schemas["SnapshotCreateParams"]["properties"]
snap["snapshot_path"] = only(f"{scratch}/snap.state")
snap["mem_file_path"] = only(f"{scratch}/snap.mem")
load = schemas["SnapshotLoadParams"]["properties"]
load["snapshot_path"] = only(f"{scratch}/snap.state")
load["mem_file_path"] = {"type": "string", "enum": [f"{scratch}/snap.mem", None], "nullable": True}
load["mem_diff_paths"] = {"type": "array", "items": only(f"{scratch}/snap.diff")}
schemas["MemoryBackend"]["properties"]["backend_path"] = only(f"{scratch}/snap.mem")
send = schemas["MigrationSend"]["properties"]
send["destination_url"] = only(f"unix:{scratch}/migration.sock")
send["psk_file"] = only(f"{scratch}/psk")

for path in ("/drives/{drive_id}", "/network-interfaces/{iface_id}"):
    for param in doc["paths"][path]["parameters"]:
        param["schema"] = only("d0" if "drive" in path else "n0")

with open(dst, "w") as f:
    yaml.safe_dump(doc, f, sort_keys=False)
