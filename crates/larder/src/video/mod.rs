//! Video clips: what a container says about its video stream (without decoding the clip), which
//! frames an item trains on, and decoding just those frames.
//!
//! FFmpeg's libraries do the reading, through the `ffmpeg-next` binding. The numbers AI
//! Toolkit keys its frame choice on come from OpenCV's `VideoCapture`, which wraps the same
//! libraries; they are read here the way OpenCV reads them (see [`probe`]).

pub(crate) mod audio;
mod frames;

pub use audio::AudioTrack;

use std::path::Path;
use std::sync::Once;

use ffmpeg::format::Pixel;
use ffmpeg::media::Type;
use ffmpeg::software::scaling;
use ffmpeg_next as ffmpeg;

use crate::{Error, Result};

/// One decoded frame: packed RGB, `width`×`height`, rotated upright.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Frame {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

/// Python's `round(x)`: halves go to the even neighbour. AI Toolkit's frame and sample
/// choices round this way; one frame or sample off is other training data.
fn python_round(x: f64) -> i64 {
    x.round_ties_even() as i64
}

/// Identity of the frame pipeline, part of the key of every stored clip.
pub const PIPELINE: &str = "decode=ffmpeg+sws-bicubic-rgb24+rotate;select=aitk-v1";

/// What a container says about its video stream.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct VideoInfo {
    /// Width as displayed (after the container's rotation).
    pub width: u32,
    /// Height as displayed.
    pub height: u32,
    /// Frame count as OpenCV reports it: the stream's frame count, else duration × rate.
    pub frames: u64,
    /// Frames per second: the stream's average rate, else its base rate.
    pub fps: f64,
    /// Clockwise rotation, in degrees (0, 90, 180 or 270), applied to every decoded frame.
    pub rotation: u32,
    /// The clip's audio track, if it has one.
    pub audio: Option<AudioTrack>,
}

/// Why a file cannot be read as a video.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum VideoProblem {
    /// A zero-byte file.
    Empty,
    /// Fewer frames in the file than its header announces: it was cut off.
    Truncated(String),
    /// Not a readable container, or no video stream in it.
    Corrupt(String),
    /// The file could not be read at all.
    Unreadable(String),
}

fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // FFmpeg prints its own warnings to standard error; larder reports problems as
        // findings and errors instead.
        ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Quiet);
        let _ = ffmpeg::init();
    });
}

/// Reads `path`'s container: size, frame count, rate, rotation, returned with the file's
/// length; and checks that the file holds every frame its header announces (a cut-off download usually still opens): from the
/// container's index where it lists every frame (MP4, MOV), else by reading the packets.
/// Nothing is decoded beyond what FFmpeg's stream probe decodes to read the codec's parameters.
pub(crate) fn probe(path: &Path) -> std::result::Result<(VideoInfo, u64), VideoProblem> {
    init();
    let length = match std::fs::metadata(path) {
        Ok(m) if m.len() == 0 => return Err(VideoProblem::Empty),
        Ok(m) => m.len(),
        Err(e) => return Err(VideoProblem::Unreadable(e.to_string())),
    };
    let mut input = ffmpeg::format::input(path)
        .map_err(|e| VideoProblem::Corrupt(format!("not a readable video container: {e}")))?;
    let (index, info, announced) = {
        let stream = input
            .streams()
            .best(Type::Video)
            .ok_or_else(|| VideoProblem::Corrupt("the file has no video stream".into()))?;
        let params = stream.parameters();
        let (w, h) = unsafe {
            // SAFETY: `params` wraps the stream's live AVCodecParameters.
            let p = &*params.as_ptr();
            (p.width, p.height)
        };
        if w <= 0 || h <= 0 {
            return Err(VideoProblem::Corrupt(format!(
                "the video stream has no size ({w}x{h})"
            )));
        }
        let fps = [stream.avg_frame_rate(), stream.rate()]
            .into_iter()
            .map(f64::from)
            .find(|r| r.is_finite() && *r > 0.0)
            .ok_or_else(|| VideoProblem::Corrupt("the video stream has no frame rate".into()))?;
        let announced = u64::try_from(stream.frames()).unwrap_or(0);
        let frames = if announced > 0 {
            announced
        } else {
            // OpenCV: floor(duration in seconds × fps + 0.5).
            let seconds = if stream.duration() > 0 {
                stream.duration() as f64 * f64::from(stream.time_base())
            } else {
                input.duration().max(0) as f64 / f64::from(ffmpeg::ffi::AV_TIME_BASE)
            };
            (seconds * fps + 0.5).floor().max(0.0) as u64
        };
        let rotation = rotation(&stream);
        let (width, height) = if rotation.is_multiple_of(180) {
            (w as u32, h as u32)
        } else {
            (h as u32, w as u32)
        };
        (
            stream.index(),
            VideoInfo {
                width,
                height,
                frames,
                fps,
                rotation,
                audio: audio::audio_track(&input),
            },
            announced,
        )
    };
    if info.frames == 0 {
        return Err(VideoProblem::Corrupt(
            "the video stream has no frames".into(),
        ));
    }
    match indexed_end(&input, index) {
        // The container's index (an MP4's sample table) says where every frame lies: a file
        // shorter than the last of them was cut off. Nothing more is read.
        Some((entries, end)) if announced > 0 && entries >= announced => {
            if end > length {
                return Err(VideoProblem::Truncated(format!(
                    "its frames reach byte {end} but the file has {length}"
                )));
            }
        }
        // No full index (Matroska and WebM index key frames only): read the packets.
        _ => count_packets(&mut input, index, announced, info.frames)?,
    }
    Ok((info, length))
}

/// The number of entries of stream `index`'s index in the container, and the byte where the
/// last of them ends; `None` without an index.
fn indexed_end(input: &ffmpeg::format::context::Input, index: usize) -> Option<(u64, u64)> {
    let stream = input.stream(index)?;
    // SAFETY: the stream pointer is live while `input` is; the index functions read it only,
    // and every entry they return is checked for null before it is read.
    unsafe {
        let st = stream.as_ptr().cast_mut();
        let n = ffmpeg::ffi::avformat_index_get_entries_count(st);
        if n <= 0 {
            return None;
        }
        let mut end = 0u64;
        for i in 0..n {
            let entry = ffmpeg::ffi::avformat_index_get_entry(st, i);
            if let Some(e) = entry.as_ref() {
                let last = e.pos.max(0) as u64 + e.size().max(0) as u64;
                end = end.max(last);
            }
        }
        Some((n as u64, end))
    }
}

/// Reads every packet of the file (without decoding) and checks stream `index` has the
/// `announced` frames when the header announces a count, else about the `estimated` ones
/// (duration × rate, within a frame), and at least one.
fn count_packets(
    input: &mut ffmpeg::format::context::Input,
    index: usize,
    announced: u64,
    estimated: u64,
) -> std::result::Result<(), VideoProblem> {
    let mut packets = 0u64;
    let mut packet = ffmpeg::Packet::empty();
    loop {
        match packet.read(input) {
            Ok(()) => packets += u64::from(packet.stream() == index),
            Err(ffmpeg::Error::Eof) => break,
            Err(e) => {
                return Err(VideoProblem::Truncated(format!(
                    "reading stopped after {packets} video packets: {e}"
                )));
            }
        }
    }
    if announced > 0 && packets < announced {
        return Err(VideoProblem::Truncated(format!(
            "the header announces {announced} frames but the file holds {packets}"
        )));
    }
    if announced == 0 && packets + 1 < estimated {
        return Err(VideoProblem::Truncated(format!(
            "the header's duration makes {estimated} frames but the file holds {packets}"
        )));
    }
    if packets == 0 {
        return Err(VideoProblem::Truncated(
            "the file holds no video packets".into(),
        ));
    }
    Ok(())
}

/// The clockwise rotation a stream's display matrix asks for, as OpenCV applies it.
fn rotation(stream: &ffmpeg::format::stream::Stream<'_>) -> u32 {
    for side in stream.side_data() {
        if side.kind() == ffmpeg::codec::packet::side_data::Type::DisplayMatrix
            && side.data().len() >= 36
        {
            // SAFETY: a display matrix is nine i32s; the length was checked above.
            let ccw = unsafe { ffmpeg::ffi::av_display_rotation_get(side.data().as_ptr().cast()) };
            if !ccw.is_finite() {
                return 0;
            }
            let cw = (-(ccw.round() as i64)).rem_euclid(360) as u32;
            return (cw + 45) / 90 % 4 * 90;
        }
    }
    0
}

/// Decodes the frames of `path` at `indices` (any order, repeats allowed) as RGB images in the
/// order asked. The decoder seeks to the key frame before the first frame needed and stops after
/// the last; when the file ends before a frame its header announced, the last decoded frame
/// stands in for the rest, as in AI Toolkit.
pub(crate) fn decode_frames(path: &Path, info: &VideoInfo, indices: &[u64]) -> Result<Vec<Frame>> {
    init();
    let mut wanted: Vec<u64> = indices.to_vec();
    wanted.sort_unstable();
    wanted.dedup();
    let Some(&first) = wanted.first() else {
        return Ok(Vec::new());
    };
    let fail = |what: &str, e: ffmpeg::Error| Error::image(path, format!("{what}: {e}"));
    let decoded = match decode_sorted(path, info, &wanted, first > 0) {
        Ok(Some(frames)) => frames,
        // The seek landed past the first frame needed (a stream without usable timestamps):
        // decode from the start.
        Ok(None) => decode_sorted(path, info, &wanted, false)
            .map_err(|e| fail("decoding", e))?
            .ok_or_else(|| Error::image(path, "no frame could be decoded"))?,
        Err(e) => return Err(fail("decoding", e)),
    };
    Ok(indices
        .iter()
        .map(|i| decoded[wanted.binary_search(i).unwrap_or(0)].clone())
        .collect())
}

/// Decodes `wanted` (sorted, unique). `None` when a seek overshot the first frame needed.
fn decode_sorted(
    path: &Path,
    info: &VideoInfo,
    wanted: &[u64],
    seek: bool,
) -> std::result::Result<Option<Vec<Frame>>, ffmpeg::Error> {
    let mut input = ffmpeg::format::input(path)?;
    let stream = input
        .streams()
        .best(Type::Video)
        .ok_or(ffmpeg::Error::StreamNotFound)?;
    let index = stream.index();
    let time_base = f64::from(stream.time_base());
    let start_time = if stream.start_time() == ffmpeg::ffi::AV_NOPTS_VALUE {
        0
    } else {
        stream.start_time()
    };
    let mut context = ffmpeg::codec::context::Context::from_parameters(stream.parameters())?;
    // Items are decoded in parallel already; one thread per clip keeps the cores for them.
    context.set_threading(ffmpeg::codec::threading::Config::count(1));
    let mut decoder = context.decoder().video()?;
    if seek {
        let seconds = wanted[0] as f64 / info.fps;
        // SAFETY: reads a plain field of the open format context.
        let container_start = unsafe { (*input.as_ptr()).start_time };
        let offset = if container_start == ffmpeg::ffi::AV_NOPTS_VALUE {
            0
        } else {
            container_start
        };
        let ts = (seconds * f64::from(ffmpeg::ffi::AV_TIME_BASE)) as i64 + offset;
        input.seek(ts, ..ts)?;
    }
    let mut out: Vec<Frame> = Vec::with_capacity(wanted.len());
    let mut counted = 0u64;
    let mut last: Option<Frame> = None;
    let mut scaler: Option<scaling::Context> = None;
    let mut frame = ffmpeg::frame::Video::empty();
    let mut packet = ffmpeg::Packet::empty();
    let mut ended = false;
    while out.len() < wanted.len() {
        // Feed the decoder one packet of the stream (or the end), then drain what it gives.
        if !ended {
            match packet.read(&mut input) {
                Ok(()) if packet.stream() != index => continue,
                Ok(()) => decoder.send_packet(&packet)?,
                Err(ffmpeg::Error::Eof) => {
                    ended = true;
                    decoder.send_eof()?;
                }
                Err(e) => return Err(e),
            }
        }
        let mut drained = true;
        while decoder.receive_frame(&mut frame).is_ok() {
            drained = false;
            let number = if seek {
                match frame.timestamp() {
                    Some(ts) => (((ts - start_time) as f64 * time_base) * info.fps)
                        .round()
                        .max(0.0) as u64,
                    None => return Ok(None),
                }
            } else {
                counted
            };
            counted += 1;
            let need = wanted[out.len()];
            if number > need && out.is_empty() && seek {
                return Ok(None);
            }
            if number < need {
                continue;
            }
            let rgb = to_rgb(&frame, &mut scaler, info.rotation)?;
            // Frames the stream skipped (variable rate) take the next one decoded.
            while out.len() < wanted.len() && wanted[out.len()] <= number {
                out.push(rgb.clone());
            }
            last = Some(rgb);
            if out.len() == wanted.len() {
                break;
            }
        }
        if ended && drained {
            break;
        }
    }
    if out.len() < wanted.len() {
        let Some(tail) = last.or_else(|| out.last().cloned()) else {
            return Ok(None);
        };
        out.resize(wanted.len(), tail);
    }
    Ok(Some(out))
}

/// Converts a decoded frame to packed RGB and applies the stream's rotation.
fn to_rgb(
    frame: &ffmpeg::frame::Video,
    scaler: &mut Option<scaling::Context>,
    rotation: u32,
) -> std::result::Result<Frame, ffmpeg::Error> {
    let (w, h) = (frame.width(), frame.height());
    let reuse = scaler.as_ref().is_some_and(|s| {
        s.input().width == w && s.input().height == h && s.input().format == frame.format()
    });
    if !reuse {
        *scaler = Some(scaling::Context::get(
            frame.format(),
            w,
            h,
            Pixel::RGB24,
            w,
            h,
            scaling::Flags::BICUBIC,
        )?);
    }
    let mut rgb = ffmpeg::frame::Video::empty();
    if let Some(s) = scaler.as_mut() {
        s.run(frame, &mut rgb)?;
    }
    let stride = rgb.stride(0);
    let row = w as usize * 3;
    let mut data = Vec::with_capacity(row * h as usize);
    for y in 0..h as usize {
        data.extend_from_slice(&rgb.data(0)[y * stride..y * stride + row]);
    }
    Ok(rotate(
        Frame {
            width: w,
            height: h,
            data,
        },
        rotation,
    ))
}

/// Rotates an RGB image clockwise by 0, 90, 180 or 270 degrees.
fn rotate(img: Frame, clockwise: u32) -> Frame {
    let (w, h) = (img.width as usize, img.height as usize);
    let (nw, nh) = match clockwise {
        90 | 270 => (h, w),
        180 => (w, h),
        _ => return img,
    };
    let mut data = Vec::with_capacity(img.data.len());
    for y in 0..nh {
        for x in 0..nw {
            // The source pixel of (x, y) in the rotated image.
            let (sx, sy) = match clockwise {
                90 => (y, h - 1 - x),
                180 => (w - 1 - x, h - 1 - y),
                _ => (w - 1 - y, x),
            };
            let i = (sy * w + sx) * 3;
            data.extend_from_slice(&img.data[i..i + 3]);
        }
    }
    Frame {
        width: nw as u32,
        height: nh as u32,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use larder_synth::video::{frame_index, write_video};

    fn clip(dir: &Path, frames: u32) -> std::path::PathBuf {
        let path = dir.join("clip.mp4");
        write_video(&path, 64, 32, frames, 30, 1).expect("write clip");
        path
    }

    /// The index drawn into a decoded frame (its middle row of red).
    fn index_of(frame: &Frame) -> u32 {
        let w = frame.width as usize;
        let y = frame.height as usize / 2;
        let row: Vec<u8> = (0..w).map(|x| frame.data[(y * w + x) * 3]).collect();
        frame_index(&row)
    }

    #[test]
    fn rotation_turns_frames_clockwise() {
        // 2x1: red, green.
        let img = Frame {
            width: 2,
            height: 1,
            data: vec![255, 0, 0, 0, 255, 0],
        };
        let cw = rotate(img.clone(), 90);
        assert_eq!((cw.width, cw.height), (1, 2));
        assert_eq!(
            cw.data,
            [255, 0, 0, 0, 255, 0],
            "red on top after a quarter turn clockwise"
        );
        let ccw = rotate(img.clone(), 270);
        assert_eq!(ccw.data, [0, 255, 0, 255, 0, 0]);
        assert_eq!(rotate(img, 180).data, [0, 255, 0, 255, 0, 0]);
    }

    #[test]
    fn a_clip_is_probed_from_its_container() {
        let dir = tempfile::tempdir().expect("tempdir");
        let info = probe(&clip(dir.path(), 50)).expect("probe").0;
        assert_eq!(
            (info.width, info.height, info.frames, info.rotation),
            (64, 32, 50, 0)
        );
        assert!((info.fps - 30.0).abs() < 1e-9, "{}", info.fps);
    }

    #[test]
    fn the_frames_asked_for_are_decoded_in_the_order_asked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = clip(dir.path(), 100);
        let info = probe(&path).expect("probe").0;
        // Starting past the first key frames (every 12) makes the decoder seek.
        for indices in [vec![0, 13, 25, 25, 99], vec![40, 41, 77, 60], vec![99]] {
            let frames = decode_frames(&path, &info, &indices).expect("decode");
            let got: Vec<u32> = frames.iter().map(index_of).collect();
            let want: Vec<u32> = indices.iter().map(|&i| i as u32).collect();
            assert_eq!(got, want);
            assert!(frames.iter().all(|f| (f.width, f.height) == (64, 32)));
        }
    }

    #[test]
    fn a_matroska_clip_without_a_frame_count_is_counted_and_checked_by_its_packets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("clip.mkv");
        write_video(&path, 64, 32, 45, 30, 4).expect("write clip");
        let info = probe(&path).expect("probe").0;
        assert_eq!((info.width, info.height, info.frames), (64, 32, 45));
        let frames = decode_frames(&path, &info, &[0, 30, 44]).expect("decode");
        assert_eq!(frames.iter().map(index_of).collect::<Vec<_>>(), [0, 30, 44]);
        let bytes = std::fs::read(&path).expect("read");
        let cut = dir.path().join("cut.mkv");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
        assert!(
            matches!(
                probe(&cut),
                Err(VideoProblem::Truncated(_) | VideoProblem::Corrupt(_))
            ),
            "{:?}",
            probe(&cut)
        );
    }

    #[test]
    fn frames_past_the_end_are_the_last_frame_as_in_ai_toolkit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = clip(dir.path(), 20);
        let mut info = probe(&path).expect("probe").0;
        info.frames = 25; // a header that overstates
        let frames = decode_frames(&path, &info, &[5, 19, 23]).expect("decode");
        assert_eq!(frames.iter().map(index_of).collect::<Vec<_>>(), [5, 19, 19]);
    }

    #[test]
    fn empty_cut_off_and_garbage_files_are_problems_not_panics() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = clip(dir.path(), 60);
        let bytes = std::fs::read(&path).expect("read");
        let empty = dir.path().join("empty.mp4");
        std::fs::write(&empty, b"").expect("write");
        assert_eq!(probe(&empty), Err(VideoProblem::Empty));
        let garbage = dir.path().join("garbage.mp4");
        std::fs::write(&garbage, b"this is not a video at all, just some text").expect("write");
        assert!(
            matches!(probe(&garbage), Err(VideoProblem::Corrupt(_))),
            "{:?}",
            probe(&garbage)
        );
        // The clips have their index first (faststart): one cut in its frames is found from
        // the index, without reading the frames.
        let cut = dir.path().join("half.mp4");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
        assert!(
            matches!(probe(&cut), Err(VideoProblem::Truncated(ref m)) if m.contains("reach byte")),
            "{:?}",
            probe(&cut)
        );
        for keep in [bytes.len() / 3, bytes.len() - 100, 200] {
            let cut = dir.path().join(format!("cut{keep}.mp4"));
            std::fs::write(&cut, &bytes[..keep]).expect("write");
            let got = probe(&cut);
            assert!(
                matches!(
                    got,
                    Err(VideoProblem::Truncated(_) | VideoProblem::Corrupt(_))
                ),
                "{keep} of {} bytes: {got:?}",
                bytes.len()
            );
        }
    }
}
