//! Tools that ship in the binary beside the service: a local receiver and the benchmark.

pub mod bench;
pub mod receive;
