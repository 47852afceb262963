//! The scan's image header probe (format, size, EXIF orientation, completeness) on arbitrary
//! bytes: it must accept the bytes or turn them down — never panic, hang or allocate without
//! bound on a size field — and an accepted header must describe an image a trainer can use.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((_format, width, height, orientation)) = larder::probe_image_bytes(data) {
        assert!(width > 0 && height > 0, "{width}x{height}");
        assert!((1..=8).contains(&orientation), "orientation {orientation}");
    }
});
