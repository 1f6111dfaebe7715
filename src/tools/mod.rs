//! Tools that ship in the binary beside the service: a local receiver, the benchmark and the
//! chaos soak.

pub mod bench;
pub mod receive;
pub mod soak;
