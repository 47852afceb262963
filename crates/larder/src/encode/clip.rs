//! CLIP's image preprocessing, as transformers' `CLIPImageProcessor` does it by default.
//!
//! The whole source image (oriented, flipped as the item is) is resized so that its shorter side
//! is `size` with a bicubic filter, the longer side to `int(size * long / short)`, center-cropped
//! to `size`×`size`, scaled to [0, 1] and normalized with CLIP's mean and standard deviation.
//! AI Toolkit feeds its CLIP vision cache through that processor from the full image, not the
//! bucket crop, so larder does the same.
//!
//! A dataset with `clip_image_path` gives CLIP another image of the same stem instead, squared
//! first as AI Toolkit's `load_clip_image` squares it ([`Squaring`]).

use std::path::Path;

use crate::config::DatasetConfig;
use crate::image::{self, Convert, Decoded};
use crate::plan::{Bucket, Flip, Placement};
use crate::{Error, Result};

/// CLIP's per-channel mean (RGB).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP's per-channel standard deviation (RGB).
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// CLIP preprocessing settings.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ClipPreprocess {
    /// The square side the image is cut to (224 for CLIP ViT-L/14, 336 for its -336 variant).
    pub size: u32,
}

impl Default for ClipPreprocess {
    fn default() -> Self {
        ClipPreprocess { size: 224 }
    }
}

impl ClipPreprocess {
    /// The text that enters the cache key.
    pub fn key_text(&self) -> String {
        format!(
            "clip-preprocess;size={};shortest-edge-bicubic;center-crop;mean={CLIP_MEAN:?};std={CLIP_STD:?}",
            self.size
        )
    }

    /// The resize and crop of a `width`×`height` image.
    pub(crate) fn placement(&self, width: u32, height: u32) -> Placement {
        let s = self.size;
        let (short, long) = (width.min(height).max(1), width.max(height));
        // transformers: the longer side becomes int(size * long / short), truncated.
        let scaled_long = ((u64::from(s) * u64::from(long)) / u64::from(short)).max(u64::from(s));
        let scaled_long = u32::try_from(scaled_long).unwrap_or(u32::MAX);
        let (sw, sh) = if width <= height {
            (s, scaled_long)
        } else {
            (scaled_long, s)
        };
        Placement {
            bucket: Bucket {
                width: s,
                height: s,
            },
            scale_to_width: sw,
            scale_to_height: sh,
            // transformers' center_crop: int((orig - crop) / 2).
            crop_x: (sw - s) / 2,
            crop_y: (sh - s) / 2,
        }
    }

    /// `img` (flipped already) resized and cropped as CLIP takes it, as C×H×W bytes.
    pub(crate) fn resize(&self, img: Decoded) -> Result<Vec<u8>> {
        let placement = self.placement(img.width, img.height);
        image::place(img, &placement, Flip::None)
    }

    /// Normalizes C×H×W u8 RGB values into `out` (of the same length).
    pub(crate) fn normalize(&self, pixels: &[u8], out: &mut [f32]) {
        let plane = (self.size as usize).pow(2).max(1);
        for (c, (channel, o)) in pixels
            .chunks(plane)
            .zip(out.chunks_mut(plane))
            .enumerate()
            .take(3)
        {
            let (m, sd) = (CLIP_MEAN[c], CLIP_STD[c]);
            for (o, &p) in o.iter_mut().zip(channel) {
                *o = (f32::from(p) / 255.0 - m) / sd;
            }
        }
    }
}

/// How a dataset's CLIP image (`clip_image_path`) is made square before CLIP's preprocessing,
/// as AI Toolkit's `load_clip_image` does after flipping it as the item: a center crop to its
/// shorter side with `square_crop`, else a bicubic resize of the whole image to its shorter
/// side, so that nothing is cut away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Squaring {
    CenterCrop,
    Squish,
}

impl Squaring {
    pub(crate) fn of(cfg: &DatasetConfig) -> Self {
        if cfg.square_crop {
            Squaring::CenterCrop
        } else {
            Squaring::Squish
        }
    }

    /// The text that enters the cache key.
    pub(crate) fn key_text(self) -> &'static str {
        match self {
            Squaring::CenterCrop => "reference-square=center-crop",
            Squaring::Squish => "reference-square=bicubic-squish",
        }
    }

    /// `img` made square.
    pub(crate) fn apply(self, img: Decoded) -> Result<Decoded> {
        let side = img.width.min(img.height);
        match self {
            Squaring::Squish => image::resize(img, side, side),
            Squaring::CenterCrop => {
                // torchvision's CenterCrop: int(round((size - side) / 2.0)), ties to even.
                let offset = |size: u32| (f64::from(size - side) / 2.0).round_ties_even() as u32;
                let (x, y) = (offset(img.width), offset(img.height));
                image::crop(&img, x, y, side, side).ok_or(Error::InvalidArgument {
                    name: "image",
                    message: format!("no {side}x{side} square at ({x}, {y})"),
                })
            }
        }
    }
}

/// The dataset's CLIP image at `path` as CLIP sees it for an item flipped by `flip`, before
/// CLIP's own preprocessing: decoded, flipped, then squared.
pub(crate) fn squared_reference(path: &Path, flip: Flip, squaring: Squaring) -> Result<Decoded> {
    let mut img = image::decode(path, Convert::Rgb)?;
    image::flip_in_place(&mut img, flip);
    let img = squaring.apply(img)?;
    if img.width == 0 {
        return Err(Error::image(path, "an image without pixels"));
    }
    Ok(img)
}

/// [`squared_reference`] as (height, width, C×H×W bytes) at its own size.
pub(crate) fn squared_reference_chw(
    path: &Path,
    flip: Flip,
    squaring: Squaring,
) -> Result<(usize, usize, Vec<u8>)> {
    let img = squared_reference(path, flip, squaring)?;
    let (height, width) = (img.height, img.width);
    let data = image::place(img, &Placement::unchanged(width, height), Flip::None)?;
    Ok((height as usize, width as usize, data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::Channels;

    #[test]
    fn a_center_crop_square_starts_where_torchvision_rounds_half_to_even() {
        // One grey row whose pixel values are their column: the crop's first column shows.
        let strip = |width: u32| Decoded {
            width,
            height: 4,
            channels: Channels::L,
            data: (0..4).flat_map(|_| 0..width as u8).collect(),
        };
        for (width, first) in [(7, 2), (9, 2), (8, 2), (11, 4)] {
            let square = Squaring::CenterCrop.apply(strip(width)).expect("square");
            assert_eq!((square.width, square.height), (4, 4));
            assert_eq!(square.data[0], first, "width {width}");
        }
        let squished = Squaring::Squish.apply(strip(9)).expect("square");
        assert_eq!((squished.width, squished.height), (4, 4));
    }

    #[test]
    fn the_shorter_side_becomes_the_size_and_the_crop_is_centered() {
        let clip = ClipPreprocess::default();
        let p = clip.placement(640, 480);
        assert_eq!((p.scale_to_width, p.scale_to_height), (298, 224));
        assert_eq!((p.crop_x, p.crop_y), (37, 0));
        let p = clip.placement(100, 300);
        assert_eq!((p.scale_to_width, p.scale_to_height), (224, 672));
        assert_eq!((p.crop_x, p.crop_y), (0, 224));
    }

    #[test]
    fn normalization_uses_clip_statistics() {
        let clip = ClipPreprocess { size: 1 };
        let mut out = [0f32; 3];
        clip.normalize(&[255, 0, 128], &mut out);
        assert!((out[0] - (1.0 - CLIP_MEAN[0]) / CLIP_STD[0]).abs() < 1e-6);
        assert!((out[1] + CLIP_MEAN[1] / CLIP_STD[1]).abs() < 1e-6);
        assert_eq!(out.len(), 3);
    }
}
