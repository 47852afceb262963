//! Turning a source image into a training tensor: decode, orient, flip, resize, crop.
//!
//! The order is AI Toolkit's (`load_and_process_image`): open, apply the EXIF orientation,
//! convert, flip, resize the whole image to the planned `scale_to` size with a bicubic filter,
//! then crop the bucket at the planned offset. The result is laid out channels-first (C×H×W),
//! as PyTorch and the VAEs expect.

use std::path::Path;

use fast_image_resize as fr;
use image::{DynamicImage, ImageDecoder, ImageReader};

use crate::plan::{Flip, Placement};
use crate::{Error, Result};

/// Identity of the pixel pipeline, part of every cache key: a change here must invalidate
/// stored tensors. fast_image_resize's Catmull-Rom filter is the cubic (a = -0.5) that Pillow's
/// `Image.BICUBIC`, which AI Toolkit uses, implements.
pub const PIPELINE: &str =
    "decode=image-0.25+exif;resize=fast_image_resize-6/catmull-rom;layout=chw-u8;v1";

/// Channel layouts of the stored images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Channels {
    /// Grayscale: masks.
    L,
    /// Color: pixels and controls.
    Rgb,
    /// Color with alpha: inpaint images.
    Rgba,
}

impl Channels {
    pub fn count(self) -> usize {
        match self {
            Channels::L => 1,
            Channels::Rgb => 3,
            Channels::Rgba => 4,
        }
    }

    fn pixel_type(self) -> fr::PixelType {
        match self {
            Channels::L => fr::PixelType::U8,
            Channels::Rgb => fr::PixelType::U8x3,
            Channels::Rgba => fr::PixelType::U8x4,
        }
    }
}

/// A decoded image in interleaved (H×W×C) layout.
#[derive(Debug, Clone)]
pub(crate) struct Decoded {
    pub width: u32,
    pub height: u32,
    pub channels: Channels,
    pub data: Vec<u8>,
}

/// How an image is converted after decoding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Convert {
    /// RGB, dropping any alpha channel (Pillow's `convert('RGB')`).
    Rgb,
    /// RGB with transparent pixels composited over a background color (control images).
    RgbOver([u8; 3]),
    /// RGBA (inpaint images).
    Rgba,
    /// Luma with Pillow's ITU-R 601-2 weights (`convert('L')`).
    Luma,
    /// The alpha channel alone (`alpha_mask`); fully opaque when the image has none.
    Alpha,
}

/// Decodes `path`, applies its EXIF orientation, and converts it.
pub(crate) fn decode(path: &Path, convert: Convert) -> Result<Decoded> {
    let fail = |e: image::ImageError| Error::image(path, e);
    let reader = ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    let mut decoder = reader.into_decoder().map_err(fail)?;
    let orientation = decoder.orientation().map_err(fail)?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(fail)?;
    img.apply_orientation(orientation);
    let (width, height) = (img.width(), img.height());
    let (channels, data) = match convert {
        Convert::Rgb => (Channels::Rgb, img.into_rgb8().into_raw()),
        Convert::Rgba => (Channels::Rgba, img.into_rgba8().into_raw()),
        Convert::RgbOver(bg) => {
            if img.color().has_alpha() {
                let rgba = img.into_rgba8();
                let mut out = Vec::with_capacity(rgba.len() / 4 * 3);
                for px in rgba.pixels() {
                    let a = u32::from(px[3]);
                    for c in 0..3 {
                        // Rounded integer blend: (fg·a + bg·(255 − a)) / 255.
                        out.push(
                            ((u32::from(px[c]) * a + u32::from(bg[c]) * (255 - a) + 127) / 255)
                                as u8,
                        );
                    }
                }
                (Channels::Rgb, out)
            } else {
                (Channels::Rgb, img.into_rgb8().into_raw())
            }
        }
        Convert::Luma => {
            let rgb = img.into_rgb8();
            // Pillow's exact integer formula: (R·19595 + G·38470 + B·7471 + 0x8000) >> 16.
            let data = rgb
                .pixels()
                .map(|p| {
                    ((u32::from(p[0]) * 19595
                        + u32::from(p[1]) * 38470
                        + u32::from(p[2]) * 7471
                        + 0x8000)
                        >> 16) as u8
                })
                .collect();
            (Channels::L, data)
        }
        Convert::Alpha => {
            let data = if img.color().has_alpha() {
                img.into_rgba8().pixels().map(|p| p[3]).collect()
            } else {
                vec![255; width as usize * height as usize]
            };
            (Channels::L, data)
        }
    };
    Ok(Decoded {
        width,
        height,
        channels,
        data,
    })
}

/// Flips, resizes to `placement`'s `scale_to` size and crops its bucket, returning C×H×W bytes.
///
/// Masks and controls go through the same geometry as their image, as in AI Toolkit, so that
/// they line up pixel for pixel.
pub(crate) fn place(mut img: Decoded, placement: &Placement, flip: Flip) -> Result<Vec<u8>> {
    flip_in_place(&mut img, flip);
    let (sw, sh) = (placement.scale_to_width, placement.scale_to_height);
    let c = img.channels.count();
    let resized = resize(img, sw, sh)?.data;
    let (bw, bh) = (
        placement.bucket.width as usize,
        placement.bucket.height as usize,
    );
    let (cx, cy) = (placement.crop_x as usize, placement.crop_y as usize);
    if cx + bw > sw as usize || cy + bh > sh as usize {
        return Err(Error::InvalidArgument {
            name: "placement",
            message: format!("crop {bw}x{bh} at ({cx}, {cy}) does not fit in {sw}x{sh}"),
        });
    }
    // Crop and transpose to channels-first: one pass over each source row per channel, with
    // fixed-size pixel chunks so the compiler can vectorise the gather.
    let row_stride = sw as usize * c;
    let mut out = Vec::with_capacity(c * bw * bh);
    for ch in 0..c {
        for y in 0..bh {
            let row = &resized[(cy + y) * row_stride + cx * c..][..bw * c];
            match c {
                1 => out.extend_from_slice(row),
                3 => out.extend(row.chunks_exact(3).map(|px| px[ch])),
                4 => out.extend(row.chunks_exact(4).map(|px| px[ch])),
                _ => out.extend(row.iter().skip(ch).step_by(c)),
            }
        }
    }
    Ok(out)
}

/// `img` resized to `width`×`height` with Pillow's bicubic filter (Catmull-Rom); alpha is
/// resized as its own channel, as Pillow does for RGBA without premultiplying.
pub(crate) fn resize(img: Decoded, width: u32, height: u32) -> Result<Decoded> {
    if (img.width, img.height) == (width, height) {
        return Ok(img);
    }
    let (from_w, from_h, channels) = (img.width, img.height, img.channels);
    let pixel_type = channels.pixel_type();
    let src =
        fr::images::Image::from_vec_u8(from_w, from_h, img.data, pixel_type).map_err(|e| {
            Error::InvalidArgument {
                name: "image",
                message: e.to_string(),
            }
        })?;
    let mut dst = fr::images::Image::new(width, height, pixel_type);
    let options = fr::ResizeOptions::new()
        .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::CatmullRom))
        .use_alpha(false);
    fr::Resizer::new()
        .resize(&src, &mut dst, &options)
        .map_err(|e| Error::InvalidArgument {
            name: "image",
            message: format!("resize {from_w}x{from_h} to {width}x{height}: {e}"),
        })?;
    Ok(Decoded {
        width,
        height,
        channels,
        data: dst.into_vec(),
    })
}

/// The `width`×`height` region of `img` whose top left corner is (`x`, `y`); `None` when it
/// does not fit.
pub(crate) fn crop(img: &Decoded, x: u32, y: u32, width: u32, height: u32) -> Option<Decoded> {
    if x + width > img.width || y + height > img.height {
        return None;
    }
    let c = img.channels.count();
    let stride = img.width as usize * c;
    let row = width as usize * c;
    let mut data = Vec::with_capacity(row * height as usize);
    for line in img
        .data
        .chunks_exact(stride)
        .skip(y as usize)
        .take(height as usize)
    {
        data.extend_from_slice(&line[x as usize * c..][..row]);
    }
    Some(Decoded {
        width,
        height,
        channels: img.channels,
        data,
    })
}

pub(crate) fn flip_in_place(img: &mut Decoded, flip: Flip) {
    let (w, h, c) = (
        img.width as usize,
        img.height as usize,
        img.channels.count(),
    );
    if matches!(flip, Flip::X | Flip::XY) {
        for row in img.data.chunks_exact_mut(w * c) {
            for x in 0..w / 2 {
                for k in 0..c {
                    row.swap(x * c + k, (w - 1 - x) * c + k);
                }
            }
        }
    }
    if matches!(flip, Flip::Y | Flip::XY) {
        let stride = w * c;
        for y in 0..h / 2 {
            let (top, bottom) = img.data.split_at_mut((h - 1 - y) * stride);
            top[y * stride..(y + 1) * stride].swap_with_slice(&mut bottom[..stride]);
        }
    }
}

/// Maps mask values as AI Toolkit does: optional inversion, then [0, 1] onto
/// [`min_value`, 1], stored as u8.
pub(crate) fn map_mask(data: &mut [u8], invert: bool, min_value: f64) {
    if !invert && min_value == 0.0 {
        return;
    }
    let table: Vec<u8> = (0..=255u8)
        .map(|v| {
            let v = if invert { 255 - v } else { v };
            let m = min_value + (1.0 - min_value) * f64::from(v) / 255.0;
            (m * 255.0).round() as u8
        })
        .collect();
    for v in data {
        *v = table[*v as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Bucket;

    fn decoded(w: u32, h: u32, c: Channels) -> Decoded {
        let n = c.count();
        let data = (0..w * h)
            .flat_map(|i| (0..n).map(move |k| (i as usize * n + k) as u8))
            .collect();
        Decoded {
            width: w,
            height: h,
            channels: c,
            data,
        }
    }

    fn identity(w: u32, h: u32) -> Placement {
        Placement {
            bucket: Bucket {
                width: w,
                height: h,
            },
            scale_to_width: w,
            scale_to_height: h,
            crop_x: 0,
            crop_y: 0,
        }
    }

    #[test]
    fn a_corrupt_image_is_an_image_error_with_the_decoders_error_as_source() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cut.png");
        // A PNG signature and the start of an IHDR chunk, then nothing.
        std::fs::write(&path, b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR\0\0").expect("write");
        let err = decode(&path, Convert::Rgb).expect_err("cut off");
        assert!(matches!(err, Error::Image { .. }), "{err:?}");
        assert!(
            err.to_string().starts_with(&path.display().to_string()),
            "{err}"
        );
        let source = std::error::Error::source(&err).expect("a source");
        assert!(
            source.downcast_ref::<image::ImageError>().is_some(),
            "{source:?}"
        );
    }

    #[test]
    fn place_transposes_to_channels_first() {
        let img = decoded(2, 2, Channels::Rgb);
        // Interleaved: px0 = 0,1,2  px1 = 3,4,5  px2 = 6,7,8  px3 = 9,10,11.
        let out = place(img, &identity(2, 2), Flip::None).expect("place");
        assert_eq!(out, vec![0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11]);
    }

    #[test]
    fn flips_mirror_rows_and_columns() {
        let img = decoded(3, 2, Channels::L);
        assert_eq!(
            place(img.clone(), &identity(3, 2), Flip::X).expect("x"),
            vec![2, 1, 0, 5, 4, 3]
        );
        assert_eq!(
            place(img.clone(), &identity(3, 2), Flip::Y).expect("y"),
            vec![3, 4, 5, 0, 1, 2]
        );
        assert_eq!(
            place(img, &identity(3, 2), Flip::XY).expect("xy"),
            vec![5, 4, 3, 2, 1, 0]
        );
    }

    #[test]
    fn crop_takes_the_planned_window() {
        let img = decoded(4, 3, Channels::L);
        let p = Placement {
            bucket: Bucket {
                width: 2,
                height: 2,
            },
            scale_to_width: 4,
            scale_to_height: 3,
            crop_x: 1,
            crop_y: 1,
        };
        assert_eq!(place(img, &p, Flip::None).expect("crop"), vec![5, 6, 9, 10]);
    }

    #[test]
    fn resize_keeps_flat_colors_flat() {
        let img = Decoded {
            width: 40,
            height: 30,
            channels: Channels::Rgb,
            data: [10u8, 200, 90].repeat(40 * 30),
        };
        let p = Placement {
            bucket: Bucket {
                width: 16,
                height: 16,
            },
            scale_to_width: 21,
            scale_to_height: 16,
            crop_x: 2,
            crop_y: 0,
        };
        let out = place(img, &p, Flip::None).expect("resize");
        assert_eq!(out.len(), 3 * 16 * 16);
        assert!(out[..256].iter().all(|&v| v == 10) && out[256..512].iter().all(|&v| v == 200));
    }

    #[test]
    fn masks_invert_and_map_to_the_minimum() {
        let mut m = vec![0u8, 255, 128];
        map_mask(&mut m, true, 0.0);
        assert_eq!(m, vec![255, 0, 127]);
        let mut m = vec![0u8, 255];
        map_mask(&mut m, false, 0.2);
        assert_eq!(m, vec![51, 255]);
    }
}
