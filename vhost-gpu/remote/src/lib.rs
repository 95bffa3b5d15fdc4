//! The network fallback: a VM whose host has no free GPU gets a slice on another host. The VM
//! host's `vhost-gpu` (started with `--remote HOST:PORT`) still owns the VM's vhost-user device
//! and guest memory; for every message it reads the bulk data the message names out of guest
//! memory, sends message and data in one frame over TCP, and writes the reply and returned data
//! back into guest memory. The GPU host's `vhost-gpu --listen ADDR:PORT` runs each connection as
//! one slice: its own executor, with the limits the session asked for.
//!
//! Wire format (little-endian), after the TCP connection opens:
//! - [`frame::Challenge`] (a fresh nonce) from the server; [`frame::SessionHeader`] (the slice
//!   asked for, and an HMAC-SHA256 over nonce and header with the pool's shared secret) from
//!   the client; [`frame::SessionReply`] from the server.
//! - Then, per message: [`frame::RequestHeader`], the message, the data-in bytes; the server
//!   answers every request with [`frame::ReplyHeader`], the reply (empty when none was wanted)
//!   and the data-out bytes.

pub mod client;
pub mod frame;
pub mod server;

pub use client::RemoteSession;
pub use frame::{FrameError, Secret, SessionParams};
pub use server::{ServeError, serve};
