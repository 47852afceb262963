//! The `larder` binary, run as users run it: one test binary, one module per command group.

mod bench;
mod dashboard;
mod diagnose;
mod diagnose_models;
mod distributed;
mod doctor;
mod encode;
mod remote;
mod scan;
mod store;
mod wizard;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn larder(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_larder"))
        .args(args)
        .output()
        .expect("run larder")
}

pub fn sample_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/sample/config.yaml")
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
