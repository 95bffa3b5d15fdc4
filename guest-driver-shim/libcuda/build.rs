//! Generates the table behind `cuGetProcAddress` from the real driver's recorded answers
//! (`symbols/probe-driver-580.tsv`). The exports themselves, their stubs and `lookup` come
//! from the route table (`src/routes.rs`) and CUDA 13.0's declarations, not from here.

use std::{fmt::Write, fs, path::Path};

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcuda.so.1");
    println!("cargo:rerun-if-changed=symbols/probe-driver-580.tsv");
    let table = proc_table();
    let out = std::env::var("OUT_DIR").expect("OUT_DIR");
    fs::write(Path::new(&out).join("probe.rs"), table).expect("write table");
}

/// (from CUDA version, status, symbol) as the probe recorded it.
type ProbeAnswer = (u32, u8, String);

/// `cuGetProcAddress` as NVIDIA's driver 580 answers it, from `symbols/probe-driver-580.tsv`
/// (recorded by `tests/gpu/probe_driver.c`): for each base name and flag value, the answers
/// in order of the CUDA version from which each holds.
/// Whether a symbol the driver answers with is exported is checked by the tests
/// (`procaddr::tests::whole_probe_table_is_reproduced`).
fn proc_table() -> String {
    use std::collections::BTreeMap;
    let text = fs::read_to_string("symbols/probe-driver-580.tsv").expect("probe table");
    // name -> flags -> [(from_version, status, symbol)]
    let mut map: BTreeMap<String, [Vec<ProbeAnswer>; 3]> = BTreeMap::new();
    let mut attributes = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        match f.as_slice() {
            ["procaddr", name, flags, from, result, status, symbol] => {
                let flags: usize = flags.parse().expect("flags");
                assert!(flags < 3, "flags {flags} in the probe table");
                assert_eq!(*result, "0", "the probe recorded a failing call for {name}");
                let status: u8 = status.parse().expect("status");
                let symbol = if status == 0 {
                    symbol.to_string()
                } else {
                    String::new()
                };
                map.entry(name.to_string()).or_default()[flags].push((
                    from.parse().expect("version"),
                    status,
                    symbol,
                ));
            }
            ["attribute", id, value] => attributes.push((
                id.parse::<u32>().expect("id"),
                value.parse::<i64>().expect("value"),
            )),
            _ => {}
        }
    }
    let mut s = String::from(
        "\n/// One answer of the real driver: from this CUDA version on, this status and symbol.\n\
         #[derive(Debug, Clone, Copy, PartialEq, Eq)]\n\
         pub struct ProcEntry { pub from_version: u32, pub status: u8, pub symbol: &'static str }\n\n\
         /// The real driver's answers for a base name and flag value (0 default, 1 legacy stream,\n\
         /// 2 per-thread default stream); `None` for a name it was not asked about.\n\
         pub fn proc_entries(name: &[u8], flags: usize) -> Option<&'static [ProcEntry]> {\n\
         \x20   let all: &'static [&'static [ProcEntry]; 3] = match name {\n",
    );
    for (name, per_flag) in &map {
        writeln!(s, "        b\"{name}\" => &[").unwrap();
        for entries in per_flag {
            s.push_str("            &[");
            for (v, st, sym) in entries {
                write!(
                    s,
                    "ProcEntry {{ from_version: {v}, status: {st}, symbol: \"{sym}\" }}, "
                )
                .unwrap();
            }
            s.push_str("],\n");
        }
        s.push_str("        ],\n");
    }
    s.push_str("        _ => return None,\n    };\n    all.get(flags).copied()\n}\n\n");
    s.push_str("/// Every base name the probe asked the real driver about.\n#[allow(dead_code)]\npub static PROBED_NAMES: &[&str] = &[\n");
    for name in map.keys() {
        writeln!(s, "    \"{name}\",").unwrap();
    }
    s.push_str("];\n\n/// Every device attribute of the real H200 (id, value), as its driver reported them.\n#[allow(dead_code)]\npub static H200_ATTRIBUTES: &[(u32, i64)] = &[\n");
    for (id, v) in &attributes {
        writeln!(s, "    ({id}, {v}),").unwrap();
    }
    s.push_str("];\n");
    s
}
