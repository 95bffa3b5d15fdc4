//! Bearer tokens. Only SHA-256 hashes of tokens are kept in memory, in the config file and in the
//! store; a presented token is hashed and compared.

use std::collections::HashMap;
use std::io::Read;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Who a request comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    Admin,
    /// The pool's enrolment token (`--agent-token`): only enrols hosts that have no credential.
    Agent,
    /// One host's own credential (from enrolment): registers and heartbeats that host only.
    Host(String),
    Project(String),
}

pub fn sha256_hex(s: &str) -> String {
    let d = Sha256::digest(s.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Random bytes from the kernel.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    b
}

/// A new random token (`vgpu_` + 48 hex chars).
pub fn new_token() -> String {
    let b: [u8; 24] = random_bytes();
    format!(
        "vgpu_{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

/// Optional JSON config file (`--auth-config`): hashes only.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    #[serde(default)]
    pub admin_token_sha256: Vec<String>,
    #[serde(default)]
    pub agent_token_sha256: Vec<String>,
}

/// Static tokens (admin, agent); project tokens live in the pool with the projects.
#[derive(Debug, Default, Clone)]
pub struct Auth {
    statics: HashMap<String, Role>,
}

impl Auth {
    pub fn new(admin_tokens: &[String], agent_tokens: &[String], file: Option<&AuthFile>) -> Self {
        let mut statics = HashMap::new();
        for t in admin_tokens.iter().filter(|t| !t.is_empty()) {
            statics.insert(sha256_hex(t), Role::Admin);
        }
        for t in agent_tokens.iter().filter(|t| !t.is_empty()) {
            statics.insert(sha256_hex(t), Role::Agent);
        }
        if let Some(f) = file {
            for h in &f.admin_token_sha256 {
                statics.insert(h.to_lowercase(), Role::Admin);
            }
            for h in &f.agent_token_sha256 {
                statics.insert(h.to_lowercase(), Role::Agent);
            }
        }
        Auth { statics }
    }

    pub fn is_empty(&self) -> bool {
        !self.statics.values().any(|r| *r == Role::Admin)
    }

    /// Role for a token hash among the static tokens.
    pub fn static_role(&self, hash: &str) -> Option<Role> {
        self.statics.get(hash).cloned()
    }
}

/// The token from an `Authorization: Bearer ...` header value.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let h = header?.trim();
    let (scheme, tok) = h.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !tok.trim().is_empty()).then(|| tok.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashing_and_roles() {
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let a = Auth::new(&["adm".into()], &["agt".into()], None);
        assert_eq!(a.static_role(&sha256_hex("adm")), Some(Role::Admin));
        assert_eq!(a.static_role(&sha256_hex("agt")), Some(Role::Agent));
        assert_eq!(a.static_role(&sha256_hex("nope")), None);
        assert_eq!(bearer(Some("Bearer  xyz ")), Some("xyz"));
        assert_eq!(bearer(Some("Basic xyz")), None);
        assert_eq!(bearer(None), None);
        let t1 = new_token();
        assert!(t1.starts_with("vgpu_") && t1.len() == 53 && t1 != new_token());
    }
}
