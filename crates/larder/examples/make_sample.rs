//! Regenerates `examples/sample/`, the small dataset the README's quick start scans.
//!
//! Run from the repository root: `cargo run -p larder --example make_sample`. The files are
//! committed, so nobody needs to run this; it documents how they were made and remakes them
//! byte for byte.

use std::fs;
use std::path::Path;

use larder_synth::{Format, encode, render, with_jpeg_orientation, write_image};

/// (file name under images/, width, height, caption or None for "no caption file").
const IMAGES: &[(&str, u32, u32, Option<&str>)] = &[
    (
        "portrait_01.jpg",
        480,
        640,
        Some("[trigger], a portrait, soft light"),
    ),
    (
        "landscape_02.jpg",
        640,
        480,
        Some("[trigger], a landscape at dusk"),
    ),
    (
        "square_03.png",
        512,
        512,
        Some("[trigger], a square studio shot"),
    ),
    (
        "wide_04.webp",
        800,
        450,
        Some("[trigger], a cinematic wide frame"),
    ),
    ("tall_05.jpg", 300, 900, Some("[trigger], a tall banner")),
    ("panorama_06.png", 1000, 250, Some("[trigger], a panorama")),
    (
        "small_07.webp",
        256,
        256,
        Some("[trigger], a small thumbnail"),
    ),
    (
        "exact_08.jpg",
        768,
        768,
        Some("[trigger], exactly the resolution"),
    ),
    ("photo_09.jpg", 1000, 750, Some("[trigger], a 4:3 photo")),
    ("tiny_10.png", 96, 64, Some("[trigger], a tiny icon")),
    (
        "closeup_11.jpg",
        720,
        900,
        Some("[trigger], a close-up, detailed"),
    ),
    ("street_12.jpg", 900, 600, None),
    ("still_13.webp", 600, 600, Some("[trigger], a still life")),
    ("cover_14.jpg", 600, 800, Some("[trigger], a book cover")),
    (
        "sunset_15.jpg",
        1024,
        576,
        Some("[trigger], a sunset, warm colors"),
    ),
    (
        "nested/detail_16.jpg",
        640,
        640,
        Some("[trigger], a detail in a subfolder"),
    ),
    (
        "nested/door_17.png",
        400,
        600,
        Some("[trigger], a door, morning"),
    ),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new("examples/sample");
    let images = root.join("images");
    // config.yaml is written by hand and stays; the generated folders are made anew.
    for dir in ["images", "masks", "controls"] {
        let dir = root.join(dir);
        if dir.exists() {
            fs::remove_dir_all(dir)?;
        }
    }
    for dir in [
        images.join("nested"),
        root.join("masks"),
        root.join("controls"),
    ] {
        fs::create_dir_all(dir)?;
    }
    for (i, &(name, w, h, caption)) in IMAGES.iter().enumerate() {
        let path = images.join(name);
        write_image(&path, w, h, i as u64)?;
        if let Some(text) = caption {
            fs::write(path.with_extension("txt"), format!("{text}\n"))?;
        }
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        // Every image but the last has a mask and a control image, so the scan reports one
        // of each missing.
        if i + 1 < IMAGES.len() {
            let mask = image::imageops::grayscale(&render(w / 4, h / 4, 1000 + i as u64));
            mask.save(root.join("masks").join(format!("{stem}.png")))?;
            fs::write(
                root.join("controls").join(format!("{stem}.jpg")),
                encode(&render(w / 4, h / 4, 2000 + i as u64), Format::Jpeg)?,
            )?;
        }
    }

    // A phone photo: stored 640x480 landscape with EXIF orientation 6, displayed 480x640.
    let phone = with_jpeg_orientation(&encode(&render(640, 480, 99), Format::Jpeg)?, 6);
    fs::write(images.join("phone_rotated.jpg"), phone)?;
    fs::write(
        images.join("phone_rotated.txt"),
        "[trigger], a phone photo taken sideways\n",
    )?;

    // A JPEG cut off halfway, as an interrupted copy leaves it.
    let whole = encode(&render(640, 480, 7), Format::Jpeg)?;
    fs::write(images.join("broken_cut.jpg"), &whole[..whole.len() / 2])?;
    fs::write(
        images.join("broken_cut.txt"),
        "[trigger], never trained: the file is cut short\n",
    )?;
    // Bytes that are no image at all, under an image's name.
    fs::write(
        images.join("not_an_image.png"),
        b"this is a text file, not a PNG\n",
    )?;
    Ok(())
}
