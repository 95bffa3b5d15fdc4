//! Hot-plug of a vGPU into a running libvirt domain, through `virsh qemu-monitor-command`
//! (QMP): `chardev-add` of the worker's vhost-user socket with `reconnect-ms` (a restarted
//! worker is connected again), then `device_add` of `vhost-user-gpio-pci` on a free
//! `pcie-root-port`; detach is `device_del` + `chardev-remove`. `vgpuctl attach/detach` and
//! `vgpuctl libvirt-watch` (which follows libvirt's lifecycle events) use it
//! (`docs/openstack.md`).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[derive(Debug, thiserror::Error)]
pub enum LibvirtError {
    #[error("Cannot run virsh")]
    Spawn(#[source] std::io::Error),
    #[error("virsh {args} failed: {stderr}")]
    Virsh { args: String, stderr: String },
    #[error("QMP {command} refused: {error}")]
    Qmp { command: String, error: String },
    #[error("Cannot parse the answer of QMP {command}")]
    Json {
        command: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "Domain {0:?} has no free hot-pluggable PCIe root port (add <controller type='pci' model='pcie-root-port'/>)"
    )]
    NoRootPort(String),
    #[error("Device {id} was not removed from {domain:?} within {secs} s")]
    NotRemoved {
        id: String,
        domain: String,
        secs: u64,
    },
}

/// The QMP command that adds the worker's socket as a client chardev.
pub fn chardev_add(id: &str, socket: &str, reconnect_ms: u64) -> Value {
    json!({"execute": "chardev-add", "arguments": {
        "id": format!("{id}c"),
        "backend": {"type": "socket", "data": {
            "addr": {"type": "unix", "data": {"path": socket}},
            "server": false,
            "reconnect-ms": reconnect_ms,
        }}
    }})
}

/// The QMP command that plugs the vGPU device into root port `bus`.
pub fn device_add(id: &str, bus: &str) -> Value {
    json!({"execute": "device_add", "arguments": {
        "driver": "vhost-user-gpio-pci", "id": id, "chardev": format!("{id}c"), "bus": bus,
    }})
}

/// A PCIe root port of the domain with nothing behind it, from `query-pci`'s answer.
pub fn free_root_port(query_pci: &Value) -> Option<String> {
    fn walk(devs: &[Value], out: &mut Vec<String>) {
        for d in devs {
            let Some(bridge) = d.get("pci_bridge") else {
                continue;
            };
            let behind = bridge["devices"].as_array().cloned().unwrap_or_default();
            let root_port = d["class_info"]["desc"]
                .as_str()
                .is_some_and(|c| c.contains("PCI bridge"));
            if root_port
                && behind.is_empty()
                && let Some(id) = d["qdev_id"].as_str().filter(|s| !s.is_empty())
            {
                out.push(id.to_string());
            }
            walk(&behind, out);
        }
    }
    let mut out = Vec::new();
    for bus in query_pci.as_array().into_iter().flatten() {
        walk(bus["devices"].as_array().map_or(&[][..], |v| v), &mut out);
    }
    out.into_iter().next()
}

/// Whether a device with this qdev id is on the domain's PCI buses.
pub fn has_device(query_pci: &Value, id: &str) -> bool {
    fn walk(devs: &[Value], id: &str) -> bool {
        devs.iter().any(|d| {
            d["qdev_id"].as_str() == Some(id)
                || d["pci_bridge"]["devices"]
                    .as_array()
                    .is_some_and(|b| walk(b, id))
        })
    }
    query_pci
        .as_array()
        .into_iter()
        .flatten()
        .any(|b| b["devices"].as_array().is_some_and(|d| walk(d, id)))
}

/// `virsh -c URI ...`.
#[derive(Clone, Debug)]
pub struct Virsh {
    pub uri: String,
}

impl Virsh {
    fn run(&self, args: &[&str]) -> Result<String, LibvirtError> {
        let out = Command::new("virsh")
            .arg("-q")
            .arg("-c")
            .arg(&self.uri)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(LibvirtError::Spawn)?;
        if !out.status.success() {
            return Err(LibvirtError::Virsh {
                args: args.join(" "),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    pub fn domuuid(&self, domain: &str) -> Result<String, LibvirtError> {
        self.run(&["domuuid", domain])
    }

    pub fn is_running(&self, domain: &str) -> bool {
        self.run(&["domstate", domain])
            .is_ok_and(|s| s.trim() == "running")
    }

    pub fn domname(&self, domain: &str) -> Result<String, LibvirtError> {
        self.run(&["domname", domain])
    }

    /// Running domains' names.
    pub fn running(&self) -> Result<Vec<String>, LibvirtError> {
        Ok(self
            .run(&["list", "--name", "--state-running"])?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// One QMP command; its `return`.
    pub fn qmp(&self, domain: &str, cmd: &Value) -> Result<Value, LibvirtError> {
        let name = cmd["execute"].as_str().unwrap_or("?").to_string();
        let text = self.run(&["qemu-monitor-command", domain, &cmd.to_string()])?;
        let v: Value = serde_json::from_str(&text).map_err(|source| LibvirtError::Json {
            command: name.clone(),
            source,
        })?;
        if let Some(e) = v.get("error") {
            return Err(LibvirtError::Qmp {
                command: name,
                error: e["desc"].as_str().unwrap_or(&e.to_string()).to_string(),
            });
        }
        Ok(v["return"].clone())
    }

    fn query_pci(&self, domain: &str) -> Result<Value, LibvirtError> {
        self.qmp(domain, &json!({"execute": "query-pci"}))
    }

    pub fn is_attached(&self, domain: &str, id: &str) -> Result<bool, LibvirtError> {
        Ok(has_device(&self.query_pci(domain)?, id))
    }

    /// Hot-plug the vGPU `id` on `socket`; the time it took, or `None` when another attach
    /// (or an earlier one) had plugged it.
    pub fn attach(
        &self,
        domain: &str,
        id: &str,
        socket: &str,
        reconnect_ms: u64,
    ) -> Result<Option<Duration>, LibvirtError> {
        let t = Instant::now();
        let pci = self.query_pci(domain)?;
        if has_device(&pci, id) {
            return Ok(None);
        }
        let bus = free_root_port(&pci).ok_or_else(|| LibvirtError::NoRootPort(domain.into()))?;
        if let Err(e) = self.qmp(domain, &chardev_add(id, socket, reconnect_ms)) {
            // Another attach of the same device is under way (the watcher and `vgpuctl
            // attach` at once), or an earlier one left its chardev: wait for the device, then
            // take the chardev over.
            let in_flight = Instant::now();
            while in_flight.elapsed() < Duration::from_secs(5) {
                if self.is_attached(domain, id)? {
                    return Ok(None);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let removed = self.qmp(
                domain,
                &json!({"execute": "chardev-remove", "arguments": {"id": format!("{id}c")}}),
            );
            if removed.is_err() {
                return Err(e);
            }
            self.qmp(domain, &chardev_add(id, socket, reconnect_ms))?;
        }
        if let Err(e) = self.qmp(domain, &device_add(id, &bus)) {
            let _ = self.qmp(
                domain,
                &json!({"execute": "chardev-remove", "arguments": {"id": format!("{id}c")}}),
            );
            return Err(e);
        }
        Ok(Some(t.elapsed()))
    }

    /// Unplug the vGPU `id` (the guest must release it) and remove its chardev.
    pub fn detach(&self, domain: &str, id: &str, wait: Duration) -> Result<Duration, LibvirtError> {
        let t = Instant::now();
        if has_device(&self.query_pci(domain)?, id) {
            self.qmp(
                domain,
                &json!({"execute": "device_del", "arguments": {"id": id}}),
            )?;
            loop {
                match self.query_pci(domain) {
                    Ok(pci) if !has_device(&pci, id) => break,
                    Ok(_) => {}
                    // the guest let the device go and the domain stopped meanwhile
                    Err(_) if !self.is_running(domain) => return Ok(t.elapsed()),
                    Err(e) => return Err(e),
                }
                if t.elapsed() > wait {
                    return Err(LibvirtError::NotRemoved {
                        id: id.into(),
                        domain: domain.into(),
                        secs: wait.as_secs(),
                    });
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = self.qmp(
            domain,
            &json!({"execute": "chardev-remove", "arguments": {"id": format!("{id}c")}}),
        );
        Ok(t.elapsed())
    }

    /// `virsh event --loop --event lifecycle`: a child whose lines `events` reads.
    pub fn watch(&self) -> Result<Child, LibvirtError> {
        Command::new("virsh")
            .arg("-c")
            .arg(&self.uri)
            .args(["event", "--loop", "--event", "lifecycle"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(LibvirtError::Spawn)
    }
}

/// A lifecycle event as `virsh event` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    Started(String),
    Stopped(String),
}

/// `event 'lifecycle' for domain 'vm1': Started Booted` -> `Started("vm1")`.
pub fn parse_event(line: &str) -> Option<Lifecycle> {
    let rest = line.split("for domain ").nth(1)?;
    let (name, what) = rest.rsplit_once(": ")?;
    let name = name.trim().trim_matches('\'').to_string();
    match what.split_whitespace().next()? {
        "Started" => Some(Lifecycle::Started(name)),
        "Stopped" => Some(Lifecycle::Stopped(name)),
        _ => None,
    }
}

/// The events of a `watch` child, until it ends.
pub fn events(child: &mut Child) -> impl Iterator<Item = Lifecycle> + '_ {
    let out = child.stdout.take().map(BufReader::new);
    out.into_iter()
        .flat_map(|r| r.lines().map_while(Result::ok))
        .filter_map(|l| parse_event(&l))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mutations caught: taking a root port that already has a device behind it, taking a
    /// non-bridge device, not looking behind bridges for the device.
    #[test]
    fn root_ports_and_devices_from_query_pci() {
        let port = |id: &str, behind: Value| {
            json!({"qdev_id": id, "class_info": {"desc": "PCI bridge", "class": 1540},
                   "pci_bridge": {"devices": behind}})
        };
        let pci = json!([{"bus": 0, "devices": [
            {"qdev_id": "", "class_info": {"desc": "Host bridge"}},
            port("pci.1", json!([{"qdev_id": "virtio-disk0", "class_info": {"desc": "SCSI"}}])),
            {"qdev_id": "sata0", "class_info": {"desc": "SATA controller"}},
            port("pci.2", json!([])),
            port("pci.3", json!([])),
        ]}]);
        assert_eq!(free_root_port(&pci).as_deref(), Some("pci.2"));
        assert!(has_device(&pci, "virtio-disk0"));
        assert!(!has_device(&pci, "vgpu0"));
        let full = json!([{"bus": 0, "devices": [port("pci.1", json!([{"qdev_id": "vgpu0"}]))]}]);
        assert_eq!(free_root_port(&full), None);
        assert!(has_device(&full, "vgpu0"));
    }

    #[test]
    fn qmp_commands() {
        let c = chardev_add("vgpu0", "/run/a.sock", 1000);
        assert_eq!(c["arguments"]["id"], "vgpu0c");
        assert_eq!(c["arguments"]["backend"]["data"]["reconnect-ms"], 1000);
        assert_eq!(c["arguments"]["backend"]["data"]["server"], false);
        let d = device_add("vgpu0", "pci.2");
        assert_eq!(d["arguments"]["chardev"], "vgpu0c");
        assert_eq!(d["arguments"]["bus"], "pci.2");
    }

    #[test]
    fn lifecycle_lines() {
        assert_eq!(
            parse_event("event 'lifecycle' for domain 'vm: 1': Started Booted"),
            Some(Lifecycle::Started("vm: 1".into()))
        );
        assert_eq!(
            parse_event("event 'lifecycle' for domain 'x': Stopped Destroyed"),
            Some(Lifecycle::Stopped("x".into()))
        );
        assert_eq!(
            parse_event("event 'lifecycle' for domain 'x': Resumed Unpaused"),
            None
        );
    }
}
