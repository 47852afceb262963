//! Tensor codecs: how one tensor's values are laid out as bytes in a shard.
//!
//! A [`Codec`] is an element representation ([`Repr`]) plus an optional byte-compression layer
//! ([`Compression`]). [`encode`] turns values into stored bytes plus the metadata needed to read
//! them back (shape, per-tensor or per-channel scale and offset); [`decompress`] undoes the
//! compression layer and [`decode_f32`] turns element bytes back into `f32` values. Every
//! multi-byte value is little-endian whatever the host, so shards move between machines.
//!
//! Each representation has a documented worst-case error, returned by [`error_bound`] and checked
//! by the property tests at the end of this file.

use std::borrow::Cow;
use std::fmt;

use float8::{F8E4M3, F8E5M2};
use half::{bf16, f16};

use crate::{Error, Result};

/// The zstd level used when the codec text says `+zstd` without one.
const DEFAULT_ZSTD_LEVEL: i32 = 3;
/// The zstd levels a codec may name; zstd's own negative "fast" levels are left out.
const ZSTD_LEVELS: std::ops::RangeInclusive<i32> = 1..=22;
/// LZ4's block format cannot expand input more than 255-fold, so a stored block claiming more
/// is corrupt; checking this first keeps a bad `raw_len` from allocating a huge buffer.
const LZ4_MAX_RATIO: usize = 256;
/// What [`Codec::parse`] accepts, quoted in its errors.
const ACCEPTED: &str = "expected <repr>[+zstd|+zstd:<level 1..=22>|+lz4] where <repr> is one of \
                        f32, f16, bf16, u8, fp8_e4m3 (alias fp8), fp8_e5m2, int8";

/// Element representation of stored values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Repr {
    /// 32-bit IEEE floats, stored bit for bit (NaN payloads included): lossless.
    F32,
    /// IEEE half floats, rounded to nearest even. The relative error is at most 2^-11 for
    /// magnitudes in f16's normal range [2^-14, 65504]; below it the absolute error is at most
    /// 2^-25 (half the subnormal spacing), and magnitudes of 65520 or more become infinite.
    F16,
    /// bfloat16 (f32's exponent, 8-bit significand), rounded to nearest even. The relative error is
    /// at most 2^-8 for normal f32 magnitudes up to bf16's largest finite value (about 3.39e38).
    BF16,
    /// Raw bytes such as pixels, stored as they are: lossless. Accepts only [`Values::U8`].
    U8,
    /// 8-bit float e4m3 (largest finite 448) with one per-tensor scale; see
    /// [`ErrorBound::ScaledRelative`].
    Fp8E4M3,
    /// 8-bit float e5m2 (largest finite 57344) with one per-tensor scale; see
    /// [`ErrorBound::ScaledRelative`].
    Fp8E5M2,
    /// Signed 8-bit integers with an affine scale and offset per channel; see
    /// [`ErrorBound::PerChannelStep`].
    Int8,
}

impl Repr {
    /// Every representation.
    pub const ALL: [Repr; 7] = [
        Repr::F32,
        Repr::F16,
        Repr::BF16,
        Repr::U8,
        Repr::Fp8E4M3,
        Repr::Fp8E5M2,
        Repr::Int8,
    ];

    /// The canonical name used in codec text, e.g. `"fp8_e4m3"`.
    pub fn name(self) -> &'static str {
        self.info().0
    }

    /// The safetensors dtype string of one element, e.g. `"F8_E4M3"`.
    pub fn dtype(self) -> &'static str {
        self.info().1
    }

    /// Bytes per stored element.
    pub fn element_size(self) -> usize {
        self.info().2
    }

    /// (codec name, safetensors dtype, element size) in one table, so they cannot drift apart.
    fn info(self) -> (&'static str, &'static str, usize) {
        match self {
            Repr::F32 => ("f32", "F32", 4),
            Repr::F16 => ("f16", "F16", 2),
            Repr::BF16 => ("bf16", "BF16", 2),
            Repr::U8 => ("u8", "U8", 1),
            Repr::Fp8E4M3 => ("fp8_e4m3", "F8_E4M3", 1),
            Repr::Fp8E5M2 => ("fp8_e5m2", "F8_E5M2", 1),
            Repr::Int8 => ("int8", "I8", 1),
        }
    }
}

/// Byte-compression layer over the representation. Every layer is lossless.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// The stored bytes are the element bytes, so a reader can view them in place.
    None,
    /// One zstd frame that records its content size and carries a checksum, so corruption is
    /// reported rather than decoded into wrong values.
    Zstd {
        /// The compression level, 1..=22 (3 when the codec text names none).
        level: i32,
    },
    /// One LZ4 block without a size prefix: the size is kept as [`Encoded::raw_len`]. LZ4 has no
    /// checksum; it is the choice when decoding speed matters more than ratio.
    Lz4,
}

/// A codec: representation + compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Codec {
    /// How each element is represented.
    pub repr: Repr,
    /// How the element bytes are compressed.
    pub compression: Compression,
}

impl Codec {
    /// The dtype of the stored bytes when they are the element bytes as they are (no
    /// compression, no quantization); `None` when a reader must decode them.
    pub fn plain_dtype(&self) -> Option<&'static str> {
        let quantized = matches!(self.repr, Repr::Fp8E4M3 | Repr::Fp8E5M2 | Repr::Int8);
        (self.compression == Compression::None && !quantized).then(|| self.element_dtype())
    }

    /// Raw bytes (pixels), uncompressed.
    pub const RAW_U8: Codec = Codec {
        repr: Repr::U8,
        compression: Compression::None,
    };
    /// 32-bit floats, uncompressed: lossless (audio waveforms).
    pub const RAW_F32: Codec = Codec {
        repr: Repr::F32,
        compression: Compression::None,
    };
    /// bfloat16, uncompressed: the usual choice for latents and embeddings.
    pub const BF16: Codec = Codec {
        repr: Repr::BF16,
        compression: Compression::None,
    };

    /// Parses `f32`, `f16`, `bf16`, `u8`, `fp8_e4m3` (alias `fp8`), `fp8_e5m2` or `int8`, each
    /// optionally followed by `+zstd`, `+zstd:<level>` (1..=22, default 3) or `+lz4`. Surrounding
    /// whitespace and ASCII case are ignored. Errors name the text and list what is accepted.
    pub fn parse(text: &str) -> Result<Codec> {
        let lower = text.trim().to_ascii_lowercase();
        let bad = |why: &str| Error::InvalidArgument {
            name: "codec",
            message: format!("`{text}`: {why}; {ACCEPTED}"),
        };
        let (repr_text, compression_text) = match lower.split_once('+') {
            Some((repr, compression)) => (repr, Some(compression)),
            None => (lower.as_str(), None),
        };
        let repr = match repr_text {
            "fp8" => Repr::Fp8E4M3,
            name => Repr::ALL
                .into_iter()
                .find(|repr| repr.name() == name)
                .ok_or_else(|| bad(&format!("unknown representation `{name}`")))?,
        };
        let compression = match compression_text {
            None => Compression::None,
            Some("lz4") => Compression::Lz4,
            Some("zstd") => Compression::Zstd {
                level: DEFAULT_ZSTD_LEVEL,
            },
            Some(other) => match other.strip_prefix("zstd:").map(str::parse::<i32>) {
                Some(Ok(level)) if ZSTD_LEVELS.contains(&level) => Compression::Zstd { level },
                Some(_) => return Err(bad("the zstd level must be an integer in 1..=22")),
                None => return Err(bad(&format!("unknown compression `{other}`"))),
            },
        };
        Ok(Codec { repr, compression })
    }

    /// The canonical text, which [`Codec::parse`] reads back (e.g. "int8+zstd:3", "bf16").
    pub fn name(&self) -> String {
        let repr = self.repr.name();
        match self.compression {
            Compression::None => repr.to_owned(),
            Compression::Zstd { level } => format!("{repr}+zstd:{level}"),
            Compression::Lz4 => format!("{repr}+lz4"),
        }
    }

    /// The safetensors dtype string of the stored elements before compression: "F32", "F16",
    /// "BF16", "U8", "F8_E4M3", "F8_E5M2" or "I8". A compressed tensor is stored as "U8" bytes,
    /// but this still returns the element dtype, which the reader needs after decompressing.
    pub fn element_dtype(&self) -> &'static str {
        self.repr.dtype()
    }

    /// Returns true iff the stored bytes are exactly the element bytes (no compression), so a
    /// reader can view them in place without copying.
    pub fn is_raw(&self) -> bool {
        self.compression == Compression::None
    }

    /// Returns true iff decoding reproduces the encoded input bit for bit: f32 values for
    /// [`Repr::F32`], bytes for [`Repr::U8`]. Compression never loses anything.
    pub fn is_lossless(&self) -> bool {
        error_bound(*self) == ErrorBound::Exact
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// Values handed to [`encode`].
#[derive(Debug, Clone, Copy)]
pub enum Values<'a> {
    /// Floats, for every representation except [`Repr::U8`].
    F32(&'a [f32]),
    /// Bytes, for [`Repr::U8`] only.
    U8(&'a [u8]),
}

/// The result of encoding one tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    /// The codec that produced it.
    pub codec: Codec,
    /// The tensor's shape.
    pub shape: Vec<usize>,
    /// Stored bytes (compressed when the codec compresses).
    pub bytes: Vec<u8>,
    /// Byte length of the element bytes before compression (= elements × element size).
    pub raw_len: usize,
    /// fp8: one per-tensor scale; int8: one scale per channel (channel = first dimension); else
    /// empty.
    pub scale: Vec<f32>,
    /// int8: one offset per channel; else empty.
    pub offset: Vec<f32>,
}

/// The documented worst-case error of a codec, for `x` an input value and `x'` its decoded value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ErrorBound {
    /// `x' == x` bit for bit.
    Exact,
    /// `|x' - x| <= r * |x|` for magnitudes in the format's normal range (see [`Repr::F16`] and
    /// [`Repr::BF16`] for what happens outside it): r = 2^-11 for f16, 2^-8 for bf16.
    Relative(f32),
    /// fp8 with per-tensor scale `s` (stored in [`Encoded::scale`]):
    /// `|x' - x| <= r * max(|x|, m * s)`, plus f32 rounding of about 2^-23 * |x|. Here r = 2^-4
    /// for e4m3 and 2^-3 for e5m2 (half a unit in the last place of the format), and m is the
    /// format's smallest normal, 2^-6 for e4m3 and 2^-14 for e5m2. So values whose scaled
    /// magnitude `|x| / s` is normal are within r relative, and smaller ones are within the
    /// absolute floor `r * m * s`, which is half the fp8 subnormal spacing times s.
    ScaledRelative(f32),
    /// int8 with per-channel scale `scale_c`: `|x' - x| <= scale_c / 2` for every value of
    /// channel c, plus f32 rounding of a few units of 2^-24 * max|x| over the channel.
    PerChannelStep,
}

/// The documented worst-case error of the codec for an input tensor, used by tests and printed by
/// benchmarks. Compression is lossless, so only the representation matters.
pub fn error_bound(codec: Codec) -> ErrorBound {
    match codec.repr {
        Repr::F32 | Repr::U8 => ErrorBound::Exact,
        Repr::F16 => ErrorBound::Relative(1.0 / 2048.0),
        Repr::BF16 => ErrorBound::Relative(1.0 / 256.0),
        Repr::Fp8E4M3 => ErrorBound::ScaledRelative(1.0 / 16.0),
        Repr::Fp8E5M2 => ErrorBound::ScaledRelative(1.0 / 8.0),
        Repr::Int8 => ErrorBound::PerChannelStep,
    }
}

/// Encodes `values` of `shape`; the product of `shape` must equal the number of values.
///
/// [`Values::U8`] is accepted only by [`Repr::U8`] (with any compression), [`Values::F32`] by every
/// other representation. Non-finite floats (NaN, ±inf) are rejected for fp8 and int8, because
/// they would poison the scale of every other value; f32, f16 and bf16 keep them.
///
/// - fp8: the scale is `s = max|x| / FMAX` (FMAX = 448 for e4m3, 57344 for e5m2), so the largest
///   value uses the whole fp8 range; each `x / s` is rounded to nearest even and saturated to
///   ±FMAX. When `max|x| / FMAX` is zero or below the smallest normal f32 (max|x| under about
///   5e-36 for e4m3, 7e-34 for e5m2), `s = 1`: such values are noise, and a subnormal scale
///   would lose precision.
/// - int8: channels are the first dimension when the tensor has two or more dimensions, else the
///   whole tensor is one channel. Per channel, `offset = (max + min) / 2`,
///   `scale = (max - min) / 254` (1 when that is zero or below the smallest normal f32), and
///   `q = round((x - offset) / scale)` clamped to [-127, 127]; -128 is left unused so the code
///   range is symmetric around the offset.
pub fn encode(codec: Codec, values: Values<'_>, shape: &[usize]) -> Result<Encoded> {
    if let Compression::Zstd { level } = codec.compression
        && !ZSTD_LEVELS.contains(&level)
    {
        return invalid("codec", format!("zstd level {level} is outside 1..=22"));
    }
    let given = match values {
        Values::F32(v) => v.len(),
        Values::U8(v) => v.len(),
    };
    if element_count(shape) != Some(given) {
        let message = format!("shape {shape:?} does not hold {given} values");
        return invalid("shape", message);
    }
    let (elements, scale, offset) = match values {
        Values::U8(bytes) if codec.repr == Repr::U8 => (bytes.to_vec(), Vec::new(), Vec::new()),
        Values::F32(v) if codec.repr != Repr::U8 => encode_f32(codec, v, shape)?,
        _ => {
            let kind = if codec.repr == Repr::U8 {
                "bytes"
            } else {
                "f32 values"
            };
            return invalid("values", format!("codec {codec} stores {kind} only"));
        }
    };
    let raw_len = elements.len();
    let bytes = compress(codec.compression, elements)?;
    let shape = shape.to_vec();
    Ok(Encoded {
        codec,
        shape,
        bytes,
        raw_len,
        scale,
        offset,
    })
}

/// Undoes the compression layer and returns the element bytes, borrowed when the codec has no
/// compression.
///
/// The result always has exactly `raw_len` bytes; anything else, and corrupt zstd or LZ4 input,
/// is an [`Error::Codec`]. Arbitrary bytes never panic, and no more than `raw_len` bytes are
/// allocated: before any buffer is made, a zstd frame must record a content size equal to
/// `raw_len`, and an LZ4 block must be long enough to expand to it.
pub fn decompress<'a>(codec: Codec, stored: &'a [u8], raw_len: usize) -> Result<Cow<'a, [u8]>> {
    let decoded = match codec.compression {
        Compression::None => Cow::Borrowed(stored),
        Compression::Zstd { .. } => {
            match zstd::bulk::Decompressor::upper_bound(stored) {
                Some(size) if size == raw_len => {}
                Some(size) => {
                    return corrupt(format!("zstd data holds {size} bytes, not {raw_len}"));
                }
                None => return corrupt("zstd data does not record its decompressed size".into()),
            }
            match zstd::bulk::decompress(stored, raw_len) {
                Ok(bytes) => Cow::Owned(bytes),
                Err(e) => return corrupt(format!("zstd data is corrupt: {e}")),
            }
        }
        Compression::Lz4 => {
            if raw_len > stored.len().saturating_mul(LZ4_MAX_RATIO) {
                let len = stored.len();
                return corrupt(format!(
                    "an lz4 block of {len} bytes cannot expand to {raw_len}"
                ));
            }
            let mut bytes = vec![0; raw_len];
            match lz4_flex::block::decompress_into(stored, &mut bytes) {
                Ok(written) => bytes.truncate(written),
                Err(e) => return corrupt(format!("lz4 data is corrupt: {e}")),
            }
            Cow::Owned(bytes)
        }
    };
    if decoded.len() != raw_len {
        return corrupt(format!("{} element bytes, not {raw_len}", decoded.len()));
    }
    Ok(decoded)
}

/// Decodes element bytes (already decompressed) to f32 values, applying scale and offset:
/// fp8 `x' = f32(stored) * s`, int8 `x' = q * scale_c + offset_c`.
///
/// [`Repr::U8`] is an [`Error::InvalidArgument`]: its bytes are the values. Element bytes, scale or
/// offset whose lengths do not fit `shape` are an [`Error::Codec`], since they mean the stored
/// tensor and its metadata disagree.
pub fn decode_f32(
    codec: Codec,
    elements: &[u8],
    shape: &[usize],
    scale: &[f32],
    offset: &[f32],
) -> Result<Vec<f32>> {
    let repr = codec.repr;
    let name = repr.name();
    if repr == Repr::U8 {
        return invalid(
            "codec",
            "u8 tensors hold bytes: use the element bytes directly".into(),
        );
    }
    let count = element_count(shape).unwrap_or(usize::MAX);
    if count.checked_mul(repr.element_size()) != Some(elements.len()) {
        let len = elements.len();
        return corrupt(format!("{len} bytes do not fit {name} of shape {shape:?}"));
    }
    let channels = channel_count(shape);
    let (scales, offsets) = match repr {
        Repr::Fp8E4M3 | Repr::Fp8E5M2 => (1, 0),
        Repr::Int8 => (channels, channels),
        _ => (0, 0),
    };
    if (scale.len(), offset.len()) != (scales, offsets) {
        let found = (scale.len(), offset.len());
        return corrupt(format!(
            "{name} of shape {shape:?} needs {scales} scales and {offsets} offsets, found {found:?}"
        ));
    }
    let s = scale.first().copied().unwrap_or(1.0);
    Ok(match repr {
        Repr::F32 => from_le(elements, f32::from_le_bytes),
        Repr::F16 => from_le(elements, |b| f16::from_le_bytes(b).to_f32()),
        Repr::BF16 => from_le(elements, |b| bf16::from_le_bytes(b).to_f32()),
        Repr::Fp8E4M3 => from_le(elements, |[b]| F8E4M3::from_bits(b).to_f32() * s),
        Repr::Fp8E5M2 => from_le(elements, |[b]| F8E5M2::from_bits(b).to_f32() * s),
        // U8 was refused above.
        Repr::Int8 | Repr::U8 => {
            let per = count.checked_div(channels).unwrap_or(0);
            let mut out = Vec::with_capacity(count);
            for (c, (&scale, &offset)) in scale.iter().zip(offset).enumerate() {
                let chunk = elements.get(c * per..(c + 1) * per).unwrap_or_default();
                // Each byte is the two's-complement code q.
                out.extend(chunk.iter().map(|&b| f32::from(b as i8) * scale + offset));
            }
            out
        }
    })
}

/// The number of elements of `shape`, or None when it overflows.
fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

/// int8 channels: the first dimension of a tensor with two or more, else one for the whole tensor.
fn channel_count(shape: &[usize]) -> usize {
    match shape {
        [first, _, ..] => *first,
        _ => 1,
    }
}

fn invalid<T>(name: &'static str, message: String) -> Result<T> {
    Err(Error::InvalidArgument { name, message })
}

fn corrupt<T>(message: String) -> Result<T> {
    Err(Error::Codec { message })
}

/// A scale that is zero or subnormal is replaced by 1: the values it would serve are all below
/// about 1e-33, too small to matter, and dividing by a subnormal would lose the precision the
/// scale is there to keep.
fn normal_or_one(scale: f64) -> f32 {
    let scale = scale as f32;
    if scale >= f32::MIN_POSITIVE {
        scale
    } else {
        1.0
    }
}

/// The element bytes, scale and offset of f32 values for every representation but U8.
fn encode_f32(codec: Codec, v: &[f32], shape: &[usize]) -> Result<(Vec<u8>, Vec<f32>, Vec<f32>)> {
    let unscaled = |bytes| (bytes, Vec::new(), Vec::new());
    Ok(match codec.repr {
        // U8 never gets here: `encode` only passes it bytes.
        Repr::F32 | Repr::U8 => unscaled(le_bytes(v, f32::to_le_bytes)),
        Repr::F16 => unscaled(le_bytes(v, |x| f16::from_f32(x).to_le_bytes())),
        Repr::BF16 => unscaled(le_bytes(v, |x| bf16::from_f32(x).to_le_bytes())),
        Repr::Fp8E4M3 | Repr::Fp8E5M2 => {
            check_finite(codec, v)?;
            let (bytes, scale) = encode_fp8(codec.repr == Repr::Fp8E5M2, v);
            (bytes, vec![scale], Vec::new())
        }
        Repr::Int8 => {
            check_finite(codec, v)?;
            encode_int8(v, channel_count(shape))
        }
    })
}

/// Reads consecutive `N`-byte elements with `from_bytes` (a little-endian conversion).
fn from_le<const N: usize>(elements: &[u8], from_bytes: impl Fn([u8; N]) -> f32) -> Vec<f32> {
    let (chunks, _) = elements.as_chunks();
    chunks.iter().map(|b| from_bytes(*b)).collect()
}

/// Serialises each value with `to_bytes` (a little-endian conversion) into one buffer.
fn le_bytes<const N: usize>(values: &[f32], to_bytes: impl Fn(f32) -> [u8; N]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * N);
    for &x in values {
        out.extend_from_slice(&to_bytes(x));
    }
    out
}

fn check_finite(codec: Codec, values: &[f32]) -> Result<()> {
    match values.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        None => Ok(()),
        Some((i, x)) => invalid(
            "values",
            format!(
                "codec {codec} cannot store the non-finite value {x} at index {i}: it would \
                 poison the scale; clean the tensor or use f32, f16 or bf16"
            ),
        ),
    }
}

/// Quantises to fp8 with one per-tensor scale; returns the fp8 bit patterns and the scale.
fn encode_fp8(e5m2: bool, values: &[f32]) -> (Vec<u8>, f32) {
    let fmax: f64 = if e5m2 { 57344.0 } else { 448.0 };
    let max_abs = values.iter().fold(0f32, |m, x| m.max(x.abs()));
    let scale = normal_or_one(f64::from(max_abs) / fmax);
    // Dividing in f64 keeps x / s exact enough that only the fp8 rounding counts; the clamp
    // absorbs the last f32 ulp of the scale, so the maximum never rounds past FMAX.
    let bytes = values.iter().map(|&x| {
        let y = (f64::from(x) / f64::from(scale)).clamp(-fmax, fmax);
        if e5m2 {
            F8E5M2::from_f64(y).to_bits()
        } else {
            F8E4M3::from_f64(y).to_bits()
        }
    });
    (bytes.collect(), scale)
}

/// Quantises to int8 with an affine scale and offset per channel.
fn encode_int8(values: &[f32], channels: usize) -> (Vec<u8>, Vec<f32>, Vec<f32>) {
    let per = values.len().checked_div(channels).unwrap_or(0);
    let mut bytes = Vec::with_capacity(values.len());
    let (mut scales, mut offsets) = (Vec::with_capacity(channels), Vec::with_capacity(channels));
    for c in 0..channels {
        let chunk = values.get(c * per..(c + 1) * per).unwrap_or_default();
        let (lo, hi) = chunk
            .iter()
            .fold((f32::MAX, f32::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        // f64 so that `max + min` and `max - min` cannot overflow for huge finite values.
        let (lo, hi) = if lo <= hi {
            (f64::from(lo), f64::from(hi))
        } else {
            (0.0, 0.0)
        };
        let offset = ((hi + lo) / 2.0) as f32;
        let scale = normal_or_one((hi - lo) / 254.0);
        // q is computed against the stored (rounded) scale and offset, so decoding with them
        // stays within half a step.
        bytes.extend(chunk.iter().map(|&x| {
            let q = ((f64::from(x) - f64::from(offset)) / f64::from(scale)).round();
            q.clamp(-127.0, 127.0) as i8 as u8
        }));
        scales.push(scale);
        offsets.push(offset);
    }
    (bytes, scales, offsets)
}

fn compress(compression: Compression, elements: Vec<u8>) -> Result<Vec<u8>> {
    match compression {
        Compression::None => Ok(elements),
        Compression::Zstd { level } => {
            let run = || {
                let mut compressor = zstd::bulk::Compressor::new(level)?;
                compressor.include_checksum(true)?;
                compressor.include_contentsize(true)?;
                compressor.compress(&elements)
            };
            run().or_else(|e| corrupt(format!("zstd compression failed: {e}")))
        }
        Compression::Lz4 => Ok(lz4_flex::block::compress(&elements)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const COMPRESSIONS: [Compression; 5] = [
        Compression::None,
        Compression::Zstd { level: 1 },
        Compression::Zstd { level: 3 },
        Compression::Zstd { level: 22 },
        Compression::Lz4,
    ];
    const ZSTD3: Compression = Compression::Zstd { level: 3 };

    fn codec(repr: Repr, compression: Compression) -> Codec {
        Codec { repr, compression }
    }

    fn round_trip(codec: Codec, values: &[f32], shape: &[usize]) -> (Encoded, Vec<f32>) {
        let e = encode(codec, Values::F32(values), shape).expect("encode");
        let elements = decompress(codec, &e.bytes, e.raw_len).expect("decompress");
        let decoded = decode_f32(codec, &elements, shape, &e.scale, &e.offset).expect("decode");
        (e, decoded)
    }

    /// Asserts every decoded value is within the documented bound of its input.
    fn assert_within_bound(codec: Codec, x: &[f32], shape: &[usize]) {
        let (e, y) = round_trip(codec, x, shape);
        assert_eq!(y.len(), x.len());
        let per = x.len().checked_div(channel_count(shape)).unwrap_or(0);
        for (i, (&x, &y)) in x.iter().zip(&y).enumerate() {
            let tolerance = match error_bound(codec) {
                ErrorBound::Exact => 0.0,
                // Below f16's normal range the absolute error is half the subnormal spacing.
                ErrorBound::Relative(r) => r * x.abs() + 2f32.powi(-25),
                ErrorBound::ScaledRelative(r) => {
                    let m = 2f32.powi(if codec.repr == Repr::Fp8E5M2 { -14 } else { -6 });
                    r * x.abs().max(m * e.scale[0]) + 2f32.powi(-22) * x.abs()
                }
                ErrorBound::PerChannelStep => {
                    // The channel's largest magnitude is at most |offset| + 127 steps.
                    let (scale, offset) = (e.scale[i / per], e.offset[i / per]);
                    scale / 2.0 + 2f32.powi(-21) * (offset.abs() + 127.0 * scale)
                }
            };
            assert!(
                (y - x).abs() <= tolerance,
                "{codec}: {x} -> {y} (±{tolerance})"
            );
        }
    }

    /// Tensors of awkward shapes, values in -50..50 with some tiny ones and zeros, all scaled by
    /// a magnitude down to 1e-37 (where the fp8 and int8 scales fall back to 1).
    fn tensor() -> impl Strategy<Value = (Vec<usize>, Vec<f32>)> {
        const SHAPES: &[&[usize]] = &[&[4, 8, 8], &[16, 3, 5], &[7], &[], &[3, 0], &[2, 1]];
        let magnitude = prop::sample::select(vec![1.0f32, 1e-3, 1e-6, 1e-37]);
        (prop::sample::select(SHAPES), magnitude).prop_flat_map(|(shape, magnitude)| {
            let value = prop_oneof![4 => -50.0f32..50.0, 1 => -1e-4f32..1e-4, 1 => Just(0.0f32)];
            let values = value.prop_map(move |x| x * magnitude);
            let count: usize = shape.iter().product();
            (Just(shape.to_vec()), prop::collection::vec(values, count))
        })
    }

    #[test]
    fn parse_and_name_round_trip() {
        let all = Repr::ALL
            .into_iter()
            .flat_map(|r| COMPRESSIONS.map(|c| (r, c)));
        for (repr, compression) in all {
            let codec = codec(repr, compression);
            assert_eq!(Codec::parse(&codec.to_string()).expect("parse"), codec);
            assert_eq!(codec.is_raw(), compression == Compression::None);
            assert_eq!(codec.is_lossless(), matches!(repr, Repr::F32 | Repr::U8));
            assert_eq!(codec.element_dtype(), repr.dtype());
        }
        let parsed = |text| Codec::parse(text).expect("parse");
        assert_eq!(parsed("int8+zstd"), codec(Repr::Int8, ZSTD3));
        assert_eq!(parsed("fp8"), codec(Repr::Fp8E4M3, Compression::None));
        assert_eq!(parsed(" BF16 "), Codec::BF16);
        assert_eq!(codec(Repr::Int8, ZSTD3).name(), "int8+zstd:3");
        assert_eq!(Codec::BF16.name() + " " + &Codec::RAW_U8.name(), "bf16 u8");
    }

    #[test]
    fn parse_rejects_with_helpful_messages() {
        let bad = ",f64,+zstd,f32+,f32+gzip,f32+zstd:0,f32+zstd:x,f32+zstd+lz4,u8+lz4:1";
        for text in bad.split(',') {
            let message = match Codec::parse(text) {
                Err(e @ Error::InvalidArgument { name: "codec", .. }) => e.to_string(),
                other => panic!("{text:?} gave {other:?}"),
            };
            for part in [&format!("`{text}`"), "fp8_e5m2", "+lz4", "1..=22"] {
                assert!(message.contains(part), "{message}");
            }
        }
        let level = Codec::parse("f32+zstd:23")
            .expect_err("rejected")
            .to_string();
        assert!(
            level.contains("level must be an integer in 1..=22"),
            "{level}"
        );
    }

    #[test]
    fn bad_inputs_are_invalid_arguments() {
        let f32s = Values::F32(&[1.0, 2.0, 3.0]);
        let invalid = |r: Result<Encoded>| matches!(r, Err(Error::InvalidArgument { .. }));
        assert!(invalid(encode(Codec::BF16, f32s, &[2, 2])));
        assert!(invalid(encode(Codec::BF16, f32s, &[usize::MAX, 2])));
        assert!(invalid(encode(Codec::RAW_U8, f32s, &[3])));
        assert!(invalid(encode(Codec::BF16, Values::U8(&[1, 2, 3]), &[3])));
        let zstd0 = codec(Repr::F32, Compression::Zstd { level: 0 });
        assert!(invalid(encode(zstd0, f32s, &[3])));
        for repr in [Repr::Fp8E4M3, Repr::Fp8E5M2, Repr::Int8] {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let values = Values::F32(&[1.0, bad, 3.0]);
                let result = encode(codec(repr, Compression::None), values, &[3]);
                assert!(invalid(result), "{repr:?} accepted {bad}");
            }
        }
        // Formats without a scale keep non-finite values.
        for repr in [Repr::F32, Repr::F16, Repr::BF16] {
            let values = [f32::NAN, f32::INFINITY];
            let (_, y) = round_trip(codec(repr, Compression::None), &values, &[2]);
            assert!(y[0].is_nan() && y[1] == f32::INFINITY);
        }
    }

    #[test]
    fn decode_rejects_mismatched_metadata() {
        let values: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let (int8, f16, fp8) = (Repr::Int8, Repr::F16, Repr::Fp8E4M3);
        let e = encode(codec(int8, ZSTD3), Values::F32(&values), &[3, 4]).expect("encode");
        let elements = decompress(e.codec, &e.bytes, e.raw_len).expect("decompress");
        let rejects = |repr, bytes: &[u8], shape: &[usize], scale: &[f32], offset: &[f32]| {
            let codec = codec(repr, Compression::None);
            matches!(
                decode_f32(codec, bytes, shape, scale, offset),
                Err(Error::Codec { .. })
            )
        };
        assert!(rejects(int8, &elements, &[4, 3], &e.scale, &e.offset));
        assert!(rejects(int8, &elements, &[3, 4], &e.scale[..2], &e.offset));
        assert!(rejects(int8, &elements[1..], &[3, 4], &e.scale, &e.offset));
        assert!(rejects(f16, &[0; 23], &[12], &[], &[]));
        assert!(rejects(f16, &[0; 24], &[12], &[1.0], &[]));
        assert!(rejects(fp8, &[0; 12], &[12], &[], &[]));
        assert!(rejects(fp8, &[0; 12], &[usize::MAX, 3], &[1.0], &[]));
        let u8s = decode_f32(Codec::RAW_U8, &[0; 12], &[12], &[], &[]);
        assert!(matches!(u8s, Err(Error::InvalidArgument { .. })));
    }

    #[test]
    fn zstd_shrinks_a_smooth_tensor() {
        let values: Vec<f32> = (0..4096).map(|i| (i as f32 / 200.0).sin() * 3.0).collect();
        for repr in [Repr::F32, Repr::BF16, Repr::Int8, Repr::Fp8E4M3] {
            let e = encode(codec(repr, ZSTD3), Values::F32(&values), &[16, 256]).expect("encode");
            assert!(e.bytes.len() < e.raw_len, "{}: {}", e.codec, e.bytes.len());
        }
    }

    #[test]
    fn decompress_refuses_impossible_sizes_without_allocating() {
        let (zstd, lz4) = (codec(Repr::U8, ZSTD3), codec(Repr::U8, Compression::Lz4));
        let e = encode(zstd, Values::U8(&[7; 1000]), &[1000]).expect("encode");
        assert!(decompress(zstd, &e.bytes, usize::MAX).is_err());
        assert!(decompress(lz4, &[0xF0, 0], usize::MAX / 2).is_err());
        assert!(decompress(Codec::RAW_U8, &[1, 2], 3).is_err());
        let raw = decompress(Codec::RAW_U8, &[1, 2], 2);
        assert!(matches!(raw, Ok(Cow::Borrowed(&[1, 2]))));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn lossless_codecs_are_bit_exact(
            bits in prop::collection::vec(any::<u32>(), 0..300),
            bytes in prop::collection::vec(any::<u8>(), 0..300),
            compression in prop::sample::select(COMPRESSIONS.to_vec()),
        ) {
            let floats: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
            let (_, decoded) = round_trip(codec(Repr::F32, compression), &floats, &[floats.len()]);
            prop_assert_eq!(decoded.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), bits);

            let u8_codec = codec(Repr::U8, compression);
            let e = encode(u8_codec, Values::U8(&bytes), &[bytes.len()]).expect("encode");
            prop_assert_eq!(e.raw_len, bytes.len());
            let decoded = decompress(u8_codec, &e.bytes, e.raw_len).expect("decompress");
            prop_assert_eq!(decoded.as_ref(), &bytes[..]);
        }

        #[test]
        fn lossy_codecs_stay_within_their_bound(
            (shape, values) in tensor(),
            compression in prop::sample::select(COMPRESSIONS.to_vec()),
        ) {
            for repr in [Repr::F16, Repr::BF16, Repr::Fp8E4M3, Repr::Fp8E5M2, Repr::Int8] {
                assert_within_bound(codec(repr, compression), &values, &shape);
            }
        }

        #[test]
        fn decompress_never_panics_on_arbitrary_bytes(
            stored in prop::collection::vec(any::<u8>(), 0..400),
            raw_len in 0usize..4096,
            compression in prop::sample::select(COMPRESSIONS.to_vec()),
        ) {
            if let Ok(bytes) = decompress(codec(Repr::U8, compression), &stored, raw_len) {
                prop_assert_eq!(bytes.len(), raw_len);
            }
        }

        #[test]
        fn decompress_rejects_truncated_or_mislabelled_data(
            data in prop::collection::vec(0u8..4, 1..2000),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
        ) {
            for codec in [codec(Repr::U8, ZSTD3), codec(Repr::U8, Compression::Lz4)] {
                let e = encode(codec, Values::U8(&data), &[data.len()]).expect("encode");
                let truncated = &e.bytes[..cut.index(e.bytes.len())];
                prop_assert!(decompress(codec, truncated, e.raw_len).is_err());
                prop_assert!(decompress(codec, &e.bytes, e.raw_len + 1).is_err());
                prop_assert!(decompress(codec, &e.bytes, e.raw_len - 1).is_err());
                // Without a checksum LZ4 may decode a flipped byte to wrong data, but never to the
                // wrong length and never with a panic.
                let mut flipped = e.bytes.clone();
                flipped[flip.index(e.bytes.len())] ^= 0x5A;
                if let Ok(bytes) = decompress(codec, &flipped, e.raw_len) {
                    prop_assert_eq!(bytes.len(), e.raw_len);
                }
            }
        }
    }
}
