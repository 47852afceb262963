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
    NotFound,
    Empty,
    Unsupported(String),
    Corrupt(String),
    Truncated,
    Unreadable(String),
}

/// How much of each file is read up front: one page holds the size and, for most files, the
/// EXIF block; larger headers are followed into the file.
const HEAD_BYTES: usize = 4096;

/// Reads the header facts of the image at `path`, and its length in bytes.
///
/// This is the scan's hot path, so it keeps system calls few: one open, one fstat, one read of
/// the head (which holds the size, the EXIF block and, for small files, the end), one read of
/// the last bytes when the file is larger, one close.
pub(crate) fn probe(path: &Path) -> Result<(u64, Header), HeaderProblem> {
    let unreadable = |e: std::io::Error| HeaderProblem::Unreadable(e.to_string());
    let mut file = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => HeaderProblem::NotFound,
        _ => unreadable(e),
    })?;
    let len = file.metadata().map_err(unreadable)?.len();
    if len == 0 {
        return Err(HeaderProblem::Empty);
    }
    let mut head = [0u8; HEAD_BYTES];
    let head_len = HEAD_BYTES.min(len as usize);
    file.read_exact(&mut head[..head_len]).map_err(unreadable)?;
    let head = &head[..head_len];
    let format = match imagesize::image_type(head) {
        Ok(imagesize::ImageType::Jpeg) => ImageFormat::Jpeg,
        Ok(imagesize::ImageType::Png) => ImageFormat::Png,
        Ok(imagesize::ImageType::Webp) => ImageFormat::Webp,
        Ok(other) => {
            return Err(HeaderProblem::Unsupported(format!(
                "{other:?} images are not supported (use JPEG, PNG or WebP)"
            )));
        }
        Err(imagesize::ImageError::NotSupported) => {
            return Err(HeaderProblem::Unsupported(
                "not a JPEG, PNG or WebP file".into(),
            ));
        }
        Err(e) => return Err(HeaderProblem::Corrupt(e.to_string())),
    };
    let whole_head = head_len as u64 == len;
    // The size is in the head for all but JPEGs with large metadata before their frame header.
    let size = match imagesize::blob_size(head) {
        Err(imagesize::ImageError::IoError(_)) if !whole_head => {
            file.seek(SeekFrom::Start(0)).map_err(unreadable)?;
            imagesize::reader_size(BufReader::new(&mut file))
        }
        other => other,
    }
    .map_err(|e| match e {
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
    let orientation = match find_exif(format, &mut std::io::Cursor::new(head)) {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !whole_head => {
            find_exif(format, &mut BufReader::new(&mut file))
        }
        other => other,
    }
    // A damaged EXIF block is common in the wild and harmless to training: treat it as absent.
    .ok()
    .flatten()
    .map_or(1, orientation_from_tiff);
    let complete = if whole_head {
        is_complete(format, head, head, len)
    } else {
        // The file is longer than the head, so it has 64 bytes of tail; a positioned read
        // fetches them without moving the file offset (one system call, not two).
        let mut tail = [0u8; 64];
        read_exact_at(&file, &mut tail, len - 64).map_err(unreadable)?;
        is_complete(format, head, &tail, len)
    };
    if !complete {
        return Err(HeaderProblem::Truncated);
    }
    let (width, height) = if (5..=8).contains(&orientation) {
        (height, width)
    } else {
        (width, height)
    };
    Ok((
        len,
        Header {
            format,
            width,
            height,
            orientation,
        },
    ))
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(not(unix))]
fn read_exact_at(mut file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buf)
}

fn find_exif<R: BufRead + Seek>(
    format: ImageFormat,
    r: &mut R,
) -> std::io::Result<Option<Vec<u8>>> {
    match format {
        ImageFormat::Jpeg => jpeg_exif(r),
        ImageFormat::Png => png_exif(r),
        ImageFormat::Webp => webp_exif(r),
    }
}

/// Returns true if and only if the file ends the way a whole file of its format ends, judged
/// from its first bytes `head` and its last bytes `tail`.
///
/// Decoders accept the header of a cut-off file and fail (or fill gray) only when the pixels are
/// read, which in a trainer happens hours later; checking the end now costs one read.
fn is_complete(format: ImageFormat, head: &[u8], tail: &[u8], len: u64) -> bool {
    let tail = &tail[tail.len().saturating_sub(64)..];
    match format {
        // Some cameras pad after the end-of-image marker, so look for it near the end.
        ImageFormat::Jpeg => tail.windows(2).any(|w| w == [0xFF, 0xD9]),
        ImageFormat::Png => {
            tail.ends_with(&[0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82])
        }
        ImageFormat::Webp => {
            head.len() >= 8 && {
                let riff_len = u64::from(u32::from_le_bytes([head[4], head[5], head[6], head[7]]));
                len >= riff_len + 8
            }
        }
    }
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

/// Finds a WebP `EXIF` chunk; only extended (VP8X) files whose header flags EXIF carry one.
fn webp_exif<R: Read + Seek>(r: &mut R) -> std::io::Result<Option<Vec<u8>>> {
    let mut vp8x = [0u8; 9];
    r.seek(SeekFrom::Start(12))?;
    r.read_exact(&mut vp8x)?;
    const EXIF_FLAG: u8 = 0x08;
    if &vp8x[0..4] != b"VP8X" || vp8x[8] & EXIF_FLAG == 0 {
        return Ok(None);
    }
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
