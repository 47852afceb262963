//! Where one image goes: its bucket, the size it is resized to, and the crop inside that.
//!
//! The default follows AI Toolkit's `get_bucket_for_image_size` and `setup_buckets` operation
//! for operation — the same float expressions in the same order, `int()` truncation after
//! `scale`, `ceil` of the scaled size — because a bucket that differs by one step of
//! divisibility changes the latent shape and so every cached tensor.

use std::fmt;

use crate::rng::Stream;

/// A bucket: the size every item in it is cropped to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Bucket {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

impl fmt::Display for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

/// How one image is turned into a bucket-sized training image: resize the whole image to
/// `scale_to_width`×`scale_to_height`, then crop the bucket's size at (`crop_x`, `crop_y`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Placement {
    /// The bucket (the crop size).
    pub bucket: Bucket,
    /// Width the image is resized to before cropping.
    pub scale_to_width: u32,
    /// Height the image is resized to before cropping.
    pub scale_to_height: u32,
    /// Left edge of the crop in the resized image.
    pub crop_x: u32,
    /// Top edge of the crop in the resized image.
    pub crop_y: u32,
}

impl Placement {
    /// The whole `width`×`height` image as it is: no resize, no crop.
    pub(crate) fn unchanged(width: u32, height: u32) -> Placement {
        Placement {
            bucket: Bucket { width, height },
            scale_to_width: width,
            scale_to_height: height,
            crop_x: 0,
            crop_y: 0,
        }
    }

    /// Places the crop: centered, as AI Toolkit and kohya compute it (`(scaled - bucket) // 2`),
    /// or at an offset drawn from `random` (x first, then y, each uniform and inclusive).
    pub(crate) fn crop(
        bucket: Bucket,
        scale_to: (u32, u32),
        random: Option<&mut Stream>,
    ) -> Placement {
        let slack_x = scale_to.0.saturating_sub(bucket.width);
        let slack_y = scale_to.1.saturating_sub(bucket.height);
        let (crop_x, crop_y) = match random {
            Some(rng) => {
                let x = rng.between(0, u64::from(slack_x)) as u32;
                let y = rng.between(0, u64::from(slack_y)) as u32;
                (x, y)
            }
            None => (slack_x / 2, slack_y / 2),
        };
        Placement {
            bucket,
            scale_to_width: scale_to.0.max(bucket.width),
            scale_to_height: scale_to.1.max(bucket.height),
            crop_x,
            crop_y,
        }
    }

    /// Resizes `width`×`height` so that it covers `bucket` (the larger of the two ratios, with
    /// `ceil`), then crops.
    pub(crate) fn cover(
        width: u32,
        height: u32,
        bucket: Bucket,
        random: Option<&mut Stream>,
    ) -> Placement {
        let m = (f64::from(bucket.width) / f64::from(width))
            .max(f64::from(bucket.height) / f64::from(height));
        let scale_to = (
            (f64::from(width) * m).ceil() as u32,
            (f64::from(height) * m).ceil() as u32,
        );
        Placement::crop(bucket, scale_to, random)
    }
}

/// AI Toolkit's bucket for an image of `width`×`height` (already multiplied by `scale`) at
/// `resolution` with sides divisible by `divisibility`.
///
/// The area target is the image's own area, capped at `resolution²` (never upscale). Of the
/// four floor/ceil roundings of the scaled sides, in AI Toolkit's order, those within the cap
/// compete and the first closest in area to the target wins. When none is within the cap
/// (only possible for extreme aspect ratios), the floored sides are used, at least one step.
pub fn aitk_bucket(width: u32, height: u32, resolution: u32, divisibility: u32) -> Bucket {
    let total = u64::from(width) * u64::from(height);
    let max_pixels = u64::from(resolution) * u64::from(resolution);
    let target = total.min(max_pixels);
    let scaler = (target as f64 / total as f64).powf(0.5);
    let d = f64::from(divisibility);
    let w_raw = f64::from(width) * scaler / d;
    let h_raw = f64::from(height) * scaler / d;
    let (wf, wc) = (w_raw.floor() as u64, w_raw.ceil() as u64);
    let (hf, hc) = (h_raw.floor() as u64, h_raw.ceil() as u64);
    let d = u64::from(divisibility);
    let candidates = [
        (wf * d, hf * d),
        (wf * d, hc * d),
        (wc * d, hf * d),
        (wc * d, hc * d),
    ];
    let best = candidates
        .iter()
        .copied()
        .filter(|&(w, h)| w > 0 && h > 0 && w * h <= max_pixels)
        // min_by_key keeps the first of equal keys, as Python's min does.
        .min_by_key(|&(w, h)| (w * h).abs_diff(target));
    let (w, h) = best.unwrap_or(((wf * d).max(d), (hf * d).max(d)));
    Bucket {
        width: w as u32,
        height: h as u32,
    }
}

/// AI Toolkit's `square_crop`: resize so the short side is `resolution`, then crop a
/// `resolution`² square from the middle of the long side (divisibility does not apply).
pub fn square_placement(width: u32, height: u32, resolution: u32) -> Placement {
    let r = f64::from(resolution);
    let sf = (r / f64::from(width)).max(r / f64::from(height));
    let stw = (f64::from(width) * sf).ceil() as u32;
    let sth = (f64::from(height) * sf).ceil() as u32;
    // AI Toolkit computes `int(scaled / 2 - res / 2)` in floats.
    let (crop_x, crop_y) = if width > height {
        ((f64::from(stw) / 2.0 - r / 2.0) as u32, 0)
    } else {
        (0, (f64::from(sth) / 2.0 - r / 2.0) as u32)
    };
    Placement {
        bucket: Bucket {
            width: resolution,
            height: resolution,
        },
        scale_to_width: stw,
        scale_to_height: sth,
        crop_x,
        crop_y,
    }
}

/// `buckets: false`: every image becomes `resolution`² — the largest centered square, scaled.
pub fn unbucketed_placement(
    width: u32,
    height: u32,
    resolution: u32,
    random: Option<&mut Stream>,
) -> Placement {
    let bucket = Bucket {
        width: resolution,
        height: resolution,
    };
    Placement::cover(width, height, bucket, random)
}

/// Applies AI Toolkit's `scale` to an image size: `int(side * scale)`, truncating.
pub fn scaled_size(width: u32, height: u32, scale: f64) -> (u32, u32) {
    (
        (f64::from(width) * scale) as u32,
        (f64::from(height) * scale) as u32,
    )
}

/// Places an image with AI Toolkit's bucket algorithm.
pub fn aitk_placement(
    width: u32,
    height: u32,
    resolution: u32,
    divisibility: u32,
    random: Option<&mut Stream>,
) -> Placement {
    let bucket = aitk_bucket(width, height, resolution, divisibility);
    Placement::cover(width, height, bucket, random)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// (width, height, resolution, divisibility) → (bucket w, h, scale_to w, h, crop x, y),
    /// computed by hand from AI Toolkit's formulas (the first seven are worked in docs/buckets.md).
    /// (width, height, resolution, divisibility).
    type Input = (u32, u32, u32, u32);
    /// (bucket width, bucket height, scale_to width, scale_to height, crop x, crop y).
    type Expected = (u32, u32, u32, u32, u32, u32);

    const AITK_CASES: &[(Input, Expected)] = &[
        ((500, 300, 512, 16), (496, 304, 507, 304, 5, 0)),
        // The float trap: 3000 * (896/3000) is 896.0000000000001, so the ceil gives 897.
        ((4000, 3000, 1024, 16), (1168, 896, 1195, 897, 13, 0)),
        ((1920, 1080, 1024, 32), (1344, 768, 1366, 768, 11, 0)),
        ((3000, 4000, 768, 32), (672, 864, 672, 896, 0, 16)),
        ((2048, 2048, 1024, 16), (1024, 1024, 1024, 1024, 0, 0)),
        ((20, 2000, 512, 16), (16, 2000, 20, 2000, 2, 0)),
        ((1023, 767, 512, 16), (576, 448, 598, 448, 11, 0)),
        // Extreme aspect ratios.
        ((8192, 128, 512, 16), (4096, 64, 4096, 64, 0, 0)),
        ((128, 8192, 512, 16), (64, 4096, 64, 4096, 0, 0)),
        ((8192, 128, 1024, 64), (8192, 128, 8192, 128, 0, 0)),
        ((1, 10000, 512, 16), (16, 10000, 16, 160000, 0, 75000)),
        ((10000, 1, 512, 32), (9984, 32, 320000, 32, 155008, 0)),
        ((2000, 20, 256, 64), (1984, 64, 6400, 64, 2208, 0)),
        // Smaller than the resolution: the area is kept, rounded to the divisibility.
        ((300, 200, 512, 16), (288, 208, 312, 208, 12, 0)),
        ((640, 480, 512, 32), (576, 448, 598, 448, 11, 0)),
        ((960, 544, 512, 16), (672, 384, 678, 384, 3, 0)),
        ((7, 9, 512, 16), (16, 16, 16, 21, 0, 2)),
        ((1, 1, 512, 16), (16, 16, 16, 16, 0, 0)),
        ((767, 1023, 512, 8), (448, 584, 448, 598, 0, 7)),
        // Exact multiples.
        ((1024, 1024, 1024, 16), (1024, 1024, 1024, 1024, 0, 0)),
        ((512, 768, 1024, 32), (512, 768, 512, 768, 0, 0)),
        ((512, 768, 512, 16), (416, 624, 416, 624, 0, 0)),
        ((513, 513, 512, 16), (512, 512, 512, 512, 0, 0)),
        ((1000, 1000, 512, 64), (512, 512, 512, 512, 0, 0)),
        ((4096, 1024, 1024, 32), (2048, 512, 2048, 512, 0, 0)),
        // Photos.
        ((3000, 2000, 1024, 32), (1248, 832, 1248, 832, 0, 0)),
        ((6000, 4000, 1024, 16), (1248, 832, 1248, 832, 0, 0)),
        ((1080, 1920, 768, 16), (576, 1024, 576, 1024, 0, 0)),
    ];

    #[test]
    fn aitk_placement_matches_hand_computed_cases() {
        for &((w, h, r, d), expected) in AITK_CASES {
            let p = aitk_placement(w, h, r, d, None);
            let got = (
                p.bucket.width,
                p.bucket.height,
                p.scale_to_width,
                p.scale_to_height,
                p.crop_x,
                p.crop_y,
            );
            assert_eq!(got, expected, "{w}x{h} at {r}, divisibility {d}");
        }
    }

    #[test]
    fn scale_truncates_before_bucketing() {
        // int(1000 * 0.5) = 500, int(750 * 0.5) = 375; int(999 * 0.37) = 369, int(333 * 0.37) = 123.
        assert_eq!(scaled_size(1000, 750, 0.5), (500, 375));
        assert_eq!(scaled_size(999, 333, 0.37), (369, 123));
        let p = aitk_placement(500, 375, 512, 16, None);
        assert_eq!(
            (p.bucket.width, p.bucket.height, p.scale_to_height, p.crop_y),
            (512, 368, 384, 8)
        );
        let p = aitk_placement(369, 123, 512, 16, None);
        assert_eq!(
            (p.bucket.width, p.bucket.height, p.scale_to_width, p.crop_x),
            (368, 128, 385, 8)
        );
    }

    #[test]
    fn square_crop_matches_hand_computed_cases() {
        let cases = [
            ((1000, 600), (854, 512, 171, 0)),
            ((600, 1000), (512, 854, 0, 171)),
            ((512, 512), (512, 512, 0, 0)),
            ((300, 200), (768, 512, 128, 0)),
            ((513, 1024), (512, 1023, 0, 255)),
        ];
        for ((w, h), expected) in cases {
            let p = square_placement(w, h, 512);
            assert_eq!(
                p.bucket,
                Bucket {
                    width: 512,
                    height: 512
                }
            );
            assert_eq!(
                (p.scale_to_width, p.scale_to_height, p.crop_x, p.crop_y),
                expected,
                "{w}x{h}"
            );
        }
    }

    #[test]
    fn unbucketed_images_become_resolution_squares() {
        let p = unbucketed_placement(1000, 500, 512, None);
        assert_eq!(
            p.bucket,
            Bucket {
                width: 512,
                height: 512
            }
        );
        assert_eq!(
            (p.scale_to_width, p.scale_to_height, p.crop_x, p.crop_y),
            (1024, 512, 256, 0)
        );
    }

    fn assert_crop_inside(p: &Placement) {
        assert!(p.crop_x + p.bucket.width <= p.scale_to_width, "{p:?}");
        assert!(p.crop_y + p.bucket.height <= p.scale_to_height, "{p:?}");
    }

    proptest! {
        #[test]
        fn aitk_buckets_respect_area_divisibility_and_image_size(
            w in 1u32..12_000, h in 1u32..12_000,
            r in prop::sample::select(vec![256u32, 512, 768, 1024, 1536]),
            d in prop::sample::select(vec![8u32, 16, 32, 64]),
            seed in any::<u64>(),
        ) {
            let mut rng = Stream::new(crate::rng::Purpose::Crop, &[seed]);
            let p = aitk_placement(w, h, r, d, Some(&mut rng));
            let b = p.bucket;
            prop_assert_eq!(b.width % d, 0);
            prop_assert_eq!(b.height % d, 0);
            // Never upscaled beyond rounding up to the next multiple of d of the size that has
            // at most R² pixels.
            let s = ((u64::from(r) * u64::from(r)).min(u64::from(w) * u64::from(h)) as f64
                / (f64::from(w) * f64::from(h))).sqrt();
            let limit = |side: u32| ((f64::from(side) * s / f64::from(d)).ceil() as u32 * d).max(d);
            prop_assert!(b.width <= limit(w) && b.height <= limit(h), "{:?} for {}x{}", b, w, h);
            // Within the pixel budget unless a side would round to nothing.
            let fallback = (f64::from(w) * s / f64::from(d)).floor() == 0.0
                || (f64::from(h) * s / f64::from(d)).floor() == 0.0;
            if !fallback {
                prop_assert!(u64::from(b.width) * u64::from(b.height) <= u64::from(r) * u64::from(r));
            }
            assert_crop_inside(&p);
        }

        #[test]
        fn square_and_unbucketed_crops_stay_inside(w in 1u32..10_000, h in 1u32..10_000, r in 64u32..2048) {
            assert_crop_inside(&square_placement(w, h, r));
            assert_crop_inside(&unbucketed_placement(w, h, r, None));
        }
    }
}
