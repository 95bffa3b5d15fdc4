//! The HTTP client for the controller's API (the agent's and `vgpuctl`'s).

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Errors setting up the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientSetupError {
    #[error("Cannot read CA certificate {}", path.display())]
    ReadCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("No PEM certificate in {}", .0.display())]
    NoCertificate(PathBuf),
}

/// HTTP client for the controller's API: global timeout, HTTP error statuses returned as
/// values, and optionally an extra CA certificate (PEM) as the only trusted root.
pub fn http_client(
    ca_cert: Option<&Path>,
    timeout: Duration,
) -> Result<ureq::Agent, ClientSetupError> {
    let mut b = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false);
    if let Some(p) = ca_cert {
        let pem = std::fs::read(p).map_err(|source| ClientSetupError::ReadCa {
            path: p.to_path_buf(),
            source,
        })?;
        let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
            .filter_map(|i| match i {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            return Err(ClientSetupError::NoCertificate(p.to_path_buf()));
        }
        b = b.tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                .build(),
        );
    }
    Ok(b.build().new_agent())
}
