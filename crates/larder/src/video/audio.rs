//! A clip's audio, as AI Toolkit's `load_and_process_video` takes it with `do_audio`
//! (`toolkit/dataloader_mixins.py`): the whole track decoded at its own rate, mixed to stereo,
//! optionally normalized to a peak of 0.999, cut to the time the chosen frames span and
//! stretched (linearly) or padded to the clip's training duration, `num_frames / fps`.
//!
//! AI Toolkit reads the track with torchaudio (FFmpeg's decoders through torchcodec), so the
//! samples are FFmpeg's, as float32; the arithmetic after it is reproduced in the same float
//! widths (f64 for times, f32 for samples) and with Python's rounding.

use std::path::Path;

use ffmpeg::format::Sample;
use ffmpeg::format::sample::Type as Layout;
use ffmpeg::media::Type;
use ffmpeg_next as ffmpeg;

use super::python_round;
use crate::config::{AudioRule, FrameRule};
use crate::{Error, Result};

/// Identity of the audio pipeline, part of the key of every stored waveform.
pub const AUDIO_PIPELINE: &str = "audio=ffmpeg-f32+stereo-aitk+window-aitk+stretch-linear;v1";

/// What a container says about its audio track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct AudioTrack {
    /// Samples per second.
    pub rate: u32,
    /// Channels.
    pub channels: u16,
}

/// The audio track of an open container (the best one, as FFmpeg ranks them), if it has one
/// with a rate and channels.
pub(crate) fn audio_track(input: &ffmpeg::format::context::Input) -> Option<AudioTrack> {
    let stream = input.streams().best(Type::Audio)?;
    // SAFETY: `parameters` wraps the stream's live AVCodecParameters.
    let (rate, channels) = unsafe {
        let p = &*stream.parameters().as_ptr();
        (p.sample_rate, p.ch_layout.nb_channels)
    };
    Some(AudioTrack {
        rate: u32::try_from(rate).ok().filter(|r| *r > 0)?,
        channels: u16::try_from(channels).ok().filter(|c| *c > 0)?,
    })
}

/// The gain of the centre and surround channels folded into stereo: AI Toolkit's literal,
/// not 1/√2, because the mix must be its mix.
#[allow(clippy::approx_constant)]
const SURROUND_GAIN: f32 = 0.7071;

/// A decoded track: one vector of samples per channel, at `rate`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Waveform {
    pub(crate) channels: Vec<Vec<f32>>,
    pub(crate) rate: u32,
}

/// Decodes the whole audio track of `path` to float samples, channel by channel.
pub(crate) fn decode_audio(path: &Path) -> Result<Waveform> {
    super::init();
    let fail = |e: ffmpeg::Error| Error::image(path, format!("cannot decode its audio: {e}"));
    let mut input = ffmpeg::format::input(path).map_err(fail)?;
    let stream = input
        .streams()
        .best(Type::Audio)
        .ok_or_else(|| Error::image(path, "the file has no audio track"))?;
    let index = stream.index();
    let mut context =
        ffmpeg::codec::context::Context::from_parameters(stream.parameters()).map_err(fail)?;
    context.set_threading(ffmpeg::codec::threading::Config::count(1));
    let mut decoder = context.decoder().audio().map_err(fail)?;
    let mut channels: Vec<Vec<f32>> = Vec::new();
    let mut frame = ffmpeg::frame::Audio::empty();
    let mut packet = ffmpeg::Packet::empty();
    let mut ended = false;
    loop {
        if !ended {
            match packet.read(&mut input) {
                Ok(()) if packet.stream() != index => continue,
                Ok(()) => decoder.send_packet(&packet).map_err(fail)?,
                Err(ffmpeg::Error::Eof) => {
                    ended = true;
                    decoder.send_eof().map_err(fail)?;
                }
                Err(e) => return Err(fail(e)),
            }
        }
        let mut drained = true;
        while decoder.receive_frame(&mut frame).is_ok() {
            drained = false;
            append_samples(&frame, &mut channels).map_err(|m| Error::image(path, m))?;
        }
        if ended && drained {
            break;
        }
    }
    if channels.is_empty() || channels[0].is_empty() {
        return Err(Error::image(path, "its audio track has no samples"));
    }
    Ok(Waveform {
        channels,
        rate: decoder.rate(),
    })
}

/// Converts one sample's bytes (native endian) to f32.
type ToF32 = fn(&[u8]) -> f32;

/// Appends a decoded frame's samples to `channels`, converted to f32 in [-1, 1] as FFmpeg's
/// resampler converts them (integers divided by their full scale).
fn append_samples(
    frame: &ffmpeg::frame::Audio,
    channels: &mut Vec<Vec<f32>>,
) -> std::result::Result<(), String> {
    let n = frame.samples();
    let count = usize::from(frame.channels());
    if channels.is_empty() {
        channels.resize(count, Vec::new());
    } else if channels.len() != count {
        return Err(format!(
            "its audio track changes from {} to {count} channels",
            channels.len()
        ));
    }
    // Each format's sample size, and its conversion to f32 (chosen once per frame, not per
    // sample).
    let (size, planar, convert): (usize, bool, ToF32) = match frame.format() {
        Sample::U8(l) => (1, l == Layout::Planar, |b| {
            (f32::from(b[0]) - 128.0) / 128.0
        }),
        Sample::I16(l) => (2, l == Layout::Planar, |b| {
            f32::from(i16::from_ne_bytes([b[0], b[1]])) / 32_768.0
        }),
        Sample::I32(l) => (4, l == Layout::Planar, |b| {
            (f64::from(i32::from_ne_bytes([b[0], b[1], b[2], b[3]])) / 2_147_483_648.0) as f32
        }),
        Sample::F32(l) => (4, l == Layout::Planar, |b| {
            f32::from_ne_bytes([b[0], b[1], b[2], b[3]])
        }),
        Sample::I64(l) => (8, l == Layout::Planar, |b| {
            let v = i64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
            (v as f64 / 9_223_372_036_854_775_808.0) as f32
        }),
        Sample::F64(l) => (8, l == Layout::Planar, |b| {
            f64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
        }),
        Sample::None => return Err("its audio frames have no sample format".into()),
    };
    for (c, out) in channels.iter_mut().enumerate() {
        // Planar: one plane per channel; packed: the channels interleaved in plane 0. FFmpeg
        // sets only the first plane's line size for audio, so each plane's length is computed.
        let (plane, at, stride) = if planar { (c, 0, 1) } else { (0, c, count) };
        let bytes = if planar { n * size } else { n * count * size };
        // SAFETY: a decoded audio frame has `extended_data[plane]` for every plane (one per
        // channel when planar, one otherwise) holding at least `bytes` bytes.
        let data = unsafe {
            let planes = (*frame.as_ptr()).extended_data;
            std::slice::from_raw_parts(*planes.add(plane), bytes)
        };
        out.extend((0..n).map(|i| {
            let o = (at + i * stride) * size;
            convert(&data[o..o + size])
        }));
    }
    Ok(())
}

impl AudioRule {
    /// The clip's stereo waveform for the frames `frames` (chosen at `video_fps` by `rule`):
    /// AI Toolkit's `do_audio` window and stretch. `None` when the frames span no time or no
    /// sample of the track.
    pub(crate) fn window(
        &self,
        track: Waveform,
        frames: &[u64],
        video_fps: f64,
        rule: &FrameRule,
    ) -> Option<[Vec<f32>; 2]> {
        let rate = f64::from(track.rate);
        let mut stereo = to_stereo(track.channels);
        if self.normalize {
            let peak = stereo.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
            let gain = 0.999f32 / (peak + 1e-9);
            for v in stereo.iter_mut().flatten() {
                *v *= gain;
            }
        }
        let (first, last) = (*frames.first()?, *frames.last()?);
        if video_fps <= 0.0 {
            return None;
        }
        let start_time = first as f64 / video_fps;
        let end_time = (last + 1) as f64 / video_fps;
        let target_duration = if rule.fps > 0.0 {
            frames.len() as f64 / rule.fps
        } else {
            (end_time - start_time).max(0.0)
        };
        if end_time - start_time <= 0.0 {
            return None;
        }
        let trim = rule.auto_frame_count && rule.trim_auto_frame_count_tail;
        let len = stereo[0].len() as i64;
        let start = python_round(start_time * rate);
        let end = if trim && target_duration > 0.0 {
            start + python_round(target_duration * rate)
        } else {
            python_round(end_time * rate)
        };
        let (start, end) = (start.clamp(0, len) as usize, end.clamp(0, len) as usize);
        if end <= start {
            return None;
        }
        let window = stereo.map(|c| c[start..end].to_vec());
        let target = python_round(target_duration * rate);
        if target <= 0 || target as usize == end - start {
            return Some(window);
        }
        let target = target as usize;
        Some(window.map(|c| {
            if trim {
                // Never stretched in trim mode: silence pads a short tail, a long one is cut.
                let mut c = c;
                c.resize(target, 0.0);
                c
            } else {
                stretch_linear(&c, target)
            }
        }))
    }
}

/// AI Toolkit's `waveform_to_stereo`: stereo as is, mono doubled, 5.1 and 7.1 folded down with
/// the centre and surrounds at 0.7071 (the LFE left out), anything else averaged and doubled.
/// Sums are taken in torch's order (left to right), in f32.
fn to_stereo(mut channels: Vec<Vec<f32>>) -> [Vec<f32>; 2] {
    const K: f32 = SURROUND_GAIN;
    let len = channels.first().map_or(0, Vec::len);
    match channels.len() {
        2 => {
            let right = channels.pop().unwrap_or_default();
            let left = channels.pop().unwrap_or_default();
            [left, right]
        }
        1 => {
            let mono = channels.pop().unwrap_or_default();
            [mono.clone(), mono]
        }
        // FL, FR, FC, LFE, BL, BR: fl + k·fc + k·bl.
        6 => {
            let c = &channels;
            let side = |f: usize, b: usize| -> Vec<f32> {
                (0..len)
                    .map(|i| c[f][i] + K * c[2][i] + K * c[b][i])
                    .collect()
            };
            [side(0, 4), side(1, 5)]
        }
        // FL, FR, FC, LFE, BL, BR, SL, SR: fl + k·fc + k·(bl + sl).
        8 => {
            let c = &channels;
            let side = |f: usize, b: usize, s: usize| -> Vec<f32> {
                (0..len)
                    .map(|i| c[f][i] + K * c[2][i] + K * (c[b][i] + c[s][i]))
                    .collect()
            };
            [side(0, 4, 6), side(1, 5, 7)]
        }
        n => {
            let mean: Vec<f32> = (0..len)
                .map(|i| channels.iter().fold(0f32, |acc, c| acc + c[i]) / n as f32)
                .collect();
            [mean.clone(), mean]
        }
    }
}

/// torch's `F.interpolate(mode="linear", align_corners=False)` of one channel to `target`
/// samples, in f32 as torch computes it on the CPU.
fn stretch_linear(input: &[f32], target: usize) -> Vec<f32> {
    let n = input.len();
    let scale = n as f32 / target as f32;
    (0..target)
        .map(|i| {
            let source = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (source as usize).min(n - 1);
            let lambda = (source - i0 as f32).clamp(0.0, 1.0);
            let i1 = if i0 < n - 1 { i0 + 1 } else { i0 };
            input[i0] * (1.0 - lambda) + input[i1] * lambda
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(num_frames: u32, fps: f64) -> FrameRule {
        FrameRule {
            num_frames,
            fps,
            ..FrameRule::default()
        }
    }

    fn ramp(n: usize) -> Waveform {
        Waveform {
            channels: vec![(0..n).map(|i| i as f32 / n as f32).collect()],
            rate: 1000,
        }
    }

    #[test]
    fn the_window_is_the_time_the_frames_span_stretched_to_the_training_duration() {
        let audio = AudioRule { normalize: false };
        // Frames 10..=19 of a 20 fps clip: 0.5 s to 1.0 s, samples 500..1000 of a 1 kHz track.
        // Trained as 10 frames at 10 fps, 1 s: stretched to 1000 samples.
        let frames: Vec<u64> = (10..20).collect();
        let [left, right] = audio
            .window(ramp(2000), &frames, 20.0, &rule(10, 10.0))
            .expect("a window");
        assert_eq!(left, right, "mono is doubled");
        assert_eq!(left.len(), 1000);
        // Twice as long: output sample i reads the source at i / 2 − 0.25, between samples.
        assert!((left[0] - 0.25).abs() < 1e-6);
        assert!((left[999] - 999.0 / 2000.0).abs() < 1e-6);
        assert!((left[2] - (500.75 / 2000.0)).abs() < 1e-6, "{}", left[2]);
    }

    #[test]
    fn a_window_already_at_the_training_duration_is_the_track_itself() {
        let audio = AudioRule { normalize: false };
        let frames: Vec<u64> = (0..8).collect();
        let [left, _] = audio
            .window(ramp(1000), &frames, 8.0, &rule(8, 8.0))
            .expect("a window");
        assert_eq!(left, ramp(1000).channels[0]);
    }

    #[test]
    fn trimmed_auto_frame_counts_pad_with_silence_instead_of_stretching() {
        let audio = AudioRule { normalize: true };
        let mut frame_rule = rule(1, 10.0);
        frame_rule.auto_frame_count = true;
        // 12 frames at 10 fps: 1.2 s from 0, but the track has 1 s.
        let frames: Vec<u64> = (0..12).collect();
        let [left, _] = audio
            .window(ramp(1000), &frames, 10.0, &frame_rule)
            .expect("a window");
        assert_eq!(left.len(), 1200);
        assert!(left[1000..].iter().all(|v| *v == 0.0));
        // Normalized: the peak is 0.999.
        let peak = left.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!((peak - 0.999).abs() < 1e-6, "{peak}");
    }

    #[test]
    fn surround_is_folded_to_stereo_as_ai_toolkit_does() {
        let c = |v: f32| vec![v; 3];
        let five_one = vec![c(1.0), c(2.0), c(3.0), c(100.0), c(4.0), c(5.0)];
        let [l, r] = to_stereo(five_one);
        assert!((l[0] - (1.0 + SURROUND_GAIN * 3.0 + SURROUND_GAIN * 4.0)).abs() < 1e-5);
        assert!((r[0] - (2.0 + SURROUND_GAIN * 3.0 + SURROUND_GAIN * 5.0)).abs() < 1e-5);
        let [l, r] = to_stereo(vec![c(1.0), c(2.0), c(6.0)]);
        assert_eq!((l[0], r[0]), (3.0, 3.0));
    }

    #[test]
    fn frames_spanning_no_samples_have_no_window() {
        let audio = AudioRule { normalize: false };
        // Frame 100 at 10 fps is 10 s in; the track is 1 s long.
        assert_eq!(
            audio.window(ramp(1000), &[100, 101], 10.0, &rule(2, 10.0)),
            None
        );
    }
}
