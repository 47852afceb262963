//! larder's integration tests: one binary, one module per stage.

mod config;
mod diagnose;
mod distributed;
mod encode;
mod fastload;
mod interop;
mod layers;
mod load;
mod metrics;
mod plan;
mod remote;
mod scan;
mod store;
mod video;

use std::path::{Path, PathBuf};

/// Writes a synthetic image (format from the extension) and, when given, its caption.
pub fn image(dir: &Path, name: &str, w: u32, h: u32, caption: Option<&str>) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create folder");
    }
    larder_synth::write_image(&path, w, h, 1).expect("write image");
    if let Some(text) = caption {
        std::fs::write(path.with_extension("txt"), text).expect("write caption");
    }
    path
}

/// Writes `text` to `dir/name` and returns the path.
pub fn file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path
}
