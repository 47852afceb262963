//! Scanning: sizes from headers, orientation, pairing, and problems as findings.

use std::path::Path;

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
    let jpeg = larder::synth::encode(&larder::synth::render(64, 48, 3), ImageFormat::Jpeg)
        .expect("encode");
    for (name, orientation) in [("r6.jpg", 6), ("r8.jpg", 8), ("r3.jpg", 3), ("r1.jpg", 1)] {
        std::fs::write(
            dir.path().join(name),
            larder::synth::with_jpeg_orientation(&jpeg, orientation),
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
    let png =
        larder::synth::encode(&larder::synth::render(40, 10, 3), ImageFormat::Png).expect("encode");
    // The TIFF block from a JPEG's APP1 segment: skip SOI, marker, length and "Exif\0\0".
    let jpeg = larder::synth::with_jpeg_orientation(&[0xFF, 0xD8], 6);
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
    let simple = larder::synth::encode(&larder::synth::render(40, 10, 3), ImageFormat::Webp)
        .expect("encode");
    // An extended (VP8X) WebP: the VP8X chunk with the EXIF flag and the canvas size, the
    // image chunk of the simple file, then an EXIF chunk holding the TIFF block.
    let jpeg = larder::synth::with_jpeg_orientation(&[0xFF, 0xD8], 8);
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
    let jpeg = larder::synth::encode(&larder::synth::render(64, 32, 3), ImageFormat::Jpeg)
        .expect("encode");
    let rotated = larder::synth::with_jpeg_orientation(&jpeg, 6);
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
