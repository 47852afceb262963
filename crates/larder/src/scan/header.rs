//! Image facts read from file headers, without decoding pixels.
//!
//! For each image the scan needs its size as the trainer will see it (after EXIF orientation,
//! as AI Toolkit's `exif_transpose` applies it) and whether the file is whole. Both come from a
//! few small reads: `imagesize` parses the size, a short walk over the container's segments or
//! chunks finds the EXIF orientation, and the last bytes tell whether the file was cut short.
//! A 24-megapixel JPEG costs a handful of kilobytes of I/O instead of a full decode.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// The image formats larder reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// JPEG (baseline or progressive).
    Jpeg,
    /// PNG.
    Png,
    /// WebP (lossy, lossless or extended).
    Webp,
}

/// What the header of one image says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub format: ImageFormat,
    /// Width as displayed, i.e. after EXIF orientation.
    pub width: u32,
    /// Height as displayed, i.e. after EXIF orientation.
    pub height: u32,
    /// EXIF orientation tag (1..=8); 1 when absent.
    pub orientation: u8,
}

/// Why an image could not be used, as the scan reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeaderProblem {
    Empty,
    Unsupported(String),
    Corrupt(String),
    Truncated,
    Unreadable(String),
}

/// Reads the header facts of the image at `path`.
pub(crate) fn probe(path: &Path) -> Result<Header, HeaderProblem> {
    let file = File::open(path).map_err(|e| HeaderProblem::Unreadable(e.to_string()))?;
    let len = file
        .metadata()
        .map_err(|e| HeaderProblem::Unreadable(e.to_string()))?
        .len();
    if len == 0 {
        return Err(HeaderProblem::Empty);
    }
    let mut reader = BufReader::with_capacity(8 * 1024, file);
    let kind = imagesize::reader_type(&mut reader).map_err(|e| match e {
        imagesize::ImageError::NotSupported => {
            HeaderProblem::Unsupported("not a JPEG, PNG or WebP file".into())
        }
        other => HeaderProblem::Corrupt(other.to_string()),
    })?;
    let format = match kind {
        imagesize::ImageType::Jpeg => ImageFormat::Jpeg,
        imagesize::ImageType::Png => ImageFormat::Png,
        imagesize::ImageType::Webp => ImageFormat::Webp,
        other => {
            return Err(HeaderProblem::Unsupported(format!(
                "{other:?} images are not supported (use JPEG, PNG or WebP)"
            )));
        }
    };
    rewind(&mut reader)?;
    let size = imagesize::reader_size(&mut reader).map_err(|e| match e {
        imagesize::ImageError::IoError(_) => HeaderProblem::Truncated,
        other => HeaderProblem::Corrupt(other.to_string()),
    })?;
    let (width, height) = match (u32::try_from(size.width), u32::try_from(size.height)) {
        (Ok(w), Ok(h)) if w > 0 && h > 0 => (w, h),
        _ => {
            return Err(HeaderProblem::Corrupt(format!(
                "header gives an impossible size {}x{}",
                size.width, size.height
            )));
        }
    };
    rewind(&mut reader)?;
    // A damaged EXIF block is common in the wild and harmless to training: treat it as absent.
    let orientation = match format {
        ImageFormat::Jpeg => jpeg_exif(&mut reader),
        ImageFormat::Png => png_exif(&mut reader),
        ImageFormat::Webp => webp_exif(&mut reader),
    }
    .ok()
    .flatten()
    .map_or(1, orientation_from_tiff);
    if !is_complete(&mut reader, format, len)? {
        return Err(HeaderProblem::Truncated);
    }
    let (width, height) = if (5..=8).contains(&orientation) {
        (height, width)
    } else {
        (width, height)
    };
    Ok(Header {
        format,
        width,
        height,
        orientation,
    })
}

fn rewind<R: Seek>(reader: &mut R) -> Result<(), HeaderProblem> {
    reader
        .seek(SeekFrom::Start(0))
        .map(|_| ())
        .map_err(|e| HeaderProblem::Unreadable(e.to_string()))
}

/// Returns true if and only if the file ends the way a whole file of its format ends.
///
/// Decoders accept the header of a cut-off file and fail (or fill gray) only when the pixels are
/// read, which in a trainer happens hours later; checking the end marker now costs one read.
fn is_complete<R: Read + Seek>(
    reader: &mut R,
    format: ImageFormat,
    len: u64,
) -> Result<bool, HeaderProblem> {
    let tail_len = len.min(64);
    let mut tail = vec![0u8; tail_len as usize];
    reader
        .seek(SeekFrom::Start(len - tail_len))
        .and_then(|_| reader.read_exact(&mut tail))
        .map_err(|e| HeaderProblem::Unreadable(e.to_string()))?;
    Ok(match format {
        // Some cameras pad after the end-of-image marker, so look for it near the end.
        ImageFormat::Jpeg => tail.windows(2).any(|w| w == [0xFF, 0xD9]),
        ImageFormat::Png => {
            tail.ends_with(&[0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82])
        }
        ImageFormat::Webp => {
            let mut head = [0u8; 8];
            reader
                .seek(SeekFrom::Start(0))
                .and_then(|_| reader.read_exact(&mut head))
                .map_err(|e| HeaderProblem::Unreadable(e.to_string()))?;
            let riff_len = u64::from(u32::from_le_bytes([head[4], head[5], head[6], head[7]]));
            len >= riff_len + 8
        }
    })
}

fn read_u16_be<R: Read>(r: &mut R) -> std::io::Result<u16> {
    let mut b = [0u8; 2];
    r.read_exact(&mut b)?;
    Ok(u16::from_be_bytes(b))
}

/// The upper bound on an EXIF block we are willing to read (JPEG caps APP1 at 64 KiB anyway).
const MAX_EXIF: u64 = 1 << 20;

fn read_block<R: Read>(r: &mut R, len: u64) -> std::io::Result<Option<Vec<u8>>> {
    if len > MAX_EXIF {
        return Ok(None);
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf)?;
    Ok(Some(buf))
}

/// Finds the TIFF payload of a JPEG's `Exif` APP1 segment, walking segment headers only.
fn jpeg_exif<R: BufRead + Seek>(r: &mut R) -> std::io::Result<Option<Vec<u8>>> {
    r.seek(SeekFrom::Start(2))?;
    loop {
        let mut marker = [0u8; 2];
        r.read_exact(&mut marker)?;
        if marker[0] != 0xFF {
            return Ok(None);
        }
        match marker[1] {
            // Fill bytes before a marker.
            0xFF => {
                r.seek(SeekFrom::Current(-1))?;
                continue;
            }
            // Start of scan or end of image: EXIF always comes before these.
            0xDA | 0xD9 => return Ok(None),
            // Markers without a length field.
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let len = u64::from(read_u16_be(r)?);
        if len < 2 {
            return Ok(None);
        }
        if marker[1] == 0xE1 && len >= 8 {
            let mut sig = [0u8; 6];
            r.read_exact(&mut sig)?;
            if &sig == b"Exif\0\0" {
                return read_block(r, len - 8);
            }
            r.seek(SeekFrom::Current(len as i64 - 8))?;
        } else {
            r.seek(SeekFrom::Current(len as i64 - 2))?;
        }
    }
}

/// Finds a PNG `eXIf` chunk before the image data.
fn png_exif<R: Read + Seek>(r: &mut R) -> std::io::Result<Option<Vec<u8>>> {
    r.seek(SeekFrom::Start(8))?;
    loop {
        let mut head = [0u8; 8];
        r.read_exact(&mut head)?;
        let len = u64::from(u32::from_be_bytes([head[0], head[1], head[2], head[3]]));
        match &head[4..8] {
            b"eXIf" => return read_block(r, len),
            b"IDAT" | b"IEND" => return Ok(None),
            _ => {
                r.seek(SeekFrom::Current(len as i64 + 4))?;
            }
        }
    }
}

/// Finds a WebP `EXIF` chunk; only extended (VP8X) files can carry one.
fn webp_exif<R: Read + Seek>(r: &mut R) -> std::io::Result<Option<Vec<u8>>> {
    r.seek(SeekFrom::Start(12))?;
    loop {
        let mut head = [0u8; 8];
        r.read_exact(&mut head)?;
        let len = u64::from(u32::from_le_bytes([head[4], head[5], head[6], head[7]]));
        if &head[0..4] == b"EXIF" {
            let block = read_block(r, len)?;
            // Some writers keep the JPEG-style "Exif\0\0" prefix inside the chunk.
            return Ok(block.map(|b| match b.strip_prefix(b"Exif\0\0") {
                Some(rest) => rest.to_vec(),
                None => b,
            }));
        }
        // Chunks are padded to an even length.
        r.seek(SeekFrom::Current((len + (len & 1)) as i64))?;
    }
}

/// The orientation tag of a TIFF-structured EXIF block; 1 (upright) when absent or invalid.
fn orientation_from_tiff(tiff: Vec<u8>) -> u8 {
    let Ok(exif) = exif::Reader::new().read_raw(tiff) else {
        return 1;
    };
    exif.get_field(exif::Tag::Orientation, exif::In::PRIMARY)
        .and_then(|f| f.value.get_uint(0))
        .and_then(|v| u8::try_from(v).ok())
        .filter(|v| (1..=8).contains(v))
        .unwrap_or(1)
}
