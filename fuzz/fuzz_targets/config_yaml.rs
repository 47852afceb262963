//! The job-file reader on arbitrary text: it must return a config or an error naming where the
//! problem is — never panic, hang, or blow up on YAML's aliases — and an accepted config must
//! hold at least one dataset with a usable bucket divisibility.
#![no_main]

use std::path::Path;

use larder::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_yaml(text, Path::new("fuzz.yaml")) {
        Ok(config) => {
            assert!(!config.datasets.is_empty());
            assert!(config.divisibility > 0);
        }
        Err(e) => {
            // Every error names the file it is about.
            assert!(e.to_string().contains("fuzz.yaml"), "{e}");
        }
    }
});
