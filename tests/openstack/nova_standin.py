#!/usr/bin/env python3
"""A STAND-IN for nova-compute and nova-scheduler, for tests/openstack/run.sh.

This is not Nova. It makes the calls Nova makes against a real Placement API and a real
libvirtd, in Nova's order, for one flavor, so the vGPU pool's side (the controller's Placement
sync, `vgpuctl libvirt-watch`) can be shown against real services in CI:

  node HOST            the resource tracker: the compute-node provider (named by the
                       hypervisor host name) with VCPU / MEMORY_MB / DISK_GB inventories
  candidates FLAVOR    the scheduler's GET /allocation_candidates for a flavor (JSON file:
                       vcpus, ram, disk, extra_specs), printed as JSON
  boot FLAVOR          the scheduler's candidates, the claim (PUT /allocations/{instance}
                       with consumer_generation null and consumer type INSTANCE, the next
                       candidate on 409 as Nova's alternates), then the compute's libvirt
                       domain with the instance's UUID and shared guest memory
  delete UUID          destroy + undefine the domain, then DELETE /allocations/{instance}

It uses only Python's standard library; the Placement URL comes from --placement.
"""
import argparse
import json
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid as uuidlib
from xml.sax.saxutils import escape, quoteattr


class Placement:
    def __init__(self, url, token="admin"):
        self.url = url.rstrip("/")
        self.token = token

    def call(self, method, path, body=None, version="1.38"):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("X-Auth-Token", self.token)
        req.add_header("OpenStack-API-Version", "placement " + version)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                text = r.read().decode()
                return r.status, (json.loads(text) if text.strip() else None)
        except urllib.error.HTTPError as e:
            text = e.read().decode()
            try:
                return e.code, json.loads(text)
            except ValueError:
                return e.code, text


def provider_by_name(p, name):
    st, v = p.call("GET", "/resource_providers?name=" + urllib.parse.quote(name))
    assert st == 200, (st, v)
    rps = v["resource_providers"]
    return rps[0] if rps else None


def cmd_node(p, a):
    """What nova-compute's resource tracker does for its compute node."""
    rp = provider_by_name(p, a.host)
    if rp is None:
        st, rp = p.call("POST", "/resource_providers",
                        {"name": a.host, "uuid": str(uuidlib.uuid4())})
        assert st == 200, (st, rp)
    for _ in range(5):
        st, cur = p.call("GET", "/resource_providers/%s" % rp["uuid"])
        st, v = p.call("PUT", "/resource_providers/%s/inventories" % rp["uuid"], {
            "resource_provider_generation": cur["generation"],
            "inventories": {
                "VCPU": {"total": a.vcpus, "allocation_ratio": 4.0},
                "MEMORY_MB": {"total": a.memory_mb, "reserved": 512},
                "DISK_GB": {"total": a.disk_gb},
            }})
        if st == 200:
            break
    assert st == 200, (st, v)
    st, cur = p.call("GET", "/resource_providers/%s" % rp["uuid"])
    st, v = p.call("PUT", "/resource_providers/%s/traits" % rp["uuid"], {
        "resource_provider_generation": cur["generation"],
        "traits": ["COMPUTE_NODE", "HW_CPU_X86_SSE2"]})
    assert st == 200, (st, v)
    print(json.dumps({"uuid": rp["uuid"], "name": a.host}))


def candidate_query(flavor):
    """The query nova-scheduler builds from a flavor (nova.scheduler.utils.ResourceRequest):
    the flavor's own resources in the unnumbered group, `resources[N]:RC=amount` and
    `trait[N]:T=required|forbidden` extra specs, group_policy, COMPUTE_STATUS_DISABLED
    forbidden on the root provider."""
    groups = {"": {"VCPU": flavor["vcpus"], "MEMORY_MB": flavor["ram"]}}
    if flavor.get("disk"):
        groups[""]["DISK_GB"] = flavor["disk"]
    required = {}
    q = []
    for k, v in sorted(flavor.get("extra_specs", {}).items()):
        if k.startswith("resources") and ":" in k:
            suffix, rc = k[len("resources"):].split(":", 1)
            groups.setdefault(suffix, {})[rc] = int(v)
        elif k.startswith("trait") and ":" in k:
            suffix, t = k[len("trait"):].split(":", 1)
            required.setdefault(suffix, []).append(t if v == "required" else "!" + t)
        elif k == "group_policy":
            q.append(("group_policy", v))
    for suffix, res in sorted(groups.items()):
        q.append(("resources" + suffix, ",".join("%s:%d" % kv for kv in sorted(res.items()))))
    for suffix, ts in sorted(required.items()):
        q.append(("required" + suffix, ",".join(ts)))
    if sum(1 for s in groups if s) > 1 and not any(k == "group_policy" for k, _ in q):
        q.append(("group_policy", "none"))
    q.append(("root_required", "!COMPUTE_STATUS_DISABLED"))
    q.append(("limit", "1000"))
    return urllib.parse.urlencode(q)


def candidates(p, flavor):
    st, v = p.call("GET", "/allocation_candidates?" + candidate_query(flavor), version="1.36")
    assert st == 200, (st, v)
    return v


def cmd_candidates(p, a):
    v = candidates(p, json.load(open(a.flavor)))
    out = []
    for ar in v["allocation_requests"]:
        out.append({rp: r["resources"] for rp, r in ar["allocations"].items()})
    print(json.dumps({"candidates": out, "providers": list(v["provider_summaries"])}))


def root_of(summaries, rp):
    return summaries.get(rp, {}).get("root_provider_uuid", rp)


def domain_xml(name, uuid, flavor, a):
    """The domain nova-compute's libvirt driver would define for this instance, reduced to
    what the test guest needs (direct kernel boot instead of an image): the instance UUID,
    q35 with free PCIe root ports (Nova's [libvirt]num_pcie_ports) and shared guest memory."""
    ports = "".join("    <controller type='pci' model='pcie-root-port'/>\n"
                    for _ in range(a.root_ports))
    serial = ("    <serial type='file'><source path=%s/><target port='0'/></serial>\n"
              % quoteattr(a.serial_log)) if a.serial_log else \
        "    <serial type='pty'><target port='0'/></serial>\n"
    return """<domain type='%(type)s'>
  <name>%(name)s</name>
  <uuid>%(uuid)s</uuid>
  <metadata><nova:instance xmlns:nova='http://openstack.org/xmlns/libvirt/nova/1.1'><nova:flavor name=%(flavor)s/></nova:instance></metadata>
  <memory unit='MiB'>%(ram)d</memory>
  <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>
  <vcpu>%(vcpus)d</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>%(kernel)s</kernel>
    <initrd>%(initrd)s</initrd>
    <cmdline>%(cmdline)s</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
%(serial)s    <console type='pty'><target type='serial' port='0'/></console>
    <controller type='pci' model='pcie-root'/>
%(ports)s    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
""" % {"type": a.virt_type, "name": escape(name), "uuid": uuid, "ram": flavor["ram"],
       "vcpus": a.guest_vcpus, "kernel": escape(a.kernel or ""), "initrd": escape(a.initrd or ""),
       "cmdline": escape(a.cmdline), "serial": serial, "ports": ports,
       "flavor": quoteattr(flavor.get("name", "flavor"))}


def virsh(a, *args, check=True):
    r = subprocess.run(["virsh", "-q", "-c", a.libvirt_uri] + list(args),
                       capture_output=True, text=True)
    if check and r.returncode != 0:
        sys.exit("virsh %s: %s" % (" ".join(args), r.stderr.strip()))
    return r


def cmd_boot(p, a):
    flavor = json.load(open(a.flavor))
    inst = a.uuid or str(uuidlib.uuid4())
    t0 = time.time()
    v = candidates(p, flavor)
    reqs = v["allocation_requests"]
    summaries = v["provider_summaries"]
    if a.host:  # the scheduler's host filter: the compute node named --host
        node = provider_by_name(p, a.host)
        reqs = [r for r in reqs if node and any(
            root_of(summaries, rp) == node["uuid"] for rp in r["allocations"])]
    if a.claim_at:  # line two schedulers up on the same moment (the race test)
        time.sleep(max(0.0, a.claim_at - time.time()))
    claimed = None
    for r in reqs[:3]:  # Nova claims the selected host, then up to two alternates
        st, body = p.call("PUT", "/allocations/%s" % inst, {
            "allocations": r["allocations"], "project_id": a.project, "user_id": a.user,
            "consumer_generation": None, "consumer_type": "INSTANCE"})
        if st == 204:
            claimed = r
            break
        print("claim refused (%d): %s" % (st, json.dumps(body)[:300]), file=sys.stderr)
    if claimed is None:
        print(json.dumps({"uuid": inst, "error": "No valid host was found",
                          "candidates": len(v["allocation_requests"])}))
        sys.exit(3)
    out = {"uuid": inst, "allocations": {rp: x["resources"]
                                         for rp, x in claimed["allocations"].items()},
           "claim_secs": round(time.time() - t0, 3)}
    if not a.no_domain:
        name = a.name or ("instance-" + inst[:8])
        xml = domain_xml(name, inst, flavor, a)
        path = "/tmp/nova-standin-%s.xml" % inst
        with open(path, "w") as f:
            f.write(xml)
        virsh(a, "define", path)
        virsh(a, "start", name)
        out["domain"] = name
        out["started_at"] = time.time()
    print(json.dumps(out))


def cmd_delete(p, a):
    """nova-compute's delete: the domain first, then the allocations."""
    r = virsh(a, "domname", a.uuid, check=False)
    if r.returncode == 0:
        name = r.stdout.strip()
        virsh(a, "destroy", name, check=False)
        virsh(a, "undefine", name, check=False)
    st, body = p.call("DELETE", "/allocations/%s" % a.uuid)
    if st not in (204, 404):
        sys.exit("DELETE /allocations/%s: %d %s" % (a.uuid, st, body))
    print(json.dumps({"uuid": a.uuid, "deleted": True}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--placement", required=True)
    ap.add_argument("--token", default="admin")
    ap.add_argument("--libvirt-uri", default="qemu:///system")
    sub = ap.add_subparsers(dest="cmd", required=True)
    n = sub.add_parser("node")
    n.add_argument("host")
    n.add_argument("--vcpus", type=int, default=16)
    n.add_argument("--memory-mb", type=int, default=32768)
    n.add_argument("--disk-gb", type=int, default=100)
    c = sub.add_parser("candidates")
    c.add_argument("flavor")
    b = sub.add_parser("boot")
    b.add_argument("flavor")
    b.add_argument("--uuid")
    b.add_argument("--name")
    b.add_argument("--host")
    b.add_argument("--project", default="demo-project")
    b.add_argument("--user", default="demo-user")
    b.add_argument("--claim-at", type=float)
    b.add_argument("--no-domain", action="store_true", help="claim only (no libvirt domain)")
    b.add_argument("--kernel")
    b.add_argument("--initrd")
    b.add_argument("--cmdline", default="console=ttyS0 panic=-1 quiet")
    b.add_argument("--serial-log")
    b.add_argument("--root-ports", type=int, default=2)
    b.add_argument("--guest-vcpus", type=int, default=1)
    b.add_argument("--virt-type", default="qemu")
    d = sub.add_parser("delete")
    d.add_argument("uuid")
    a = ap.parse_args()
    p = Placement(a.placement, a.token)
    {"node": cmd_node, "candidates": cmd_candidates, "boot": cmd_boot,
     "delete": cmd_delete}[a.cmd](p, a)


if __name__ == "__main__":
    main()
