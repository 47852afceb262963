//! Which frames of a clip an item trains on: AI Toolkit's choice (`load_and_process_video` and
//! `get_auto_frame_count` in `toolkit/dataloader_mixins.py`), expression for expression.
//!
//! Python's `round` rounds halves to even, and `int()` truncates toward zero; both are
//! reproduced, because one frame off is a different training clip.

use crate::rng::Stream;

/// A video dataset's frame settings (`num_frames`, `shrink_video_to_frames`, `fps`,
/// `auto_frame_count`, `trim_auto_frame_count_tail`) and the model's temporal compression.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FrameRule {
    /// Frames per clip (ignored by `auto_frame_count`).
    pub num_frames: u32,
    /// Spread the frames over the whole clip (true), or take them at `fps` from a drawn start.
    pub shrink_video_to_frames: bool,
    /// The frame rate the model trains at.
    pub fps: f64,
    /// As many frames as the clip lasts at `fps`, snapped to the model's frame rule.
    pub auto_frame_count: bool,
    /// With `auto_frame_count`: take frames at `fps` from the start and drop the tail that does
    /// not fit, instead of spreading them over the clip.
    pub trim_auto_frame_count_tail: bool,
    /// Frames per latent frame of the model's VAE (AI Toolkit's `temporal_compression`, 8
    /// unless the model says otherwise; Wan's VAE has 4).
    pub temporal_compression: u32,
}

impl Default for FrameRule {
    /// AI Toolkit's defaults.
    fn default() -> Self {
        FrameRule {
            num_frames: 1,
            shrink_video_to_frames: true,
            fps: 24.0,
            auto_frame_count: false,
            trim_auto_frame_count_tail: true,
            temporal_compression: 8,
        }
    }
}

impl FrameRule {
    /// Returns true if and only if the dataset is a video dataset: AI Toolkit reads videos only
    /// when `num_frames` is above 1 or `auto_frame_count` is set.
    pub fn is_video(&self) -> bool {
        self.num_frames > 1 || self.auto_frame_count
    }

    /// The number of frames a clip of `total_frames` at `video_fps` trains with.
    pub fn frame_count(&self, total_frames: u64, video_fps: f64) -> u32 {
        if !self.auto_frame_count {
            return self.num_frames;
        }
        // int(total / video_fps * fps): truncation toward zero.
        let desired = ((total_frames as f64 / video_fps) * self.fps)
            .trunc()
            .max(0.0) as u64;
        let tc = u64::from(self.temporal_compression.max(1));
        let snapped = if self.trim_auto_frame_count_tail {
            desired.saturating_sub(1) / tc * tc
        } else {
            desired / tc * tc
        };
        // The key frame every model adds.
        u32::try_from(snapped + 1).unwrap_or(u32::MAX)
    }

    /// The frame indices (0-based, in training order, repeats allowed) of a clip of
    /// `total_frames` frames at `video_fps`; `start` draws the start frame when the frames are
    /// taken at `fps` from a random point (AI Toolkit's unseeded `random.randint`).
    ///
    /// `total_frames` must be at least 1.
    pub fn select(&self, total_frames: u64, video_fps: f64, start: &mut Stream) -> Vec<u64> {
        let n = u64::from(self.frame_count(total_frames, video_fps));
        let max_index = total_frames.saturating_sub(1);
        let spread = || -> Vec<u64> {
            let interval = if n > 1 {
                max_index as f64 / (n - 1) as f64
            } else {
                0.0
            };
            (0..n)
                .map(|i| python_round(i as f64 * interval).min(max_index))
                .collect()
        };
        let frames = if self.auto_frame_count && self.trim_auto_frame_count_tail {
            let ratio = if video_fps > 0.0 {
                video_fps / self.fps
            } else {
                1.0
            };
            (0..n)
                .map(|i| python_round(i as f64 * ratio).min(max_index))
                .collect()
        } else if self.shrink_video_to_frames || total_frames < n {
            spread()
        } else {
            let interval = python_round(video_fps / self.fps).max(1);
            if total_frames / interval < n {
                spread()
            } else {
                let max_start = max_index.saturating_sub((n - 1) * interval);
                let first = start.between(0, max_start);
                (0..n).map(|i| first + i * interval).collect()
            }
        };
        frames.into_iter().map(|f| f.min(max_index)).collect()
    }
}

/// Python's `int(round(x))` for x ≥ 0: halves go to the even neighbour.
fn python_round(x: f64) -> u64 {
    x.round_ties_even().max(0.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Purpose;

    fn rule(num_frames: u32) -> FrameRule {
        FrameRule {
            num_frames,
            ..FrameRule::default()
        }
    }

    fn stream() -> Stream {
        Stream::new(Purpose::Frames, &[7])
    }

    #[test]
    fn frames_are_spread_over_the_clip_by_default() {
        assert_eq!(
            rule(5).select(100, 30.0, &mut stream()),
            [0, 25, 50, 74, 99]
        );
    }

    #[test]
    fn halves_round_to_even_as_python_does() {
        // max index 5 over 2 intervals: 2.5 → 2 (Python), not 3.
        assert_eq!(rule(3).select(6, 30.0, &mut stream())[1], 2);
        // max index 7 over 2 intervals: 3.5 → 4.
        assert_eq!(rule(3).select(8, 30.0, &mut stream())[1], 4);
    }

    #[test]
    fn a_clip_shorter_than_num_frames_repeats_frames() {
        assert_eq!(rule(5).select(3, 24.0, &mut stream()), [0, 0, 1, 2, 2]);
    }

    #[test]
    fn frames_at_fps_start_at_a_seeded_point_and_step_by_the_rate_ratio() {
        let r = FrameRule {
            shrink_video_to_frames: false,
            fps: 15.0,
            ..rule(4)
        };
        let a = r.select(100, 30.0, &mut stream());
        assert_eq!(
            a,
            r.select(100, 30.0, &mut stream()),
            "same seed, same start"
        );
        assert!(a.windows(2).all(|w| w[1] - w[0] == 2), "{a:?}");
        assert!(a[3] <= 99);
        let starts: std::collections::BTreeSet<u64> = (0..40)
            .map(|s| r.select(100, 30.0, &mut Stream::new(Purpose::Frames, &[s]))[0])
            .collect();
        assert!(starts.len() > 10, "the start is drawn: {starts:?}");
        // Too short at that rate: spread instead.
        assert_eq!(r.select(7, 30.0, &mut stream()), [0, 2, 4, 6]);
    }

    #[test]
    fn auto_frame_count_snaps_to_the_temporal_compression_plus_the_key_frame() {
        let auto = FrameRule {
            auto_frame_count: true,
            fps: 16.0,
            temporal_compression: 4,
            ..FrameRule::default()
        };
        // 3 s at 16 fps = 48 frames → (48 − 1) // 4 · 4 + 1 = 45 with the tail trimmed.
        assert_eq!(auto.frame_count(90, 30.0), 45);
        let untrimmed = FrameRule {
            trim_auto_frame_count_tail: false,
            ..auto
        };
        assert_eq!(untrimmed.frame_count(90, 30.0), 49);
        // Trimmed: frames at the dataset rate from the start, never past the end.
        let frames = auto.select(90, 30.0, &mut stream());
        assert_eq!(frames.len(), 45);
        assert_eq!(&frames[..5], [0, 2, 4, 6, 8]); // 1.875 → 2, 3.75 → 4, 5.625 → 6
        assert!(frames.iter().all(|&f| f < 90));
        // Untrimmed: spread over the clip.
        let spread = untrimmed.select(90, 30.0, &mut stream());
        assert_eq!((spread[0], spread[48]), (0, 89));
    }

    #[test]
    fn only_more_than_one_frame_or_auto_makes_a_video_dataset() {
        assert!(!FrameRule::default().is_video());
        assert!(rule(2).is_video());
        assert!(
            FrameRule {
                auto_frame_count: true,
                ..FrameRule::default()
            }
            .is_video()
        );
    }
}
