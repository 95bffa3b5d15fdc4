//! The generated OpenAPI document against real answers: a controller and an agent run, every
//! documented operation is called, and each answer (its status, and its body against the
//! schema the document gives for that status) is checked. A property the document does not
//! name, a missing required one, a wrong type or an undocumented status fails the test, and so
//! does a documented operation the test did not exercise.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::{Map, Value, json};

/// Checks `v` against `schema` (the subset of JSON Schema utoipa emits: `$ref`, `allOf`,
/// `oneOf`/`anyOf`, `type` (also lists, `null`), `properties`, `required`,
/// `additionalProperties`, `items`, `enum`, `minimum`). Objects are strict: a property that
/// neither `properties` nor `additionalProperties` allows is an error, so a field added to a
/// response without reaching the document is caught.
fn validate(doc: &Value, schema: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
    let schema = resolve(doc, schema);
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        // Flattened structs: one object of every part's properties.
        let mut merged = Map::new();
        let mut props = Map::new();
        let mut required = Vec::new();
        for part in all {
            let part = flatten(doc, part);
            if let Some(p) = part.get("properties").and_then(Value::as_object) {
                props.extend(p.clone());
            }
            if let Some(r) = part.get("required").and_then(Value::as_array) {
                required.extend(r.clone());
            }
        }
        merged.insert("type".into(), json!("object"));
        merged.insert("properties".into(), Value::Object(props));
        merged.insert("required".into(), Value::Array(required));
        return validate(doc, &Value::Object(merged), v, at, errs);
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(alts) = schema.get(key).and_then(Value::as_array) {
            let fits = alts.iter().any(|alt| {
                let mut e = Vec::new();
                validate(doc, alt, v, at, &mut e);
                e.is_empty()
            });
            if !fits {
                errs.push(format!(
                    "{at}: {v} fits none of {key} {}",
                    Value::Array(alts.clone())
                ));
            }
            return;
        }
    }
    if let Some(en) = schema.get("enum").and_then(Value::as_array)
        && !en.contains(v)
    {
        errs.push(format!(
            "{at}: {v} is not one of {}",
            Value::Array(en.clone())
        ));
    }
    if let Some(t) = schema.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let kind = match v {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        let ok = types.contains(&kind) || (kind == "integer" && types.contains(&"number"));
        if !ok {
            errs.push(format!("{at}: {v} is {kind}, the document says {t}"));
            return;
        }
    }
    if let (Some(min), Some(n)) = (schema.get("minimum").and_then(Value::as_f64), v.as_f64())
        && n < min
    {
        errs.push(format!("{at}: {n} is below the minimum {min}"));
    }
    match v {
        Value::Object(o) => {
            let props = schema.get("properties").and_then(Value::as_object);
            if let Some(req) = schema.get("required").and_then(Value::as_array) {
                for r in req.iter().filter_map(Value::as_str) {
                    if !o.contains_key(r) {
                        errs.push(format!("{at}: required property {r:?} missing"));
                    }
                }
            }
            let extra = schema.get("additionalProperties");
            for (k, val) in o {
                let here = format!("{at}.{k}");
                match (props.and_then(|p| p.get(k)), extra) {
                    (Some(s), _) => validate(doc, s, val, &here, errs),
                    (None, Some(s)) if s.is_object() => validate(doc, s, val, &here, errs),
                    (None, Some(Value::Bool(true))) => {}
                    // `{"type": "object"}` alone: any object (the document itself).
                    (None, None) if props.is_none() => {}
                    _ => errs.push(format!("{here}: property not in the document")),
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    validate(doc, s, item, &format!("{at}[{i}]"), errs);
                }
            }
        }
        _ => {}
    }
}

fn resolve<'a>(doc: &'a Value, mut schema: &'a Value) -> &'a Value {
    while let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected $ref {r}"));
        schema = &doc["components"]["schemas"][name];
        assert!(!schema.is_null(), "{r} is not in the document");
    }
    schema
}

/// A part of an `allOf`, itself resolved and flattened (a flattened struct may flatten another).
fn flatten(doc: &Value, part: &Value) -> Value {
    let part = resolve(doc, part);
    match part.get("allOf").and_then(Value::as_array) {
        None => part.clone(),
        Some(all) => {
            let mut props = Map::new();
            let mut required = Vec::new();
            for p in all {
                let p = flatten(doc, p);
                if let Some(x) = p.get("properties").and_then(Value::as_object) {
                    props.extend(x.clone());
                }
                if let Some(r) = p.get("required").and_then(Value::as_array) {
                    required.extend(r.clone());
                }
            }
            json!({"type": "object", "properties": props, "required": required})
        }
    }
}

struct Checker {
    doc: Value,
    url: String,
    /// (method, path template) answered with a documented 2xx.
    covered: BTreeSet<(String, String)>,
    errors: Vec<String>,
}

impl Checker {
    /// Calls `method path` (an instance of `template`) and checks the answer against the document.
    fn call(
        &mut self,
        token: Option<&str>,
        method: &str,
        template: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let (status, v) = http(&self.url, method, path, token, body.map(|b| b.to_string()));
        let at = format!("{method} {path} ({status})");
        let op = &self.doc["paths"][template][method.to_lowercase()];
        if op.is_null() {
            self.errors
                .push(format!("{at}: {method} {template} is not in the document"));
            return (status, v);
        }
        let resp = &op["responses"][status.to_string()];
        if resp.is_null() {
            self.errors.push(format!(
                "{at}: status {status} is not documented for {template}: {v}"
            ));
            return (status, v);
        }
        if (200..300).contains(&status) {
            self.covered
                .insert((method.to_lowercase(), template.to_string()));
        }
        let content = &resp["content"];
        if let Some(schema) = content["application/json"].get("schema") {
            let doc = self.doc.clone();
            validate(&doc, schema, &v, &at, &mut self.errors);
        } else if content.get("application/openmetrics-text").is_some() {
            if !v.as_str().is_some_and(|t| t.contains("# EOF")) {
                self.errors
                    .push(format!("{at}: OpenMetrics text expected, got {v}"));
            }
        } else if v != json!("") {
            self.errors
                .push(format!("{at}: the document says no body, got {v}"));
        }
        (status, v)
    }
}

#[test]
fn every_documented_answer_matches_the_generated_document() {
    let d = TempDir::new("openapi");
    let c = Controller::start(&d.0, 5_000, 200);
    let _h = Agent::start(&d.0, &c.url, "h1", 2, &["rack=r1"], 7001);
    c.wait_hosts(1);
    let (st, doc) = c.get("/openapi.json", None);
    assert_eq!(st, 200);
    assert_eq!(doc["openapi"], json!("3.1.0"));
    let mut k = Checker {
        doc,
        url: c.url.clone(),
        covered: BTreeSet::new(),
        errors: Vec::new(),
    };
    let admin = Some(ADMIN);

    k.call(None, "GET", "/healthz", "/healthz", None);
    k.call(None, "GET", "/openapi.json", "/openapi.json", None);
    k.call(None, "GET", "/metrics", "/metrics", None);
    k.call(admin, "GET", "/v1/whoami", "/v1/whoami", None);
    k.call(admin, "GET", "/v1/hosts", "/v1/hosts", None);
    k.call(admin, "GET", "/v1/hosts/{name}", "/v1/hosts/h1", None);
    k.call(
        admin,
        "POST",
        "/v1/hosts/{name}/drain",
        "/v1/hosts/h1/drain",
        None,
    );
    k.call(
        admin,
        "POST",
        "/v1/hosts/{name}/undrain",
        "/v1/hosts/h1/undrain",
        None,
    );
    let (_, gpus) = k.call(admin, "GET", "/v1/gpus", "/v1/gpus", None);
    let uuid = gpus[0]["uuid"].as_str().expect("a GPU").to_string();
    let gpu = format!("/v1/gpus/{uuid}");
    k.call(admin, "GET", "/v1/gpus/{uuid}", &gpu, None);
    let patch = json!({"oversubscription_ratio": 2.0, "health": "healthy", "slice_mode": "mixed"});
    k.call(admin, "PATCH", "/v1/gpus/{uuid}", &gpu, Some(patch));

    let (st, p) = k.call(
        admin,
        "POST",
        "/v1/projects",
        "/v1/projects",
        Some(json!({"name": "team", "quota": {"max_allocations": 4}})),
    );
    assert_eq!(st, 201, "{p}");
    let team = p["token"].as_str().unwrap().to_string();
    let team = Some(team.as_str());
    k.call(admin, "GET", "/v1/projects", "/v1/projects", None);
    k.call(
        team,
        "GET",
        "/v1/projects/{name}",
        "/v1/projects/team",
        None,
    );
    let quota = json!({"quota": {"max_allocations": 8, "max_sm": null}});
    k.call(
        admin,
        "PATCH",
        "/v1/projects/{name}",
        "/v1/projects/team",
        Some(quota),
    );
    k.call(team, "GET", "/v1/whoami", "/v1/whoami", None);
    let req = json!({"vm": "vm1", "host": "h1", "slice": {"profile": "1/2"}});
    let (st, a) = k.call(
        team,
        "POST",
        "/v1/allocations",
        "/v1/allocations",
        Some(req),
    );
    assert_eq!(st, 201, "{a}");
    let req = json!({"vm": "vm2", "host": "h1", "project": "team",
        "slice": {"sm_count": 10, "memory_bytes": 1u64 << 30},
        "policy": {"strategy": "spread", "allow_remote": false}});
    let (st, b) = k.call(
        admin,
        "POST",
        "/v1/allocations",
        "/v1/allocations",
        Some(req),
    );
    assert_eq!(st, 201, "{b}");
    c.wait_state(a["id"].as_str().unwrap(), "running");
    let one = format!("/v1/allocations/{}", a["id"].as_str().unwrap());
    k.call(team, "GET", "/v1/allocations/{id}", &one, None);
    k.call(admin, "GET", "/v1/allocations", "/v1/allocations", None);
    k.call(team, "GET", "/v1/slices", "/v1/slices", None);
    k.call(admin, "GET", "/v1/gpus", "/v1/gpus", None);
    k.call(admin, "GET", "/v1/projects", "/v1/projects", None);
    k.call(None, "GET", "/metrics", "/metrics", None);

    // Errors have the documented shape too.
    k.call(None, "GET", "/v1/hosts", "/v1/hosts", None);
    k.call(team, "GET", "/v1/hosts", "/v1/hosts", None);
    k.call(
        admin,
        "GET",
        "/v1/allocations/{id}",
        "/v1/allocations/a-none",
        None,
    );
    let big = json!({"vm": "vm3", "host": "h1", "slice": {"profile": "1"}});
    let (st, _) = k.call(
        team,
        "POST",
        "/v1/allocations",
        "/v1/allocations",
        Some(big),
    );
    assert_eq!(st, 409);
    k.call(
        admin,
        "POST",
        "/v1/allocations",
        "/v1/allocations",
        Some(json!({"vm": 1})),
    );

    k.call(team, "DELETE", "/v1/allocations/{id}", &one, None);
    let two = format!("/v1/allocations/{}", b["id"].as_str().unwrap());
    k.call(admin, "DELETE", "/v1/allocations/{id}", &two, None);
    k.call(
        admin,
        "DELETE",
        "/v1/projects/{name}",
        "/v1/projects/team",
        None,
    );

    // The agents' side: a new host enrolls, registers and heartbeats.
    let (st, e) = k.call(
        admin,
        "POST",
        "/v1/agents/enroll",
        "/v1/agents/enroll",
        Some(json!({"host": "h9"})),
    );
    assert_eq!(st, 201, "{e}");
    let cred = e["token"].as_str().unwrap().to_string();
    let reg = json!({"name": "h9", "address": "127.0.0.1", "serve_port": 7009,
        "socket_dir": "/run/vgpu/sockets", "gpus": [{"uuid": "SIM-GPU-h9-0", "index": 0,
        "model": "sim", "pci_bus_id": "0000:00:00.0", "numa_node": null, "sm_count": 132,
        "memory_bytes": 1u64 << 34, "sim": true}], "gpu_source": "sim"});
    k.call(
        Some(&cred),
        "POST",
        "/v1/agents/register",
        "/v1/agents/register",
        Some(reg),
    );
    let hb = json!({"workers": []});
    k.call(
        Some(&cred),
        "POST",
        "/v1/agents/{name}/heartbeat",
        "/v1/agents/h9/heartbeat",
        Some(hb),
    );

    let documented: BTreeSet<(String, String)> = k.doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|m| ["get", "post", "put", "patch", "delete"].contains(&m.as_str()))
                .map(move |m| (m.clone(), path.clone()))
        })
        .collect();
    let missed: Vec<_> = documented.difference(&k.covered).collect();
    assert!(
        missed.is_empty(),
        "documented operations this test did not answer: {missed:?}"
    );
    assert_eq!(documented.len(), 24, "operations: {documented:?}");
    assert!(
        k.errors.is_empty(),
        "answers that drift from the document:\n{}",
        k.errors.join("\n")
    );
}

/// The validator itself: what it must refuse.
#[test]
fn the_validator_refuses_drift() {
    let doc = json!({"components": {"schemas": {
        "A": {"type": "object", "required": ["x"], "properties": {"x": {"type": "integer"},
            "y": {"type": ["string", "null"]}}},
        "B": {"allOf": [{"$ref": "#/components/schemas/A"},
            {"type": "object", "properties": {"z": {"type": "boolean"}}, "required": ["z"]}]}
    }}});
    let check = |name: &str, v: Value| {
        let mut e = Vec::new();
        validate(
            &doc,
            &json!({"$ref": format!("#/components/schemas/{name}")}),
            &v,
            "$",
            &mut e,
        );
        e
    };
    assert!(check("A", json!({"x": 1, "y": null})).is_empty());
    assert!(check("B", json!({"x": 1, "z": true, "y": "s"})).is_empty());
    assert_eq!(
        check("A", json!({"x": 1, "w": 2})).len(),
        1,
        "an undocumented property"
    );
    assert_eq!(
        check("A", json!({"y": "s"})).len(),
        1,
        "a missing required property"
    );
    assert_eq!(check("A", json!({"x": "1"})).len(), 1, "a wrong type");
    assert_eq!(
        check("B", json!({"x": 1})).len(),
        1,
        "a flattened part's required property"
    );
    assert_eq!(check("B", json!({"x": 1, "z": true, "q": 0})).len(), 1);
}
