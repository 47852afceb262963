//! Synthetic images for larder's tests, examples and benchmarks.
//!
//! larder's tests and benchmarks make their own data rather than download it. This crate is
//! theirs, not part of larder's API (it is not published). The images are
//! smooth gradients with a little blocky seeded texture, so that they are neither flat colour
//! nor incompressible noise, and every byte is a function of the arguments.

pub mod video;

use std::path::Path;

use image::{ImageEncoder, RgbImage};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The formats the images are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JPEG at quality 90.
    Jpeg,
    /// PNG.
    Png,
    /// Lossless WebP.
    Webp,
}

impl Format {
    /// The format a file extension names (jpg, jpeg, png, webp; any case).
    pub fn from_path(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "jpg" | "jpeg" => Some(Format::Jpeg),
            "png" => Some(Format::Png),
            "webp" => Some(Format::Webp),
            _ => None,
        }
    }
}

/// Renders a `width`×`height` RGB image determined by `seed`.
pub fn render(width: u32, height: u32, seed: u64) -> RgbImage {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let base: [f32; 3] = [rng.random(), rng.random(), rng.random()];
    let tilt: [f32; 3] = [rng.random(), rng.random(), rng.random()];
    let salt: u64 = rng.random();
    RgbImage::from_fn(width, height, |x, y| {
        let u = x as f32 / width.max(1) as f32;
        let v = y as f32 / height.max(1) as f32;
        // Texture in 8x8 blocks: a hash of the block's coordinates, a few levels deep.
        let block = (u64::from(x / 8) << 32) ^ u64::from(y / 8) ^ salt;
        let noise = (block.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 61) as f32 * 0.01;
        image::Rgb(std::array::from_fn(|c| {
            let t = base[c] * (1.0 - u) + tilt[c] * v + noise;
            (t.clamp(0.0, 1.0) * 255.0) as u8
        }))
    })
}

/// Encodes `img` in `format` (JPEG at quality 90, lossless WebP).
pub fn encode(img: &RgbImage, format: Format) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let (w, h) = img.dimensions();
    let res = match format {
        Format::Jpeg => image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8),
        Format::Png => image::codecs::png::PngEncoder::new(&mut out).write_image(
            img.as_raw(),
            w,
            h,
            image::ExtendedColorType::Rgb8,
        ),
        Format::Webp => image::codecs::webp::WebPEncoder::new_lossless(&mut out).write_image(
            img.as_raw(),
            w,
            h,
            image::ExtendedColorType::Rgb8,
        ),
    };
    res.map_err(std::io::Error::other)?;
    Ok(out)
}

/// Inserts an EXIF block holding only `orientation` into an encoded JPEG, right after its
/// start-of-image marker, as cameras write it.
pub fn with_jpeg_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let tiff = orientation_tiff(orientation);
    let mut out = Vec::with_capacity(jpeg.len() + tiff.len() + 10);
    out.extend_from_slice(&jpeg[..2]);
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((tiff.len() + 8) as u16).to_be_bytes());
    out.extend_from_slice(b"Exif\0\0");
    out.extend_from_slice(&tiff);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// A little-endian TIFF structure with one IFD entry: the orientation tag.
fn orientation_tiff(orientation: u16) -> Vec<u8> {
    let mut t = Vec::with_capacity(26);
    t.extend_from_slice(b"II*\0");
    t.extend_from_slice(&8u32.to_le_bytes());
    t.extend_from_slice(&1u16.to_le_bytes());
    t.extend_from_slice(&0x0112u16.to_le_bytes());
    t.extend_from_slice(&3u16.to_le_bytes());
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(&orientation.to_le_bytes());
    t.extend_from_slice(&[0, 0]);
    t.extend_from_slice(&0u32.to_le_bytes());
    t
}

/// Writes a rendered image to `path`, choosing the format from the extension.
pub fn write_image(path: &Path, width: u32, height: u32, seed: u64) -> std::io::Result<()> {
    let format = Format::from_path(path).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{}: extension is not jpg, jpeg, png or webp",
                path.display()
            ),
        )
    })?;
    let bytes = encode(&render(width, height, seed), format)?;
    std::fs::write(path, bytes)
}
