//! jupyter-audit: a Jupyter kernel proxy that keeps an audit trail.
//!
//! Modules, from the bytes on the wire up to the command line:
//! - [`wire`]: the Jupyter message format (framing, HMAC signatures, replay detection).
//! - [`connection`]: connection files (reading Jupyter's, writing the real kernel's).
//! - [`transport`]: the ZeroMQ sockets of the five channels; all socket code lives here.
//! - [`proxy`]: the relay between frontends and the real kernel.
//! - [`launcher`]: starting, signalling and reaping the real kernel process.
//! - [`kernelspec`]: writing audited kernelspecs (`install`).
//! - [`cli`]: argument definitions.

pub mod cli;
pub mod connection;
pub mod kernelspec;
pub mod launcher;
pub mod proxy;
pub mod transport;
pub mod wire;
