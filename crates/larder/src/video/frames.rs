//! Which frames of a clip an item trains on: AI Toolkit's choice (`load_and_process_video` and
//! `get_auto_frame_count` in `toolkit/dataloader_mixins.py`), expression for expression.
//!
//! Python's `round` rounds halves to even, and `int()` truncates toward zero; both are
//! reproduced, because one frame off is a different training clip.

use crate::config::FrameRule;
use crate::rng::Stream;

// The rule is a config value; what it selects is the video module's business.
impl FrameRule {
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

    /// The last frame a clip may start at when its frames are taken at `fps` from a random
    /// point (AI Toolkit draws it with `random.randint(0, last)`); `None` when the frames are
    /// spread over the clip or start at its first frame.
    pub fn last_start(&self, total_frames: u64, video_fps: f64) -> Option<u64> {
        let n = u64::from(self.frame_count(total_frames, video_fps));
        if (self.auto_frame_count && self.trim_auto_frame_count_tail)
            || self.shrink_video_to_frames
            || total_frames < n
        {
            return None;
        }
        let interval = python_round(video_fps / self.fps).max(1);
        (total_frames / interval >= n).then(|| {
            total_frames
                .saturating_sub(1)
                .saturating_sub((n - 1) * interval)
        })
    }

    /// Draws the start frame from `rng` where [`FrameRule::last_start`] says there is a choice;
    /// 0 otherwise.
    pub fn draw_start(&self, total_frames: u64, video_fps: f64, rng: &mut Stream) -> u64 {
        self.last_start(total_frames, video_fps)
            .map_or(0, |last| rng.between(0, last))
    }

    /// The frame indices (0-based, in training order, repeats allowed) of a clip of
    /// `total_frames` frames (at least 1) at `video_fps`, starting at `start` where the frames
    /// are taken at `fps` from a drawn point ([`FrameRule::draw_start`]).
    pub fn select(&self, total_frames: u64, video_fps: f64, start: u64) -> Vec<u64> {
        let n = u64::from(self.frame_count(total_frames, video_fps));
        let max_index = total_frames.saturating_sub(1);
        let frames: Vec<u64> = if self.auto_frame_count && self.trim_auto_frame_count_tail {
            let ratio = if video_fps > 0.0 {
                video_fps / self.fps
            } else {
                1.0
            };
            (0..n).map(|i| python_round(i as f64 * ratio)).collect()
        } else if self.last_start(total_frames, video_fps).is_some() {
            let interval = python_round(video_fps / self.fps).max(1);
            (0..n).map(|i| start + i * interval).collect()
        } else {
            // Spread evenly over the whole clip (also when it is too short for `fps`).
            let interval = if n > 1 {
                max_index as f64 / (n - 1) as f64
            } else {
                0.0
            };
            (0..n).map(|i| python_round(i as f64 * interval)).collect()
        };
        frames.into_iter().map(|f| f.min(max_index)).collect()
    }
}

/// Python's `int(round(x))` as a frame index (x ≥ 0).
fn python_round(x: f64) -> u64 {
    super::python_round(x).max(0) as u64
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

    /// Selects as the planner does: the start drawn from a seeded stream.
    fn pick(rule: &FrameRule, total: u64, fps: f64, seed: u64) -> Vec<u64> {
        let start = rule.draw_start(total, fps, &mut Stream::new(Purpose::Frames, &[seed]));
        rule.select(total, fps, start)
    }

    #[test]
    fn frames_are_spread_over_the_clip_by_default() {
        assert_eq!(pick(&rule(5), 100, 30.0, 7), [0, 25, 50, 74, 99]);
    }

    #[test]
    fn halves_round_to_even_as_python_does() {
        // max index 5 over 2 intervals: 2.5 → 2 (Python), not 3.
        assert_eq!(pick(&rule(3), 6, 30.0, 7)[1], 2);
        // max index 7 over 2 intervals: 3.5 → 4.
        assert_eq!(pick(&rule(3), 8, 30.0, 7)[1], 4);
    }

    #[test]
    fn a_clip_shorter_than_num_frames_repeats_frames() {
        assert_eq!(pick(&rule(5), 3, 24.0, 7), [0, 0, 1, 2, 2]);
    }

    #[test]
    fn frames_at_fps_start_at_a_seeded_point_and_step_by_the_rate_ratio() {
        let r = FrameRule {
            shrink_video_to_frames: false,
            fps: 15.0,
            ..rule(4)
        };
        let a = pick(&r, 100, 30.0, 7);
        assert_eq!(a, pick(&r, 100, 30.0, 7), "same seed, same start");
        assert!(a.windows(2).all(|w| w[1] - w[0] == 2), "{a:?}");
        assert!(a[3] <= 99);
        let starts: std::collections::BTreeSet<u64> =
            (0..40).map(|s| pick(&r, 100, 30.0, s)[0]).collect();
        assert!(starts.len() > 10, "the start is drawn: {starts:?}");
        // Too short at that rate: spread instead.
        assert_eq!(pick(&r, 7, 30.0, 7), [0, 2, 4, 6]);
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
        let frames = pick(&auto, 90, 30.0, 7);
        assert_eq!(frames.len(), 45);
        assert_eq!(&frames[..5], [0, 2, 4, 6, 8]); // 1.875 → 2, 3.75 → 4, 5.625 → 6
        assert!(frames.iter().all(|&f| f < 90));
        // Untrimmed: spread over the clip.
        let spread = pick(&untrimmed, 90, 30.0, 7);
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
