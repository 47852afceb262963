//! kohya sd-scripts' bucketing: a predefined list of bucket sizes and, for each image, the
//! bucket of closest aspect ratio (`BucketManager.select_bucket`), or buckets cut from the
//! image's own size when upscaling is off.

use super::bucket::{Bucket, Placement};
use crate::rng::Stream;

/// kohya's `make_bucket_resolutions`: every (w, h) with w stepping from `min_size` to
/// `max_size` and h the largest multiple of `steps` keeping w·h within `max_reso`², plus the
/// square; sorted by width, then height.
pub fn kohya_buckets(max_reso: u32, min_size: u32, max_size: u32, steps: u32) -> Vec<(u32, u32)> {
    let max_area = u64::from(max_reso) * u64::from(max_reso);
    let steps64 = u64::from(steps);
    let mut resos = std::collections::BTreeSet::new();
    let side = ((max_area as f64).sqrt() as u64 / steps64) * steps64;
    resos.insert((side as u32, side as u32));
    let mut w = u64::from(min_size);
    while w <= u64::from(max_size) {
        let h = u64::from(max_size).min((max_area / w / steps64) * steps64);
        if h >= u64::from(min_size) {
            resos.insert((w as u32, h as u32));
            resos.insert((h as u32, w as u32));
        }
        w += steps64;
    }
    resos.into_iter().collect()
}

/// Python's `int(x + 0.5)` for non-negative x.
fn round_half_up(x: f64) -> u64 {
    (x + 0.5) as u64
}

/// Chooses from `sizes` the bucket of closest aspect ratio (the first on ties; an exact size
/// match wins outright), resizes so the image covers it, and crops as kohya does.
pub fn closest_aspect_placement(
    width: u32,
    height: u32,
    sizes: &[(u32, u32)],
    random: Option<&mut Stream>,
) -> Placement {
    let ar = f64::from(width) / f64::from(height);
    let (bw, bh) = if sizes.contains(&(width, height)) {
        (width, height)
    } else {
        let mut best = sizes[0];
        let mut best_err = f64::INFINITY;
        for &(w, h) in sizes {
            let err = (f64::from(w) / f64::from(h) - ar).abs();
            if err < best_err {
                best = (w, h);
                best_err = err;
            }
        }
        best
    };
    let ar_reso = f64::from(bw) / f64::from(bh);
    // Wider than the bucket: match heights and crop the width; otherwise the reverse.
    let scale = if ar > ar_reso {
        f64::from(bh) / f64::from(height)
    } else {
        f64::from(bw) / f64::from(width)
    };
    let resized = (
        round_half_up(f64::from(width) * scale) as u32,
        round_half_up(f64::from(height) * scale) as u32,
    );
    Placement::crop(
        Bucket {
            width: bw,
            height: bh,
        },
        resized,
        random,
    )
}

/// kohya's `bucket_no_upscale`: images within `max_reso`² keep their size, larger ones shrink to
/// that area at their own aspect ratio; the bucket is the size floored to `steps`.
pub fn no_upscale_placement(
    width: u32,
    height: u32,
    max_reso: u32,
    steps: u32,
    random: Option<&mut Stream>,
) -> Placement {
    let max_area = f64::from(max_reso) * f64::from(max_reso);
    let steps64 = u64::from(steps);
    let round_to_steps = |x: f64| {
        let x = round_half_up(x);
        x - x % steps64
    };
    let ar = f64::from(width) / f64::from(height);
    let resized = if f64::from(width) * f64::from(height) > max_area {
        let rw = (max_area * ar).sqrt();
        let rh = max_area / rw;
        let bw = round_to_steps(rw);
        let bh = round_to_steps(rh);
        let bh_w = round_to_steps(bw as f64 / ar);
        let bw_h = round_to_steps(bh as f64 * ar);
        // kohya divides by these without a guard; a zero side means that choice is unusable.
        let err_w = if bh_w == 0 {
            f64::INFINITY
        } else {
            (bw as f64 / bh_w as f64 - ar).abs()
        };
        let err_h = if bh == 0 {
            f64::INFINITY
        } else {
            (bw_h as f64 / bh as f64 - ar).abs()
        };
        if err_w < err_h {
            (bw, round_half_up(bw as f64 / ar))
        } else {
            (round_half_up(bh as f64 * ar), bh)
        }
    } else {
        (u64::from(width), u64::from(height))
    };
    // Never a zero-sized bucket: at least one step on each side.
    let bucket = Bucket {
        width: (resized.0 - resized.0 % steps64).max(steps64) as u32,
        height: (resized.1 - resized.1 % steps64).max(steps64) as u32,
    };
    let resized = (resized.0 as u32, resized.1 as u32);
    Placement::crop(bucket, resized, random)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn kohya_default_bucket_list_for_1024() {
        let b = kohya_buckets(1024, 256, 1024, 64);
        assert_eq!(b.len(), 25);
        assert_eq!(&b[..3], &[(256, 1024), (320, 1024), (384, 1024)]);
        assert_eq!(b.last(), Some(&(1024, 1024)));
        assert!(b.contains(&(1024, 768)) && b.contains(&(768, 1024)));
    }

    #[test]
    fn kohya_select_bucket_matches_hand_computed_cases() {
        let sizes = kohya_buckets(1024, 256, 1024, 64);
        // (w, h) → bucket, resized, crop.
        let cases = [
            ((4000, 3000), (1024, 768), (1024, 768), (0, 0)),
            ((500, 300), (1024, 640), (1067, 640), (21, 0)),
            ((1920, 1080), (1024, 576), (1024, 576), (0, 0)),
            ((3000, 1000), (1024, 320), (1024, 341), (0, 10)),
            ((768, 1024), (768, 1024), (768, 1024), (0, 0)),
        ];
        for ((w, h), bucket, resized, crop) in cases {
            let p = closest_aspect_placement(w, h, &sizes, None);
            assert_eq!((p.bucket.width, p.bucket.height), bucket, "{w}x{h}");
            assert_eq!((p.scale_to_width, p.scale_to_height), resized, "{w}x{h}");
            assert_eq!((p.crop_x, p.crop_y), crop, "{w}x{h}");
        }
    }

    #[test]
    fn kohya_no_upscale_matches_hand_computed_cases() {
        let cases = [
            ((4000, 3000), (1088, 832), (1109, 832), (10, 0)),
            ((500, 300), (448, 256), (500, 300), (26, 22)),
            ((1920, 1080), (1344, 768), (1365, 768), (10, 0)),
            ((3000, 1000), (1728, 576), (1728, 576), (0, 0)),
        ];
        for ((w, h), bucket, resized, crop) in cases {
            let p = no_upscale_placement(w, h, 1024, 64, None);
            assert_eq!((p.bucket.width, p.bucket.height), bucket, "{w}x{h}");
            assert_eq!((p.scale_to_width, p.scale_to_height), resized, "{w}x{h}");
            assert_eq!((p.crop_x, p.crop_y), crop, "{w}x{h}");
        }
    }

    proptest! {
        #[test]
        fn kohya_buckets_come_from_the_list_and_crops_stay_inside(w in 1u32..10_000, h in 1u32..10_000) {
            let sizes = kohya_buckets(768, 256, 1024, 64);
            let p = closest_aspect_placement(w, h, &sizes, None);
            prop_assert!(sizes.contains(&(p.bucket.width, p.bucket.height)));
            prop_assert!(p.crop_x + p.bucket.width <= p.scale_to_width);
            prop_assert!(p.crop_y + p.bucket.height <= p.scale_to_height);
            let n = no_upscale_placement(w, h, 768, 64, None);
            prop_assert_eq!(n.bucket.width % 64, 0);
            prop_assert_eq!(n.bucket.height % 64, 0);
            prop_assert!(n.crop_x + n.bucket.width <= n.scale_to_width);
            prop_assert!(n.crop_y + n.bucket.height <= n.scale_to_height);
        }
    }
}
