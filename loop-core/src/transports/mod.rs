//! Transports whose data path is in Rust: the socket is read and written here,
//! and the protocol's callbacks are called directly, with no `Handle` per event.

pub mod stream;
mod write_buffer;

pub use stream::StreamTransport;
