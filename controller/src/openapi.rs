//! The OpenAPI 3.1 document served at `GET /openapi.json` (hand-written; a test checks that every
//! route of the router is in it).

use serde_json::{Value, json};

fn r(schema: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{schema}")})
}

fn ok(desc: &str, schema: Value) -> Value {
    json!({"description": desc, "content": {"application/json": {"schema": schema}}})
}

fn op(
    summary: &str,
    tag: &str,
    status: &str,
    resp: Value,
    body: Option<Value>,
    params: &[&str],
) -> Value {
    let mut o = json!({
        "summary": summary,
        "tags": [tag],
        "responses": {
            status: resp,
            "400": ok("Bad request (malformed JSON, invalid values)", r("Error")),
            "401": ok("Missing or unknown bearer token", r("Error")),
            "403": ok("Not allowed for this token, or quota exceeded (code quota_exceeded)", r("Error")),
            "404": ok("Unknown id", r("Error")),
            "409": ok("No capacity (code no_capacity) or conflict", r("Error"))
        }
    });
    if let Some(b) = body {
        o["requestBody"] =
            json!({"required": true, "content": {"application/json": {"schema": b}}});
    }
    if !params.is_empty() {
        o["parameters"] =
            Value::Array(params.iter().map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}})).collect());
    }
    o
}

fn arr(s: &str) -> Value {
    json!({"type": "array", "items": r(s)})
}

pub fn document() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "vGPU pool controller",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Inventory, placement, leases and quotas of the vGPU pool. All /v1 routes need `Authorization: Bearer <token>` (admin, agent or project token). Errors are `{\"error\": {\"code\", \"message\"}}`."
        },
        "security": [{"bearer": []}],
        "paths": {
            "/healthz": {"get": {"summary": "Liveness", "security": [], "responses": {"200": {"description": "ok"}}}},
            "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI document"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (text format)", "security": [], "responses": {"200": {"description": "text/plain exposition"}}}},
            "/v1/whoami": {"get": op("Role of the presented token", "auth", "200", ok("role", json!({"type": "object"})), None, &[])},
            "/v1/hosts": {"get": op("List hosts (admin)", "hosts", "200", ok("hosts", arr("Host")), None, &[])},
            "/v1/hosts/{name}": {"get": op("One host (admin)", "hosts", "200", ok("host", r("Host")), None, &["name"])},
            "/v1/hosts/{name}/drain": {"post": op("Drain: no new slices on this host's GPUs (admin)", "hosts", "200", ok("host", r("Host")), None, &["name"])},
            "/v1/hosts/{name}/undrain": {"post": op("Undo drain (admin)", "hosts", "200", ok("host", r("Host")), None, &["name"])},
            "/v1/gpus": {"get": op("List GPUs with allocated/free capacity", "gpus", "200", ok("gpus", arr("Gpu")), None, &[])},
            "/v1/gpus/{uuid}": {
                "get": op("One GPU", "gpus", "200", ok("gpu", r("Gpu")), None, &["uuid"]),
                "patch": op("Set slice mode, compute oversubscription ratio, health (admin)", "gpus", "200", ok("gpu", r("Gpu")), Some(r("GpuPatch")), &["uuid"])
            },
            "/v1/slices": {"get": op("List slices in use (project tokens see their own)", "slices", "200", ok("slices", arr("Slice")), None, &[])},
            "/v1/allocations": {
                "get": op("List allocations (project tokens see their own)", "allocations", "200", ok("allocations", arr("Allocation")), None, &[]),
                "post": op("Allocate a slice: local host first, then (allow_remote) hosts sharing rack, zone, then any", "allocations", "201", ok("the allocation", r("Allocation")), Some(r("AllocationRequest")), &[])
            },
            "/v1/allocations/{id}": {
                "get": op("One allocation", "allocations", "200", ok("allocation", r("Allocation")), None, &["id"]),
                "delete": op("Release an allocation", "allocations", "200", ok("the released allocation", r("Allocation")), None, &["id"])
            },
            "/v1/projects": {
                "get": op("List projects with usage (admin)", "projects", "200", ok("projects", arr("Project")), None, &[]),
                "post": op("Create a project; the answer holds its token, shown once (admin)", "projects", "201", ok("created", r("ProjectCreated")), Some(json!({"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "quota": r("Quota")}})), &[])
            },
            "/v1/projects/{name}": {
                "get": op("One project (admin or its own token)", "projects", "200", ok("project", r("Project")), None, &["name"]),
                "patch": op("Set the quota (admin)", "projects", "200", ok("project", r("Project")), Some(json!({"type": "object", "required": ["quota"], "properties": {"quota": r("Quota")}})), &["name"]),
                "delete": op("Delete a project without allocations (admin)", "projects", "204", json!({"description": "deleted"}), None, &["name"])
            },
            "/v1/agents/enroll": {"post": op("Issue a host its own agent credential, shown once. The pool's agent token may do so only for a host without one (409 otherwise); the admin token always, replacing the old one", "agents", "201", ok("the credential", json!({"type": "object", "properties": {"host": {"type": "string"}, "token": {"type": "string"}}})), Some(json!({"type": "object", "required": ["host"], "properties": {"host": {"type": "string"}}})), &[])},
            "/v1/agents/register": {"post": op("Agent registers its host and GPUs (that host's credential; 403 for another host's)", "agents", "200", ok("lease settings", json!({"type": "object"})), Some(r("RegisterRequest")), &[])},
            "/v1/agents/{name}/heartbeat": {"post": op("Agent heartbeat: reports workers, renews leases, gets the assignments to run (that host's credential). 404 = register again", "agents", "200", ok("assignments", json!({"type": "object"})), Some(json!({"type": "object", "properties": {"workers": {"type": "array", "items": {"type": "object", "properties": {"allocation_id": {"type": "string"}, "state": {"enum": ["running", "exited"]}, "pid": {"type": ["integer", "null"]}, "exit_code": {"type": ["integer", "null"]}}}}}})), &["name"])}
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
                "Host": {"type": "object", "properties": {
                    "name": {"type": "string"}, "address": {"type": "string"}, "serve_port": {"type": "integer"},
                    "socket_dir": {"type": "string"}, "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "schedulable": {"type": "boolean"}, "gpu_source": {"enum": ["cuda", "sim"]}, "alive": {"type": "boolean"},
                    "last_seen_ms_ago": {"type": "integer"}, "gpus": {"type": "integer"}, "allocations": {"type": "integer"},
                    "enrolled": {"type": "boolean", "description": "the host has its own agent credential"}}},
                "Gpu": {"type": "object", "properties": {
                    "uuid": {"type": "string"}, "index": {"type": "integer"}, "model": {"type": "string"}, "pci_bus_id": {"type": "string"},
                    "numa_node": {"type": ["integer", "null"]}, "sm_count": {"type": "integer"}, "memory_bytes": {"type": "integer"},
                    "sim": {"type": "boolean"}, "host": {"type": "string"}, "health": {"enum": ["healthy", "unhealthy"]},
                    "slice_mode": {"enum": ["homogeneous", "mixed"]}, "oversubscription_ratio": {"type": "number"},
                    "sm_capacity": {"type": "integer"}, "sm_allocated": {"type": "integer"},
                    "memory_allocated_bytes": {"type": "integer"}, "memory_free_bytes": {"type": "integer"}, "slices": {"type": "integer"}}},
                "GpuPatch": {"type": "object", "additionalProperties": false, "properties": {
                    "slice_mode": {"enum": ["homogeneous", "mixed"]},
                    "oversubscription_ratio": {"type": "number", "minimum": 1.0, "maximum": 64.0, "description": "compute only; memory is never oversubscribed"},
                    "health": {"enum": ["healthy", "unhealthy"]}}},
                "SliceSpec": {"type": "object", "additionalProperties": false, "description": "either profile, or sm_count and memory_bytes",
                    "properties": {"profile": {"type": "string", "examples": ["1", "1/2", "1/4", "1/8"]}, "sm_count": {"type": "integer", "minimum": 1}, "memory_bytes": {"type": "integer", "minimum": 1}}},
                "Policy": {"type": "object", "additionalProperties": false, "properties": {
                    "allow_remote": {"type": "boolean", "default": false},
                    "strategy": {"enum": ["binpack", "spread"], "default": "binpack"},
                    "numa_node": {"type": ["integer", "null"]},
                    "topology_preference": {"type": "array", "items": {"type": "string"}, "default": ["rack", "zone"]}}},
                "AllocationRequest": {"type": "object", "additionalProperties": false, "required": ["vm", "host", "slice"], "properties": {
                    "vm": {"type": "string"}, "host": {"type": "string", "description": "the VM's host"},
                    "project": {"type": "string", "description": "admin token only; project tokens use their own"},
                    "slice": r("SliceSpec"), "policy": r("Policy")}},
                "Allocation": {"type": "object", "properties": {
                    "id": {"type": "string"}, "project": {"type": "string"}, "vm": {"type": "string"}, "vm_host": {"type": "string"},
                    "gpu_uuid": {"type": "string"}, "gpu_host": {"type": "string"}, "profile": {"type": ["integer", "null"], "description": "N of 1/N, null for arbitrary"},
                    "sm_count": {"type": "integer"}, "memory_bytes": {"type": "integer"}, "remote": {"type": "boolean"},
                    "endpoint": {"type": ["string", "null"], "description": "address:port of the GPU host's vhost-gpu serve, for remote slices"},
                    "socket_path": {"type": "string", "description": "vhost-user socket of the worker on the VM's host"},
                    "state": {"enum": ["pending", "running"]}, "created_at": {"type": "integer"}}},
                "Slice": {"type": "object", "properties": {
                    "id": {"type": "string"}, "gpu_uuid": {"type": "string"}, "gpu_host": {"type": "string"}, "profile": {"type": ["string", "null"]},
                    "sm_count": {"type": "integer"}, "memory_bytes": {"type": "integer"}, "allocation_id": {"type": "string"},
                    "project": {"type": "string"}, "vm": {"type": "string"}}},
                "Quota": {"type": "object", "additionalProperties": false, "properties": {
                    "max_allocations": {"type": ["integer", "null"]}, "max_memory_bytes": {"type": ["integer", "null"]}, "max_sm": {"type": ["integer", "null"]}}},
                "Project": {"type": "object", "properties": {"name": {"type": "string"}, "quota": r("Quota"), "created_at": {"type": "integer"},
                    "usage": {"type": "object", "properties": {"allocations": {"type": "integer"}, "memory_bytes": {"type": "integer"}, "sm": {"type": "integer"}}}}},
                "ProjectCreated": {"type": "object", "properties": {"name": {"type": "string"}, "quota": r("Quota"), "token": {"type": "string"}}},
                "RegisterRequest": {"type": "object", "required": ["name", "address", "serve_port", "socket_dir", "gpus"], "properties": {
                    "name": {"type": "string"}, "address": {"type": "string"}, "serve_port": {"type": "integer"}, "socket_dir": {"type": "string"},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}}, "gpus": {"type": "array", "items": {"type": "object"}},
                    "agent_version": {"type": "string"}, "gpu_source": {"enum": ["cuda", "sim"]}}}
            }
        }
    })
}
