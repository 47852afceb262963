//! One module per subcommand.
pub mod bench_scan;
pub mod scan;
