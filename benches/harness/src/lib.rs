//! Shared pieces of the benchmark tools (see docs/benchmarks.md).
pub mod http1;
