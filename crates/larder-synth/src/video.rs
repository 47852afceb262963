//! Synthetic video clips whose frames say which frame they are.
//!
//! Each frame shows its index as a bar code over its top five eighths: eight vertical bars, most
//! significant bit on the left, light for a one and dark for a zero. The bars are wide and flat,
//! so the index survives lossy coding, resizing and cropping to the middle; [`frame_index`]
//! reads it back from a decoded frame's middle row. Below the bars, a seeded image
//! ([`crate::render`]) pans one pixel a frame to the left, so that clips of different seeds
//! differ and the coder has texture and motion to work on. Clips are MPEG-4 Part 2 in MP4
//! (FFmpeg's own encoder, in every build), index first.

use std::path::Path;

use ffmpeg_next as ffmpeg;

/// The luma of a one bar and of a zero bar (video range).
const LIGHT: u8 = 235;
const DARK: u8 = 16;

/// The bars: one per bit of the index.
pub const BITS: u32 = 8;

/// Writes a `frames`-frame clip of `width`×`height` (both even) at `fps` frames per second to
/// `path` (an `.mp4`), its texture drawn from `seed`. Frame `i` shows `i % 256`.
pub fn write_video(
    path: &Path,
    width: u32,
    height: u32,
    frames: u32,
    fps: u32,
    seed: u64,
) -> Result<(), String> {
    write_clip(
        path,
        &Clip {
            width,
            height,
            frames,
            fps,
            seed,
            rotate: 0,
            audio: None,
        },
    )
}

/// A synthetic clip: its frames (as [`write_video`] draws them), how players are to turn it,
/// and its audio.
#[derive(Debug, Clone, Copy)]
pub struct Clip {
    /// Frame width (even).
    pub width: u32,
    /// Frame height (even).
    pub height: u32,
    /// Number of frames.
    pub frames: u32,
    /// Frames per second.
    pub fps: u32,
    /// Seed of the texture.
    pub seed: u64,
    /// Degrees (0, 90, 180 or 270) the container asks players to turn the clip clockwise, as
    /// phones record portrait clips: the frames are stored `width`×`height` and the MP4 track's
    /// display matrix says to turn them.
    pub rotate: u32,
    /// An audio track, if any.
    pub audio: Option<Tone>,
}

/// A 16-bit PCM audio track whose samples count: sample `i` of channel `c` is `i` (mod
/// 32768) for even channels and `-i` for odd ones, so a decoded sample says where it was.
/// PCM needs a QuickTime container: write it to a `.mov`.
#[derive(Debug, Clone, Copy)]
pub struct Tone {
    /// Samples per second.
    pub rate: u32,
    /// Channels.
    pub channels: u16,
    /// Length in samples.
    pub samples: u32,
}

/// The value [`Tone`] writes at sample `i` of channel `c`.
pub fn tone_sample(i: u32, c: u16) -> i16 {
    let v = (i % 32_768) as i16;
    if c.is_multiple_of(2) { v } else { -v }
}

/// Writes `clip` to `path`.
pub fn write_clip(path: &Path, clip: &Clip) -> Result<(), String> {
    let &Clip {
        width,
        height,
        frames,
        fps,
        seed,
        rotate,
        audio,
    } = clip;
    let e =
        |what: &'static str| move |err: ffmpeg::Error| format!("{}: {what}: {err}", path.display());
    ffmpeg::init().map_err(e("init"))?;
    ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Quiet);
    let mut out = ffmpeg::format::output(path).map_err(e("create"))?;
    let codec = ffmpeg::encoder::find(ffmpeg::codec::Id::MPEG4).ok_or("no MPEG-4 encoder")?;
    let global_header = out
        .format()
        .flags()
        .contains(ffmpeg::format::Flags::GLOBAL_HEADER);
    let mut stream = out.add_stream(codec).map_err(e("stream"))?;
    let stream_index = stream.index();
    let mut encoder = ffmpeg::codec::context::Context::new_with_codec(codec)
        .encoder()
        .video()
        .map_err(e("encoder"))?;
    let time_base = ffmpeg::Rational(1, fps as i32);
    encoder.set_width(width);
    encoder.set_height(height);
    encoder.set_format(ffmpeg::format::Pixel::YUV420P);
    encoder.set_time_base(time_base);
    encoder.set_frame_rate(Some(ffmpeg::Rational(fps as i32, 1)));
    // A key frame every 12 frames, so that seeking has somewhere to land.
    encoder.set_gop(12);
    encoder.set_max_b_frames(0);
    encoder.set_bit_rate(4_000_000);
    if global_header {
        encoder.set_flags(ffmpeg::codec::Flags::GLOBAL_HEADER);
    }
    let mut encoder = encoder.open_as(codec).map_err(e("open encoder"))?;
    stream.set_parameters(&encoder);
    stream.set_time_base(time_base);
    stream.set_rate(ffmpeg::Rational(fps as i32, 1));
    stream.set_avg_frame_rate(ffmpeg::Rational(fps as i32, 1));
    let mut sound = match audio {
        Some(tone) => Some(add_tone(&mut out, tone).map_err(e("audio"))?),
        None => None,
    };
    // The index first ("faststart"), as clips made for the web are.
    let mut options = ffmpeg::Dictionary::new();
    options.set("movflags", "faststart");
    out.write_header_with(options).map_err(e("header"))?;
    let stream_time_base = out
        .stream(stream_index)
        .map(|s| s.time_base())
        .unwrap_or(time_base);
    let mut frame = ffmpeg::frame::Video::new(ffmpeg::format::Pixel::YUV420P, width, height);
    let mut packet = ffmpeg::Packet::empty();
    let mut drain = |encoder: &mut ffmpeg::encoder::Video,
                     out: &mut ffmpeg::format::context::Output|
     -> Result<(), String> {
        while encoder.receive_packet(&mut packet).is_ok() {
            packet.set_stream(stream_index);
            packet.rescale_ts(time_base, stream_time_base);
            packet.write_interleaved(out).map_err(e("write"))?;
        }
        Ok(())
    };
    let texture = yuv(&crate::render(width, height, seed));
    for i in 0..frames {
        draw(&mut frame, i, &texture);
        frame.set_pts(Some(i64::from(i)));
        encoder.send_frame(&frame).map_err(e("encode"))?;
        drain(&mut encoder, &mut out)?;
    }
    encoder.send_eof().map_err(e("flush"))?;
    drain(&mut encoder, &mut out)?;
    if let (Some(sound), Some(tone)) = (sound.as_mut(), audio) {
        write_tone(&mut out, sound, tone).map_err(e("audio"))?;
    }
    out.write_trailer().map_err(e("trailer"))?;
    if rotate != 0 {
        set_display_rotation(path, rotate)?;
    }
    Ok(())
}

/// The audio encoder of a tone and its stream's index.
struct Sound {
    encoder: ffmpeg::encoder::Audio,
    stream: usize,
}

/// Adds a 16-bit PCM stream for `tone` to `out`.
fn add_tone(out: &mut ffmpeg::format::context::Output, tone: Tone) -> Result<Sound, ffmpeg::Error> {
    let codec = ffmpeg::encoder::find(ffmpeg::codec::Id::PCM_S16LE)
        .ok_or(ffmpeg::Error::EncoderNotFound)?;
    let mut stream = out.add_stream(codec)?;
    let mut encoder = ffmpeg::codec::context::Context::new_with_codec(codec)
        .encoder()
        .audio()?;
    encoder.set_rate(tone.rate as i32);
    encoder.set_channel_layout(ffmpeg::ChannelLayout::default(i32::from(tone.channels)));
    encoder.set_format(ffmpeg::format::Sample::I16(
        ffmpeg::format::sample::Type::Packed,
    ));
    encoder.set_time_base(ffmpeg::Rational(1, tone.rate as i32));
    let encoder = encoder.open_as(codec)?;
    stream.set_parameters(&encoder);
    stream.set_time_base(ffmpeg::Rational(1, tone.rate as i32));
    Ok(Sound {
        encoder,
        stream: stream.index(),
    })
}

/// Encodes and writes every sample of `tone`.
fn write_tone(
    out: &mut ffmpeg::format::context::Output,
    sound: &mut Sound,
    tone: Tone,
) -> Result<(), ffmpeg::Error> {
    let time_base = ffmpeg::Rational(1, tone.rate as i32);
    let stream_time_base = out
        .stream(sound.stream)
        .map(|s| s.time_base())
        .unwrap_or(time_base);
    let layout = ffmpeg::ChannelLayout::default(i32::from(tone.channels));
    let format = ffmpeg::format::Sample::I16(ffmpeg::format::sample::Type::Packed);
    let mut packet = ffmpeg::Packet::empty();
    let mut drain = |encoder: &mut ffmpeg::encoder::Audio,
                     out: &mut ffmpeg::format::context::Output|
     -> Result<(), ffmpeg::Error> {
        while encoder.receive_packet(&mut packet).is_ok() {
            packet.set_stream(sound.stream);
            packet.rescale_ts(time_base, stream_time_base);
            packet.write_interleaved(out)?;
        }
        Ok(())
    };
    let channels = usize::from(tone.channels);
    let mut start = 0u32;
    while start < tone.samples {
        let n = (tone.samples - start).min(1024);
        let mut frame = ffmpeg::frame::Audio::new(format, n as usize, layout);
        frame.set_rate(tone.rate);
        let data = frame.data_mut(0);
        for i in 0..n {
            for c in 0..tone.channels {
                let at = 2 * ((i as usize) * channels + usize::from(c));
                data[at..at + 2].copy_from_slice(&tone_sample(start + i, c).to_ne_bytes());
            }
        }
        frame.set_pts(Some(i64::from(start)));
        sound.encoder.send_frame(&frame)?;
        drain(&mut sound.encoder, out)?;
        start += n;
    }
    sound.encoder.send_eof()?;
    drain(&mut sound.encoder, out)
}

/// Writes the display matrix of the (only) track of the MP4 at `path`: turn `rotate` degrees
/// clockwise. The matrix is patched into the track header's bytes, where phones write it, because
/// FFmpeg's muxer API to set it differs between the FFmpeg versions this builds against.
fn set_display_rotation(path: &Path, rotate: u32) -> Result<(), String> {
    let fail = |what: String| format!("{}: {what}", path.display());
    // ISO/IEC 14496-12's matrix {a, b, u, c, d, v, x, y, w}: a..d and x, y in 16.16 fixed
    // point, u, v, w in 2.30; (x', y') = (a·x + c·y, b·x + d·y).
    let (a, b, c, d): (i32, i32, i32, i32) = match rotate {
        90 => (0, 1, -1, 0),
        180 => (-1, 0, 0, -1),
        270 => (0, -1, 1, 0),
        other => return Err(fail(format!("cannot rotate by {other} degrees"))),
    };
    let one = 1 << 16;
    let matrix = [a * one, b * one, 0, c * one, d * one, 0, 0, 0, 1 << 30];
    let mut bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let at = bytes
        .windows(4)
        .position(|w| w == b"tkhd")
        .ok_or_else(|| fail("no track header".into()))?;
    // After the box type: version and flags (4 bytes), then times, ids and duration (20 bytes
    // in version 0, 32 in version 1), 8 reserved, layer, group, volume, 2 reserved.
    let times = if bytes[at + 4] == 1 { 32 } else { 20 };
    let start = at + 4 + 4 + times + 8 + 8;
    let slot = bytes
        .get_mut(start..start + 36)
        .ok_or_else(|| fail("track header cut short".into()))?;
    for (chunk, value) in slot.chunks_exact_mut(4).zip(matrix) {
        chunk.copy_from_slice(&value.to_be_bytes());
    }
    std::fs::write(path, bytes).map_err(|e| fail(e.to_string()))
}

/// An RGB image as full-resolution Y, U and V planes (BT.601, video range).
fn yuv(img: &image::RgbImage) -> [Vec<u8>; 3] {
    let mut planes = [Vec::new(), Vec::new(), Vec::new()];
    for p in img.pixels() {
        let [r, g, b] = p.0.map(f32::from);
        let y = 16.0 + 0.257 * r + 0.504 * g + 0.098 * b;
        let u = 128.0 - 0.148 * r - 0.291 * g + 0.439 * b;
        let v = 128.0 + 0.439 * r - 0.368 * g - 0.071 * b;
        for (plane, value) in planes.iter_mut().zip([y, u, v]) {
            plane.push(value.round().clamp(0.0, 255.0) as u8);
        }
    }
    planes
}

/// Draws frame `index`: the bar code on top, the texture panned by `index` pixels below.
fn draw(frame: &mut ffmpeg::frame::Video, index: u32, texture: &[Vec<u8>; 3]) {
    let (w, h) = (frame.width() as usize, frame.height() as usize);
    let bars_end = h * 5 / 8;
    let shift = index as usize;
    for (plane, texture) in texture.iter().enumerate() {
        // Chroma planes are half size both ways (4:2:0).
        let (pw, ph, step) = if plane == 0 {
            (w, h, 1)
        } else {
            (w.div_ceil(2), h.div_ceil(2), 2)
        };
        let stride = frame.stride(plane);
        let data = frame.data_mut(plane);
        for y in 0..ph {
            for x in 0..pw {
                let (fx, fy) = (x * step, y * step);
                data[y * stride + x] = if fy < bars_end {
                    if plane > 0 {
                        128
                    } else {
                        let bit = BITS - 1 - (fx * BITS as usize / w) as u32;
                        if (index % 256) >> bit & 1 == 1 {
                            LIGHT
                        } else {
                            DARK
                        }
                    }
                } else {
                    texture[fy * w + (fx + shift) % w]
                };
            }
        }
    }
}

/// Reads the index back from one row of a frame: `row` holds `width` pixels of one channel
/// (any of R, G, B: the bars are grey).
pub fn frame_index(row: &[u8]) -> u32 {
    let w = row.len();
    (0..BITS).fold(0, |acc, bit| {
        let x = (2 * bit as usize + 1) * w / (2 * BITS as usize);
        acc << 1 | u32::from(row[x] > 128)
    })
}
