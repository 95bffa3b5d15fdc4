//! The network fallback: a VM whose host has no free GPU gets a slice on another host. The VM
//! host's `vhost-gpu` (started with `--remote HOST:PORT`) still owns the VM's vhost-user device
//! and guest memory; for every message it reads the bulk data the message names out of guest
//! memory, sends message and data in one frame over TCP, and writes the reply and returned data
//! back into guest memory. The GPU host's `vhost-gpu --listen ADDR:PORT` runs each connection as
//! one slice: its own executor, with the limits the session asked for.
//!
//! The listener starts one process per connection ([`server::serve`]), so remote slices never
//! share a GPU address space.
//!
//! Wire format (little-endian), after the TCP connection opens: TLS 1.3 ([`tls`]), then inside
//! it:
//! - [`frame::Challenge`] (a fresh nonce, the idle timeout) from the server;
//!   [`frame::SessionHeader`] (the slice asked for, and an HMAC-SHA256 with the pool's shared
//!   secret over the TLS session's binding, the nonce and the header) from the client;
//!   [`frame::SessionReply`] (accepted with the server's own proof, or why not) from the
//!   server.
//! - Then, per message: [`frame::RequestHeader`], the message, the data-in bytes; the server
//!   answers every request with [`frame::ReplyHeader`], the reply (empty when none was wanted)
//!   and the data-out bytes.

pub mod client;
pub mod frame;
pub mod server;
pub mod tls;

pub use client::RemoteSession;
pub use frame::{FrameError, Secret, SessionParams};
pub use server::{ServeError, SessionOptions, Timeouts, serve, serve_connection};
