//! vGPU pool controller: inventory of hosts and GPUs, slice placement (local first, network
//! fallback), leases renewed by agent heartbeats, projects with quotas, a REST/JSON API with an
//! OpenAPI document, bearer-token auth and Prometheus metrics.

pub mod api;
pub mod auth;
pub mod etcd_store;
pub mod libvirt;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod placement;
pub mod pool;
pub mod scheduler;
pub mod server;
pub mod store;
pub mod transfer;
