//! One module per subcommand.
pub mod bench;
pub mod bench_load;
pub mod bench_prepare;
pub mod bench_scan;
pub mod scan;
pub mod store;
