//! Synthetic video clips whose frames say which frame they are.
//!
//! Each frame shows its index as a bar code: eight vertical bars, most significant bit on the
//! left, light for a one and dark for a zero. The bars are wide and flat, so the index survives
//! lossy coding, resizing and cropping to the middle; [`frame_index`] reads it back from a
//! decoded frame. Clips are MPEG-4 Part 2 in MP4 (FFmpeg's own encoder, in every build).

use std::path::Path;

use ffmpeg_next as ffmpeg;

/// The luma of a one bar and of a zero bar (video range).
const LIGHT: u8 = 235;
const DARK: u8 = 16;

/// The bars: one per bit of the index.
pub const BITS: u32 = 8;

/// Writes a `frames`-frame clip of `width`×`height` (both even) at `fps` frames per second to
/// `path` (an `.mp4`). Frame `i` shows `i % 256`.
pub fn write_video(
    path: &Path,
    width: u32,
    height: u32,
    frames: u32,
    fps: u32,
) -> Result<(), String> {
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
    out.write_header().map_err(e("header"))?;
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
    for i in 0..frames {
        draw(&mut frame, i % 256);
        frame.set_pts(Some(i64::from(i)));
        encoder.send_frame(&frame).map_err(e("encode"))?;
        drain(&mut encoder, &mut out)?;
    }
    encoder.send_eof().map_err(e("flush"))?;
    drain(&mut encoder, &mut out)?;
    out.write_trailer().map_err(e("trailer"))?;
    Ok(())
}

fn draw(frame: &mut ffmpeg::frame::Video, index: u32) {
    let (w, h) = (frame.width() as usize, frame.height() as usize);
    let stride = frame.stride(0);
    let luma = frame.data_mut(0);
    for y in 0..h {
        for x in 0..w {
            let bit = BITS - 1 - (x * BITS as usize / w) as u32;
            luma[y * stride + x] = if index >> bit & 1 == 1 { LIGHT } else { DARK };
        }
    }
    for plane in 1..3 {
        let stride = frame.stride(plane);
        let rows = h.div_ceil(2);
        frame.data_mut(plane)[..stride * rows].fill(128);
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
