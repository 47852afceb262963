//! The safetensors header parser on arbitrary bytes: it must return a header or an error —
//! never panic, hang or allocate what the bytes merely claim — and an accepted header must
//! describe tensors that lie inside the file without overlapping.
#![no_main]

use std::path::Path;

use larder::fastload::Header;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.safetensors");
    // The input is a whole file: its first bytes are the header, the rest its data.
    if let Ok(header) = Header::from_prefix(path, data, data.len() as u64) {
        let mut end = 0;
        for t in &header.tensors {
            assert!(t.range.start >= end, "overlap at {}", t.name);
            assert!(t.range.end <= header.data_len, "{} past the data", t.name);
            let elements: u64 = t.shape.iter().map(|&d| d as u64).product();
            assert_eq!(elements * t.dtype.bitsize() as u64, 8 * t.nbytes(), "{}", t.name);
            assert!(header.get(&t.name).is_some());
            end = t.range.end;
        }
        assert_eq!(header.data_start + header.data_len, data.len() as u64);
    }
});
