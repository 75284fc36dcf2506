//! Agent tunnels, wire-compatible with rancher/remotedialer: the message codec, multiplexed streams
//! with Pause/Resume flow control, sessions on either end, the server's session registry and dialer.

pub mod buffer;
pub mod codec;
mod connection;
pub mod dial;
pub mod frame;
#[cfg(test)]
mod go_model;
pub mod mux;
pub mod registry;
pub mod session;
pub mod stream;
pub mod websocket;

pub use registry::{ClientEvent, Route, TunnelRegistry};
pub use session::{Role, Session};
pub use stream::TunnelStream;
