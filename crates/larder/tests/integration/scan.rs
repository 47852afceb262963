//! Scanning: sizes from headers, orientation, pairing, and problems as findings.

use std::path::{Path, PathBuf};

use larder::{CaptionSource, Config, FindingKind, ImageFormat, ScanReport, scan};

use crate::{file, image};

fn scan_folder(dir: &Path) -> ScanReport {
    scan(&Config::for_folder(dir)).expect("scan")
}

fn kinds(report: &ScanReport) -> Vec<(FindingKind, String)> {
    report
        .findings
        .iter()
        .map(|f| {
            (
                f.kind,
                f.path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

#[test]
fn reads_sizes_of_every_format_recursively_in_path_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    image(dir.path(), "b.png", 30, 20, Some("b"));
    image(dir.path(), "a.jpg", 64, 48, Some("a"));
    image(dir.path(), "sub/c.webp", 17, 33, Some("c"));
    image(dir.path(), "UPPER.JPEG", 8, 8, Some("u"));
    let report = scan_folder(dir.path());
    let got: Vec<(String, u32, u32, ImageFormat)> = report.datasets[0]
        .images
        .iter()
        .map(|i| {
            (
                i.path
                    .strip_prefix(dir.path())
                    .expect("inside")
                    .display()
                    .to_string(),
                i.width,
                i.height,
                i.format,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("UPPER.JPEG".into(), 8, 8, ImageFormat::Jpeg),
            ("a.jpg".into(), 64, 48, ImageFormat::Jpeg),
            ("b.png".into(), 30, 20, ImageFormat::Png),
            ("sub/c.webp".into(), 17, 33, ImageFormat::Webp),
        ]
    );
    assert!(report.findings.is_empty(), "{:?}", report.findings);
}

#[test]
fn exif_rotation_swaps_width_and_height_like_exif_transpose() {
    let dir = tempfile::tempdir().expect("tempdir");
    let jpeg = larder_synth::encode(&larder_synth::render(64, 48, 3), larder_synth::Format::Jpeg)
        .expect("encode");
    for (name, orientation) in [("r6.jpg", 6), ("r8.jpg", 8), ("r3.jpg", 3), ("r1.jpg", 1)] {
        std::fs::write(
            dir.path().join(name),
            larder_synth::with_jpeg_orientation(&jpeg, orientation),
        )
        .expect("write");
    }
    let report = scan_folder(dir.path());
    let got: Vec<(u32, u32, u8)> = report.datasets[0]
        .images
        .iter()
        .map(|i| (i.width, i.height, i.orientation))
        .collect();
    // Sorted by name: r1, r3, r6, r8.
    assert_eq!(
        got,
        vec![(64, 48, 1), (64, 48, 3), (48, 64, 6), (48, 64, 8)]
    );
}

/// CRC-32 (IEEE), for writing a valid PNG chunk.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn png_exif_chunk_orientation_is_applied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let png = larder_synth::encode(&larder_synth::render(40, 10, 3), larder_synth::Format::Png)
        .expect("encode");
    // The TIFF block from a JPEG's APP1 segment: skip SOI, marker, length and "Exif\0\0".
    let jpeg = larder_synth::with_jpeg_orientation(&[0xFF, 0xD8], 6);
    let tiff = &jpeg[12..];
    let mut chunk = Vec::new();
    chunk.extend_from_slice(&(tiff.len() as u32).to_be_bytes());
    chunk.extend_from_slice(b"eXIf");
    chunk.extend_from_slice(tiff);
    chunk.extend_from_slice(&crc32(&chunk[4..]).to_be_bytes());
    // After the signature (8) and IHDR (25).
    let mut out = png[..33].to_vec();
    out.extend_from_slice(&chunk);
    out.extend_from_slice(&png[33..]);
    std::fs::write(dir.path().join("p.png"), out).expect("write");
    let img = &scan_folder(dir.path()).datasets[0].images[0];
    assert_eq!((img.width, img.height, img.orientation), (10, 40, 6));
}

#[test]
fn webp_exif_chunk_orientation_is_applied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let simple = larder_synth::encode(&larder_synth::render(40, 10, 3), larder_synth::Format::Webp)
        .expect("encode");
    // An extended (VP8X) WebP: the VP8X chunk with the EXIF flag and the canvas size, the
    // image chunk of the simple file, then an EXIF chunk holding the TIFF block.
    let jpeg = larder_synth::with_jpeg_orientation(&[0xFF, 0xD8], 8);
    let tiff = &jpeg[12..];
    let mut body = b"WEBP".to_vec();
    body.extend_from_slice(b"VP8X");
    body.extend_from_slice(&10u32.to_le_bytes());
    body.extend_from_slice(&[0x08, 0, 0, 0]);
    body.extend_from_slice(&39u32.to_le_bytes()[..3]);
    body.extend_from_slice(&9u32.to_le_bytes()[..3]);
    body.extend_from_slice(&simple[12..]);
    body.extend_from_slice(b"EXIF");
    body.extend_from_slice(&(tiff.len() as u32).to_le_bytes());
    body.extend_from_slice(tiff);
    if tiff.len() % 2 == 1 {
        body.push(0);
    }
    let mut file = b"RIFF".to_vec();
    file.extend_from_slice(&(body.len() as u32).to_le_bytes());
    file.extend_from_slice(&body);
    std::fs::write(dir.path().join("x.webp"), file).expect("write");
    let report = scan_folder(dir.path());
    assert!(
        report
            .findings
            .iter()
            .all(|f| f.kind == FindingKind::MissingCaption),
        "{:?}",
        report.findings
    );
    let img = &report.datasets[0].images[0];
    assert_eq!((img.width, img.height, img.orientation), (10, 40, 8));
}

#[test]
fn exif_after_the_first_page_is_still_found() {
    // A JPEG whose EXIF block sits behind 20 KiB of other metadata (an ICC profile, say).
    let dir = tempfile::tempdir().expect("tempdir");
    let jpeg = larder_synth::encode(&larder_synth::render(64, 32, 3), larder_synth::Format::Jpeg)
        .expect("encode");
    let rotated = larder_synth::with_jpeg_orientation(&jpeg, 6);
    let mut out = rotated[..2].to_vec();
    for _ in 0..2 {
        out.extend_from_slice(&[0xFF, 0xE2]);
        out.extend_from_slice(&10_002u16.to_be_bytes());
        out.extend_from_slice(&[0u8; 10_000]);
    }
    out.extend_from_slice(&rotated[2..]);
    std::fs::write(dir.path().join("big_header.jpg"), out).expect("write");
    let img = &scan_folder(dir.path()).datasets[0].images[0];
    assert_eq!((img.width, img.height, img.orientation), (32, 64, 6));
}

#[test]
fn broken_files_become_findings_and_are_left_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    image(dir.path(), "good.jpg", 32, 32, Some("ok"));
    let cut = |name: &str, w, h| {
        let p = image(dir.path(), name, w, h, None);
        let bytes = std::fs::read(&p).expect("read");
        std::fs::write(&p, &bytes[..bytes.len() * 2 / 3]).expect("truncate");
    };
    cut("cut.jpg", 64, 64);
    cut("cut.png", 64, 64);
    cut("cut.webp", 64, 64);
    file(dir.path(), "empty.png", "");
    file(dir.path(), "text.jpg", "not an image at all");
    std::fs::write(
        dir.path().join("anim.gif"),
        b"GIF89a\x01\x00\x01\x00\x00\x00\x00;",
    )
    .expect("gif");
    std::fs::write(
        dir.path().join("real.webp"),
        b"GIF89a\x01\x00\x01\x00\x00\x00\x00;",
    )
    .expect("misnamed");
    let report = scan_folder(dir.path());
    assert_eq!(report.datasets[0].images.len(), 1);
    let mut got = kinds(&report);
    got.retain(|(k, _)| *k != FindingKind::MissingCaption);
    assert_eq!(
        got,
        vec![
            (FindingKind::Empty, "empty.png".into()),
            (FindingKind::Truncated, "cut.jpg".into()),
            (FindingKind::Truncated, "cut.png".into()),
            (FindingKind::Truncated, "cut.webp".into()),
            (FindingKind::Unsupported, "anim.gif".into()),
            (FindingKind::Unsupported, "real.webp".into()),
            (FindingKind::Unsupported, "text.jpg".into()),
        ]
    );
    assert!(report.findings.iter().all(|f| !f.detail.is_empty()));
}

#[test]
fn hidden_entries_and_ai_toolkit_cache_folders_are_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    image(dir.path(), "keep.jpg", 16, 16, Some("k"));
    image(dir.path(), ".hidden.jpg", 16, 16, None);
    image(dir.path(), ".git/x.jpg", 16, 16, None);
    image(dir.path(), "_latent_cache/y.png", 16, 16, None);
    image(dir.path(), "_controls/z.png", 16, 16, None);
    let report = scan_folder(dir.path());
    assert_eq!(report.datasets[0].images.len(), 1);
    assert!(report.findings.is_empty(), "{:?}", report.findings);
}

#[test]
fn captions_masks_and_controls_pair_by_stem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let imgs = root.join("imgs");
    image(&imgs, "a.jpg", 16, 16, Some("  cat, sitting \n"));
    image(&imgs, "b.jpg", 16, 16, Some("   \n"));
    image(&imgs, "c.jpg", 16, 16, None);
    image(&root.join("masks"), "a.png", 8, 8, None);
    image(&root.join("masks"), "b.jpg", 8, 8, None);
    image(&root.join("masks"), "b.png", 8, 8, None);
    image(&root.join("ctl"), "a.webp", 8, 8, None);
    image(&root.join("ctl"), "c.jpg", 8, 8, None);
    let path = file(
        root,
        "c.yaml",
        "datasets:\n  - folder_path: imgs\n    default_caption: a photo\n    mask_path: masks\n    control_path: [ctl]\n    replacements: ['cat|dog']\n",
    );
    let config = Config::load(&path).expect("config");
    let report = scan(&config).expect("scan");
    let images = &report.datasets[0].images;
    assert_eq!(images[0].caption, "dog, sitting");
    assert_eq!(images[0].caption_source, CaptionSource::File);
    assert_eq!(
        (images[1].caption.as_str(), images[1].caption_source),
        ("a photo", CaptionSource::Default)
    );
    assert_eq!(images[2].caption_source, CaptionSource::Default);
    assert_eq!(
        images[0].mask.as_deref(),
        Some(root.join("masks/a.png").as_path())
    );
    // .jpg comes before .png in AI Toolkit's extension order.
    assert_eq!(
        images[1].mask.as_deref(),
        Some(root.join("masks/b.jpg").as_path())
    );
    assert_eq!(images[2].mask, None);
    assert_eq!(images[0].controls, vec![Some(root.join("ctl/a.webp"))]);
    assert_eq!(images[1].controls, vec![None]);
    assert_eq!(
        kinds(&report),
        vec![
            (FindingKind::MissingMask, "c.jpg".into()),
            (FindingKind::MissingControl, "b.jpg".into())
        ]
    );
}

#[test]
fn nested_mask_folders_are_not_scanned_as_images() {
    let dir = tempfile::tempdir().expect("tempdir");
    image(dir.path(), "a.jpg", 16, 16, Some("a"));
    image(dir.path(), "masks/a.png", 16, 16, None);
    let path = file(
        dir.path(),
        "c.yaml",
        "datasets:\n  - folder_path: .\n    mask_path: masks\n",
    );
    let report = scan(&Config::load(&path).expect("config")).expect("scan");
    assert_eq!(report.datasets[0].images.len(), 1);
    assert!(report.datasets[0].images[0].mask.is_some());
}

#[test]
fn duplicate_stems_and_missing_captions_are_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    image(dir.path(), "x.jpg", 16, 16, Some("x"));
    image(dir.path(), "x.png", 16, 16, None);
    image(dir.path(), "y.png", 16, 16, None);
    let report = scan_folder(dir.path());
    assert_eq!(report.datasets[0].images.len(), 3);
    assert_eq!(
        kinds(&report),
        vec![
            (FindingKind::DuplicateStem, "x.png".into()),
            (FindingKind::MissingCaption, "y.png".into())
        ]
    );
    // Both share x.txt, as in AI Toolkit.
    assert_eq!(report.datasets[0].images[1].caption, "x");
}

#[test]
fn metadata_files_list_images_and_sizes_without_opening_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    image(dir.path(), "a.jpg", 64, 48, None);
    image(dir.path(), "b.png", 30, 20, Some("from file"));
    // The sizes in the JSONL differ from the files on purpose: trusted means not opened.
    let jsonl = file(
        dir.path(),
        "meta.jsonl",
        "{\"path\": \"a.jpg\", \"caption\": \"meta a\", \"width\": 640, \"height\": 480}\n\n{\"path\": \"b.png\"}\n{\"path\": \"gone.jpg\", \"width\": 1, \"height\": 1}\n",
    );
    let csv = file(
        dir.path(),
        "meta.csv",
        "path,caption,width,height\na.jpg,\"meta, a\",640,480\nb.png,,,\n",
    );
    file(
        dir.path(),
        "aitk.json",
        "{\"b.png\": {\"caption\": \"json b\", \"caption_short\": \"b\"}, \"a.jpg\": {}}",
    );
    for (meta, first_caption) in [(&jsonl, "meta a"), (&csv, "meta, a")] {
        let config = Config::load(file(
            dir.path(),
            "c.yaml",
            &format!("datasets:\n  - dataset_path: {}\n", meta.display()),
        ))
        .expect("config");
        let report = scan(&config).expect("scan");
        let images = &report.datasets[0].images;
        assert_eq!(
            (images[0].width, images[0].height),
            (640, 480),
            "{}",
            meta.display()
        );
        assert_eq!(images[0].caption, first_caption);
        assert_eq!((images[1].width, images[1].height), (30, 20));
        assert_eq!(images[1].caption, "from file");
    }
    let report = scan(
        &Config::load(file(
            dir.path(),
            "c.yaml",
            "datasets:\n  - dataset_path: meta.jsonl\n",
        ))
        .expect("config"),
    )
    .expect("scan");
    assert_eq!(
        kinds(&report),
        vec![(FindingKind::MissingImage, "gone.jpg".into())]
    );

    let config = Config::load(file(
        dir.path(),
        "j.yaml",
        "datasets:\n  - dataset_path: aitk.json\n    use_short_captions: true\n",
    ))
    .expect("config");
    let report = scan(&config).expect("scan");
    let images = &report.datasets[0].images;
    assert_eq!(
        images[0].path.file_name().and_then(|n| n.to_str()),
        Some("b.png")
    );
    assert_eq!(
        (images[0].caption.as_str(), images[0].caption_source),
        ("b", CaptionSource::Metadata)
    );
    assert_eq!((images[1].width, images[1].height), (64, 48));
}

#[test]
fn malformed_metadata_is_an_error_naming_the_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    file(dir.path(), "m.jsonl", "{\"path\": \"a.jpg\"}\n{oops\n");
    let config = Config::load(file(
        dir.path(),
        "c.yaml",
        "datasets:\n  - dataset_path: m.jsonl\n",
    ))
    .expect("config");
    let err = scan(&config).expect_err("malformed");
    assert!(
        err.to_string().contains("m.jsonl") && err.to_string().contains("line 2"),
        "{err}"
    );
}

#[test]
fn the_sample_dataset_scans_with_its_documented_findings() {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/sample/config.yaml");
    let config = Config::load(&sample).expect("sample config");
    let report = scan(&config).expect("scan");
    assert_eq!(report.datasets[0].images.len(), 18);
    let rotated = report.datasets[0]
        .images
        .iter()
        .find(|i| i.path.ends_with("phone_rotated.jpg"))
        .expect("rotated photo");
    assert_eq!((rotated.width, rotated.height), (480, 640));
    let got = kinds(&report);
    assert!(
        got.contains(&(FindingKind::Truncated, "broken_cut.jpg".into())),
        "{got:?}"
    );
    assert!(
        got.contains(&(FindingKind::Unsupported, "not_an_image.png".into())),
        "{got:?}"
    );
}

mod robustness {
    use proptest::prelude::*;

    use larder::{Config, FindingKind};

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Whatever bytes sit behind an image name — damaged headers, cut files, other formats —
        /// the scan returns the image or a finding, never a panic or an error.
        #[test]
        fn arbitrary_bytes_are_an_image_or_a_finding(
            prefix in prop::sample::select(vec![
                b"\xFF\xD8\xFF\xE1".to_vec(),
                b"\x89PNG\r\n\x1a\n".to_vec(),
                b"RIFF\x10\x00\x00\x00WEBPVP8X".to_vec(),
                Vec::new(),
            ]),
            body in prop::collection::vec(any::<u8>(), 0..600),
            ext in prop::sample::select(vec!["jpg", "png", "webp"]),
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let bytes = [prefix, body].concat();
            std::fs::write(dir.path().join(format!("x.{ext}")), &bytes).expect("write");
            let report = larder::scan(&Config::for_folder(dir.path())).expect("a folder always scans");
            let images = report.datasets[0].images.len();
            let broken = report.findings.iter().filter(|f| f.kind.excludes_image()).count();
            prop_assert_eq!(images + broken, 1, "{:?}", report.findings);
            prop_assert!(report.findings.iter().all(|f| f.kind != FindingKind::DuplicateStem));
        }

        /// Any text given as a config is a config or an error naming the file, never a panic.
        #[test]
        fn arbitrary_yaml_is_a_config_or_an_error(text in "(datasets:\n  - )?[a-z_:\\[\\]{}, \n0-9.-]{0,80}") {
            let path = std::path::Path::new("fuzz.yaml");
            if let Err(e) = Config::from_yaml(&text, path) {
                prop_assert!(e.to_string().contains("fuzz.yaml"), "{}", e);
            }
        }
    }
}

/// A valid PNG of `w`×`h` black pixels (1-bit grayscale), written without ever holding the
/// pixels: the zlib stream is built by hand as one literal zero followed by 258-byte copies of
/// it, so a 40000×40000 image takes about a megabyte and a few milliseconds.
fn black_png(w: u32, h: u32) -> Vec<u8> {
    struct Bits {
        out: Vec<u8>,
        acc: u64,
        n: u32,
    }
    impl Bits {
        /// Appends the low `len` bits of `v`, least significant first (deflate's bit order).
        fn put(&mut self, v: u32, len: u32) {
            self.acc |= u64::from(v) << self.n;
            self.n += len;
            while self.n >= 8 {
                self.out.push(self.acc as u8);
                self.acc >>= 8;
                self.n -= 8;
            }
        }
        /// Appends a Huffman code, which deflate stores most significant bit first.
        fn code(&mut self, code: u32, len: u32) {
            self.put(code.reverse_bits() >> (32 - len), len);
        }
    }
    let raw = u64::from(h) * (1 + u64::from(w.div_ceil(8)));
    let mut bits = Bits {
        out: vec![0x78, 0x01],
        acc: 0,
        n: 0,
    };
    bits.put(1, 1); // last block
    bits.put(1, 2); // fixed Huffman codes
    let literal_zero = |b: &mut Bits| b.code(0x30, 8);
    literal_zero(&mut bits);
    let mut left = raw - 1;
    while left >= 258 {
        bits.code(0xC5, 8); // length 258 (symbol 285)
        bits.code(0, 5); // distance 1
        left -= 258;
    }
    for _ in 0..left {
        literal_zero(&mut bits);
    }
    bits.code(0, 7); // end of block
    bits.put(0, 7); // flush to a byte boundary
    let mut zlib = bits.out;
    // Adler-32 of zeros: a stays 1, b adds 1 per byte.
    let adler = ((raw % 65521) << 16) as u32 | 1;
    zlib.extend_from_slice(&adler.to_be_bytes());

    let table: Vec<u32> = (0..256u32)
        .map(|n| {
            (0..8).fold(n, |c, _| {
                if c & 1 == 1 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                }
            })
        })
        .collect();
    let crc = |bytes: &[u8]| {
        !bytes.iter().fold(!0u32, |c, &b| {
            table[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8)
        })
    };
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        png.extend_from_slice(&body);
        png.extend_from_slice(&crc(&body).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[1, 0, 0, 0, 0]); // 1-bit grayscale, no interlace
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &zlib);
    chunk(b"IEND", &[]);
    png
}

#[test]
fn the_hand_built_png_decodes_to_black_pixels() {
    // The writer the decompression-bomb test relies on, checked on a size a decoder can take.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("small.png");
    std::fs::write(&path, black_png(1000, 37)).expect("write");
    let img = image::open(&path).expect("a valid PNG").into_luma8();
    assert_eq!(img.dimensions(), (1000, 37));
    assert!(img.pixels().all(|p| p.0[0] == 0));
}

#[test]
fn decompression_bombs_are_findings_from_the_header_without_decoding() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bomb = black_png(40_000, 40_000);
    assert!(bomb.len() < 4 << 20, "{} bytes", bomb.len());
    std::fs::write(dir.path().join("bomb.png"), &bomb).expect("write");
    image(dir.path(), "fine.jpg", 64, 48, Some("x"));
    file(dir.path(), "bomb.txt", "x");

    let report = scan_folder(dir.path());
    let names: Vec<&str> = report.datasets[0]
        .images
        .iter()
        .filter_map(|i| i.path.file_name()?.to_str())
        .collect();
    assert_eq!(names, ["fine.jpg"], "the bomb is left out of the plan");
    let f = report
        .findings
        .iter()
        .find(|f| f.kind == FindingKind::TooLarge)
        .expect("a too_large finding");
    assert!(f.path.ends_with("bomb.png"));
    assert!(
        f.detail.contains("40000x40000")
            && f.detail.contains("1600000000")
            && f.detail
                .contains(&larder::DEFAULT_MAX_IMAGE_PIXELS.to_string())
            && f.detail.contains("max_image_pixels"),
        "{}",
        f.detail
    );

    // Lifting the limit keeps it, still without decoding (the scan reads headers only).
    let config = Config::load(file(
        dir.path(),
        "c.yaml",
        &format!(
            "datasets:\n  - folder_path: {:?}\nlarder:\n  max_image_pixels: 0\n",
            dir.path()
        ),
    ))
    .expect("config");
    let report = scan(&config).expect("scan");
    assert!(
        report
            .findings
            .iter()
            .all(|f| f.kind != FindingKind::TooLarge)
    );
    assert_eq!(report.datasets[0].images.len(), 2);
}

#[test]
fn the_pixel_limit_is_inclusive_and_applies_to_metadata_sizes() {
    let dir = tempfile::tempdir().expect("tempdir");
    image(dir.path(), "imgs/at.png", 10, 10, Some("x"));
    image(dir.path(), "imgs/over.png", 10, 11, Some("x"));
    image(dir.path(), "listed.png", 8, 8, Some("x"));
    // A metadata file's size is trusted, so the limit judges the size it gives.
    file(
        dir.path(),
        "meta.jsonl",
        "{\"path\": \"listed.png\", \"caption\": \"x\", \"width\": 50, \"height\": 50}\n",
    );
    let config = Config::load(file(
        dir.path(),
        "c.yaml",
        "datasets:\n  - folder_path: imgs\n  - dataset_path: meta.jsonl\nlarder:\n  max_image_pixels: 100\n",
    ))
    .expect("config");
    let report = scan(&config).expect("scan");
    assert_eq!(
        kinds(&report),
        vec![
            (FindingKind::TooLarge, "over.png".into()),
            (FindingKind::TooLarge, "listed.png".into())
        ]
    );
    assert_eq!(report.datasets[0].images.len(), 1);
}

#[test]
fn oversized_masks_controls_and_inpaint_images_leave_their_item_out() {
    // Regression: only dataset images were size-checked, so a decompression bomb given as a
    // control image was decoded by `prepare`.
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    for stem in ["ok", "big_mask", "big_control", "big_inpaint"] {
        image(
            &root.join("imgs"),
            &format!("{stem}.jpg"),
            16,
            16,
            Some("x"),
        );
        image(&root.join("masks"), &format!("{stem}.png"), 10, 10, None);
        image(&root.join("ctl"), &format!("{stem}.png"), 10, 10, None);
        image(&root.join("inp"), &format!("{stem}.png"), 10, 10, None);
    }
    let job = |limit: u64| {
        file(
            root,
            "c.yaml",
            &format!(
                "datasets:\n  - folder_path: imgs\n    mask_path: masks\n    control_path: [ctl]\n    inpaint_path: inp\n    max_image_pixels: {limit}\n"
            ),
        )
    };
    // The images (16x16) are at the limit of 256 pixels and their partners (10x10) below it.
    let report = scan(&Config::load(job(256)).expect("config")).expect("scan");
    assert!(report.findings.is_empty(), "{:#?}", report.findings);
    assert_eq!(report.datasets[0].images.len(), 4);

    // Three partners above the limit, one of each kind: 20x20 is 400 pixels.
    image(&root.join("masks"), "big_mask.png", 20, 20, None);
    image(&root.join("ctl"), "big_control.png", 20, 20, None);
    image(&root.join("inp"), "big_inpaint.png", 20, 20, None);
    let report = scan(&Config::load(job(256)).expect("config")).expect("scan");
    let names: Vec<&str> = report.datasets[0]
        .images
        .iter()
        .filter_map(|i| i.path.file_name()?.to_str())
        .collect();
    assert_eq!(names, ["ok.jpg"]);
    let mut got: Vec<(FindingKind, String)> = report
        .findings
        .iter()
        .map(|f| {
            let rel = f.path.strip_prefix(root).expect("under root");
            (f.kind, rel.to_string_lossy().into_owned())
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (FindingKind::TooLarge, "ctl/big_control.png".into()),
            (FindingKind::TooLarge, "inp/big_inpaint.png".into()),
            (FindingKind::TooLarge, "masks/big_mask.png".into()),
        ]
    );
    let control = report
        .findings
        .iter()
        .find(|f| f.path.ends_with("big_control.png"))
        .expect("control finding");
    assert!(
        control.detail.contains("20x20 is 400 pixels")
            && control.detail.contains("control image of")
            && control.detail.contains("big_control.jpg")
            && control.detail.contains("max_image_pixels"),
        "{}",
        control.detail
    );
    assert!(FindingKind::TooLarge.excludes_image());

    // No limit: every item is kept, partners and all.
    let report = scan(&Config::load(job(0)).expect("config")).expect("scan");
    assert!(report.findings.is_empty(), "{:#?}", report.findings);
    assert_eq!(report.datasets[0].images.len(), 4);
}

#[test]
fn videos_in_an_image_dataset_are_findings_that_say_where_they_are_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    image(dir.path(), "a.jpg", 16, 16, Some("x"));
    // AI Toolkit's whole list, in mixed case; content does not matter, the extension does.
    for ext in ["mp4", "AVI", "mov", "webm", "mkv", "wmv", "m4v", "flv"] {
        file(dir.path(), &format!("clip.{ext}"), "not really a video");
    }
    file(
        dir.path(),
        "notes.md",
        "not an image either, and not reported",
    );
    let report = scan_folder(dir.path());
    let videos: Vec<_> = report
        .findings
        .iter()
        .filter(|f| f.kind == FindingKind::Unsupported)
        .collect();
    assert_eq!(videos.len(), 8, "{:#?}", report.findings);
    assert!(videos.iter().all(|f| {
        f.detail
            .contains("video datasets only (`num_frames` above 1")
    }));
    assert_eq!(report.datasets[0].images.len(), 1);
}

#[cfg(unix)]
#[test]
fn a_dangling_symlink_is_named_with_its_target() {
    let dir = tempfile::tempdir().expect("tempdir");
    image(dir.path(), "real.png", 16, 16, Some("x"));
    std::os::unix::fs::symlink(dir.path().join("real.png"), dir.path().join("good.png"))
        .expect("symlink");
    std::os::unix::fs::symlink("/nowhere/gone.png", dir.path().join("link.png")).expect("symlink");
    let report = scan_folder(dir.path());
    let mut got = kinds(&report);
    got.retain(|(k, _)| *k != FindingKind::MissingCaption);
    assert_eq!(got, vec![(FindingKind::DanglingSymlink, "link.png".into())]);
    let f = &report
        .findings
        .iter()
        .find(|f| f.kind == FindingKind::DanglingSymlink);
    let detail = &f.expect("finding").detail;
    assert!(
        detail.contains("dangling") && detail.contains("/nowhere/gone.png"),
        "{detail}"
    );
    // A link to a real image is read through the link.
    assert_eq!(report.datasets[0].images.len(), 2);
}

#[test]
fn controls_from_the_same_folder_are_other_images_of_it_drawn_from_the_seed() {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["a", "b", "c", "d"] {
        image(
            &dir.path().join("pairs"),
            &format!("{name}.png"),
            16,
            16,
            Some("x"),
        );
    }
    image(&dir.path().join("pairs/alone"), "e.png", 16, 16, Some("x"));
    let scanned = |seed: u64| {
        let config = file(
            dir.path(),
            "c.yaml",
            &format!(
                "larder:\n  seed: {seed}\ndatasets:\n  - folder_path: pairs\n    control_path: elsewhere\n    control_from_same_folder: true\n    num_controls_from_same_folder: 2\n"
            ),
        );
        let config = Config::load(&config).expect("config");
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
        let report = larder::scan(&config).expect("scan");
        assert!(report.findings.is_empty(), "{:#?}", report.findings);
        report.datasets[0].images.clone()
    };
    let images = scanned(1);
    assert_eq!(images.len(), 5);
    for img in &images {
        let controls: Vec<&Path> = img
            .controls
            .iter()
            .flatten()
            .map(PathBuf::as_path)
            .collect();
        if img.path.ends_with("e.png") {
            // Alone in its folder: AI Toolkit keeps the image itself as its control.
            assert_eq!(controls, [img.path.as_path()]);
        } else {
            // Two others of its own folder, in place of control_path's.
            assert_eq!(controls.len(), 2, "{controls:?}");
            assert_ne!(controls[0], controls[1]);
            for c in controls {
                assert_ne!(c, img.path);
                assert_eq!(c.parent(), img.path.parent());
            }
        }
    }
    assert_eq!(scanned(1), images, "the same seed draws the same controls");
    let other_seeds: Vec<_> = (2..8).map(scanned).collect();
    assert!(
        other_seeds.iter().any(|s| *s != images),
        "the seed draws them"
    );
}
