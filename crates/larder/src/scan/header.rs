//! Image facts read from file headers, without decoding pixels.
//!
//! For each image the scan needs its size as the trainer will see it (after EXIF orientation,
//! as AI Toolkit's `exif_transpose` applies it) and whether the file is whole. Both come from a
//! few small reads: `imagesize` parses the size, `kamadak-exif` finds and parses the EXIF block
//! in the container, and the last bytes tell whether the file was cut short. A 24-megapixel
//! JPEG costs a handful of kilobytes of I/O instead of a full decode.
//!
//! Both parsers read through a [`Window`]: the first page of the file, already in memory, then
//! positioned reads up to a limit chosen per format. The limit matters for the EXIF search:
//! `kamadak-exif` walks a container by reading it, not by seeking, and for a JPEG without EXIF
//! it would read on through the compressed data to the end of the file.

use std::fs::File;
use std::io::{BufRead, Read, Seek, SeekFrom};
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
    /// A video clip (a container FFmpeg reads: MP4, MOV, WebM, MKV, AVI, ...).
    Video,
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

/// How far into a PNG whose first page holds no image data the EXIF search reads. Its `eXIf`
/// chunk must come before the image data, after ancillary chunks (ICC profile, text) that
/// rarely reach this size.
const PNG_EXIF_SEARCH: u64 = 256 << 10;

/// How far into a WebP that flags EXIF the search reads. The container puts the `EXIF` chunk
/// after the pixel data, so the walk reads through the image to reach it; only WebPs whose
/// header flags EXIF pay this, and larger ones are read as upright.
const WEBP_EXIF_SEARCH: u64 = 16 << 20;

/// Bytes fetched per positioned read beyond the first page.
const CHUNK: usize = 16 << 10;

/// Reads the header facts of the image at `path`, and its length in bytes.
///
/// This is the scan's hot path, so it keeps system calls few: one open, one fstat, one read of
/// the head (which holds the size, the EXIF block and, for small files, the end), one read of
/// the last bytes when the file is larger, one close.
pub(crate) fn probe(path: &Path) -> Result<(u64, Header), HeaderProblem> {
    let unreadable = |e: std::io::Error| HeaderProblem::Unreadable(e.to_string());
    let file = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => HeaderProblem::NotFound,
        _ => unreadable(e),
    })?;
    let len = file.metadata().map_err(unreadable)?.len();
    probe_source(&file, len).map(|h| (len, h))
}

/// Something the probe reads from at given offsets: an open file, or bytes in memory (the
/// fuzz target's input).
pub(crate) trait ReadAt {
    /// Fills `buf` from `offset`; an error when fewer bytes are there.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

impl ReadAt for File {
    #[cfg(unix)]
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        // A positioned read does not move the file offset: one system call, not two.
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }

    #[cfg(not(unix))]
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let mut file = self;
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(buf)
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let bytes = usize::try_from(offset)
            .ok()
            .and_then(|start| self.get(start..)?.get(..buf.len()))
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

/// Reads the header facts of the `len` bytes of `src`.
pub(crate) fn probe_source<S: ReadAt + ?Sized>(src: &S, len: u64) -> Result<Header, HeaderProblem> {
    let unreadable = |e: std::io::Error| HeaderProblem::Unreadable(e.to_string());
    if len == 0 {
        return Err(HeaderProblem::Empty);
    }
    let mut head = [0u8; HEAD_BYTES];
    let head_len = HEAD_BYTES.min(usize::try_from(len).unwrap_or(usize::MAX));
    src.read_exact_at(&mut head[..head_len], 0)
        .map_err(unreadable)?;
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
    // The size is in the head for all but JPEGs with large metadata before their frame header;
    // the window follows those into the file.
    let mut sized = Window::new(src, head, len);
    let size = imagesize::reader_size(&mut sized).map_err(|e| match e {
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
    let exif_end = match format {
        // Clips are read by the video probe, never by this one.
        ImageFormat::Video => None,
        // A JPEG's EXIF segment comes first after the start of image, before the frame header
        // that `imagesize` has just read: the search ends there, short of the pixel data.
        ImageFormat::Jpeg => Some(sized.pos),
        // The `eXIf` chunk precedes the image data; when the first page shows where that
        // starts, the search ends there.
        ImageFormat::Png => Some(
            find(head, b"IDAT")
                .map_or(PNG_EXIF_SEARCH, |at| at as u64)
                .min(len),
        ),
        // Only an extended (VP8X) WebP whose header sets the EXIF flag carries EXIF.
        ImageFormat::Webp => {
            const EXIF_FLAG: u8 = 0x08;
            let flagged = head.get(12..16) == Some(b"VP8X".as_slice())
                && head.get(20).is_some_and(|f| f & EXIF_FLAG != 0);
            flagged.then_some(WEBP_EXIF_SEARCH.min(len))
        }
    };
    let orientation = exif_end.map_or(1, |end| orientation(&mut Window::new(src, head, end)));
    let complete = if head_len as u64 == len {
        is_complete(format, head, head, len)
    } else {
        // The file is longer than the head, so it has 64 bytes of tail.
        let mut tail = [0u8; 64];
        src.read_exact_at(&mut tail, len - 64).map_err(unreadable)?;
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
    Ok(Header {
        format,
        width,
        height,
        orientation,
    })
}

/// The offset of the first occurrence of `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The EXIF orientation (1..=8) found in the container `window` holds; 1 (upright) when there
/// is no EXIF block in the window, or it is damaged, or the tag is absent or out of range.
/// A damaged EXIF block is common in the wild and harmless to training: it counts as absent.
fn orientation<R: BufRead + Seek>(window: &mut R) -> u8 {
    let Ok(exif) = exif::Reader::new().read_from_container(window) else {
        return 1;
    };
    exif.get_field(exif::Tag::Orientation, exif::In::PRIMARY)
        .and_then(|f| f.value.get_uint(0))
        .and_then(|v| u8::try_from(v).ok())
        .filter(|v| (1..=8).contains(v))
        .unwrap_or(1)
}

/// The first `end` bytes of an image as a buffered, seekable stream: the head already in
/// memory, then positioned reads of the source. Reading past `end` finds the end of the
/// stream, which is how the parsers' reads are bounded.
struct Window<'a, S: ?Sized> {
    src: &'a S,
    head: &'a [u8],
    end: u64,
    /// The position of the next byte handed out.
    pos: u64,
    /// Bytes read from `src` beyond the head, starting at offset `buf_at`.
    buf: Vec<u8>,
    buf_at: u64,
}

impl<'a, S: ReadAt + ?Sized> Window<'a, S> {
    /// `end` must not exceed the length of `src`.
    fn new(src: &'a S, head: &'a [u8], end: u64) -> Self {
        Window {
            src,
            head,
            end,
            pos: 0,
            buf: Vec::new(),
            buf_at: 0,
        }
    }
}

impl<S: ReadAt + ?Sized> BufRead for Window<'_, S> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        if self.pos >= self.end {
            return Ok(&[]);
        }
        let head_len = self.head.len() as u64;
        if self.pos < head_len {
            // Both are at most the head's length, so they fit in usize.
            let stop = head_len.min(self.end) as usize;
            return Ok(&self.head[self.pos as usize..stop]);
        }
        let buffered = self.pos >= self.buf_at && self.pos - self.buf_at < self.buf.len() as u64;
        if !buffered {
            let n = (self.end - self.pos).min(CHUNK as u64) as usize;
            self.buf.resize(n, 0);
            self.src.read_exact_at(&mut self.buf, self.pos)?;
            self.buf_at = self.pos;
        }
        // Less than `buf.len()`, checked above or set just now.
        let at = (self.pos - self.buf_at) as usize;
        Ok(&self.buf[at..])
    }

    fn consume(&mut self, n: usize) {
        self.pos += n as u64;
    }
}

impl<S: ReadAt + ?Sized> Read for Window<'_, S> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<S: ReadAt + ?Sized> Seek for Window<'_, S> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.end.checked_add_signed(d),
        }
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek before the start of the file",
            )
        })?;
        self.pos = pos;
        Ok(pos)
    }

    fn stream_position(&mut self) -> std::io::Result<u64> {
        Ok(self.pos)
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
        // The video probe checks a clip's packets instead.
        ImageFormat::Video => true,
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

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// Bytes in memory that count how many of them the probe reads.
    struct Counted {
        bytes: Vec<u8>,
        read: Cell<u64>,
    }

    impl Counted {
        fn probe(bytes: Vec<u8>) -> (Result<Header, HeaderProblem>, u64) {
            let src = Counted {
                bytes,
                read: Cell::new(0),
            };
            let got = probe_source(&src, src.bytes.len() as u64);
            (got, src.read.get())
        }
    }

    impl ReadAt for Counted {
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            self.read.set(self.read.get() + buf.len() as u64);
            self.bytes.as_slice().read_exact_at(buf, offset)
        }
    }

    /// A JPEG many pages long.
    fn big_jpeg() -> Vec<u8> {
        let jpeg = larder_synth::encode(
            &larder_synth::render(1024, 1024, 7),
            larder_synth::Format::Jpeg,
        )
        .expect("encode");
        assert!(jpeg.len() > 16 << 10, "{} bytes", jpeg.len());
        jpeg
    }

    #[test]
    fn a_jpeg_without_exif_costs_its_first_page_and_last_bytes() {
        // kamadak-exif alone would read on through the compressed data to the end of image.
        let (got, read) = Counted::probe(big_jpeg());
        let head = got.expect("a whole JPEG");
        assert_eq!((head.width, head.height, head.orientation), (1024, 1024, 1));
        assert_eq!(read, HEAD_BYTES as u64 + 64);
    }

    #[test]
    fn a_jpeg_with_exif_in_its_first_page_costs_no_more() {
        let (got, read) = Counted::probe(larder_synth::with_jpeg_orientation(&big_jpeg(), 6));
        assert_eq!(got.expect("a whole JPEG").orientation, 6);
        assert_eq!(read, HEAD_BYTES as u64 + 64);
    }

    #[test]
    fn exif_behind_large_segments_is_read_up_to_the_frame_header_only() {
        let rotated = larder_synth::with_jpeg_orientation(&big_jpeg(), 8);
        // 40 KiB of other APP segments (an ICC profile, say) before the EXIF block.
        let mut bytes = rotated[..2].to_vec();
        for _ in 0..4 {
            bytes.extend_from_slice(&[0xFF, 0xE2]);
            bytes.extend_from_slice(&10_002u16.to_be_bytes());
            bytes.extend_from_slice(&[0u8; 10_000]);
        }
        bytes.extend_from_slice(&rotated[2..]);
        let len = bytes.len() as u64;
        let (got, read) = Counted::probe(bytes);
        assert_eq!(got.expect("a whole JPEG").orientation, 8);
        // The size walk and the EXIF walk each cover the 40 KiB; neither reads the pixels.
        assert!(read < 3 * (48 << 10), "{read} of {len} bytes read");
    }

    #[test]
    fn a_png_or_plain_webp_costs_its_first_page_and_last_bytes() {
        let img = larder_synth::render(512, 512, 3);
        for (format, written) in [
            (ImageFormat::Png, larder_synth::Format::Png),
            (ImageFormat::Webp, larder_synth::Format::Webp),
        ] {
            let bytes = larder_synth::encode(&img, written).expect("encode");
            assert!(bytes.len() > HEAD_BYTES + 64, "{format:?}");
            let (got, read) = Counted::probe(bytes);
            assert_eq!(got.expect("a whole image").format, format);
            assert_eq!(read, HEAD_BYTES as u64 + 64, "{format:?}");
        }
    }

    #[test]
    fn the_fuzz_seeds_are_accepted_with_their_orientation() {
        // The seeds of `fuzz/fuzz_targets/image_header.rs`: minimal files of each container,
        // which must reach the accepting path for the fuzzer to start from it.
        let header = |format, width, height, orientation| Header {
            format,
            width,
            height,
            orientation,
        };
        let seeds: [(&[u8], Header); 4] = [
            (
                include_bytes!("../../../../fuzz/corpus/image_header/exif6.jpg"),
                header(ImageFormat::Jpeg, 16, 32, 6),
            ),
            (
                include_bytes!("../../../../fuzz/corpus/image_header/plain.jpg"),
                header(ImageFormat::Jpeg, 32, 16, 1),
            ),
            (
                include_bytes!("../../../../fuzz/corpus/image_header/exif6.png"),
                header(ImageFormat::Png, 8, 16, 8),
            ),
            (
                include_bytes!("../../../../fuzz/corpus/image_header/exif5.webp"),
                header(ImageFormat::Webp, 8, 16, 5),
            ),
        ];
        for (bytes, expected) in seeds {
            assert_eq!(probe_source(bytes, bytes.len() as u64), Ok(expected));
        }
    }

    #[test]
    fn the_window_ends_where_it_is_told_and_seeks_within_it() {
        let bytes: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let mut w = Window::new(bytes.as_slice(), &bytes[..HEAD_BYTES], 50_000);
        let mut all = Vec::new();
        w.read_to_end(&mut all).expect("read");
        assert_eq!(all, bytes[..50_000]);
        assert_eq!(w.seek(SeekFrom::Start(49_990)).expect("seek"), 49_990);
        let mut rest = Vec::new();
        w.read_to_end(&mut rest).expect("read");
        assert_eq!(rest, bytes[49_990..50_000]);
        assert!(w.seek(SeekFrom::Current(-60_000)).is_err());
        // A window shorter than the head ends inside it.
        let mut short = Window::new(bytes.as_slice(), &bytes[..HEAD_BYTES], 10);
        let mut ten = Vec::new();
        short.read_to_end(&mut ten).expect("read");
        assert_eq!(ten, bytes[..10]);
    }

    #[test]
    fn a_file_that_shrinks_under_the_window_is_an_error_not_a_panic() {
        let bytes = vec![0u8; 8192];
        // `end` beyond the source: reading there fails cleanly.
        let mut w = Window::new(bytes.as_slice(), &bytes[..HEAD_BYTES], 20_000);
        let mut all = Vec::new();
        assert!(w.read_to_end(&mut all).is_err());
    }
}
