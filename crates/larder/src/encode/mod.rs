//! Encoders: the models that turn pixels and captions into the tensors a trainer caches (VAE
//! latents, text embeddings, CLIP image embeddings).
//!
//! larder does not run models itself; it feeds them. An encoder is anything that implements
//! [`ImageEncoder`] or [`TextEncoder`]: a Rust model (candle, burn) or, through the Python
//! bindings, any Python callable (a diffusers VAE, a transformers text encoder). Prepare calls
//! each encoder with batches of one bucket, stores what it returns under content keys, and the
//! loader serves the results.
//!
//! Every encoder declares an [`EncoderIdentity`]: the model, its dtype and whatever else
//! changes its output, plus the latent scaling and shift factors. The identity is part of the
//! key of every entry it produces, so changing the encoder recomputes its entries and a stale
//! tensor is never served.

mod clip;

pub use clip::{CLIP_MEAN, CLIP_STD, ClipPreprocess};
pub(crate) use clip::{Squaring, squared_reference, squared_reference_chw};

/// The error an encoder returns: anything that can be shown. Prepare wraps it in
/// [`Error::Encoder`](crate::Error::Encoder) with the field and the item it concerns.
pub type EncoderError = Box<dyn std::error::Error + Send + Sync>;

/// What identifies an encoder's output: equal identities must mean equal outputs for equal
/// inputs.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EncoderIdentity {
    /// The model and everything else that changes the output, e.g.
    /// `"black-forest-labs/FLUX.1-dev vae bf16"`.
    pub id: String,
    /// The latent scaling factor the encoder applied (recorded, not applied by larder).
    pub scaling_factor: Option<f64>,
    /// The latent shift factor the encoder applied (recorded, not applied by larder).
    pub shift_factor: Option<f64>,
}

impl EncoderIdentity {
    /// An identity without scaling or shift factors.
    pub fn new(id: impl Into<String>) -> Self {
        EncoderIdentity {
            id: id.into(),
            scaling_factor: None,
            shift_factor: None,
        }
    }

    /// The canonical text that enters the cache key.
    pub fn key_text(&self) -> String {
        let factor = |f: Option<f64>| f.map_or_else(|| "none".to_owned(), |v| format!("{v:?}"));
        format!(
            "{};scaling_factor={};shift_factor={}",
            self.id,
            factor(self.scaling_factor),
            factor(self.shift_factor)
        )
    }
}

/// How an image encoder wants its pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PixelFormat {
    /// f32 in [-1, 1] (`x / 127.5 - 1`), as AI Toolkit feeds its VAE.
    SignedUnit,
    /// The u8 values as stored.
    U8,
}

impl PixelFormat {
    /// The name used in keys and docs.
    pub fn name(self) -> &'static str {
        match self {
            PixelFormat::SignedUnit => "f32_signed_unit",
            PixelFormat::U8 => "u8",
        }
    }
}

/// The values of a batch of images, N×C×H×W, row-major.
#[derive(Debug, Clone, PartialEq)]
pub enum PixelValues {
    /// [`PixelFormat::SignedUnit`] values, or CLIP-normalized ones.
    F32(Vec<f32>),
    /// [`PixelFormat::U8`] values.
    U8(Vec<u8>),
}

/// A batch of images of one bucket, handed to an [`ImageEncoder`]. The encoder owns it, so a
/// binding can hand the buffer on without copying (the Python binding gives it to NumPy).
#[derive(Debug, Clone, PartialEq)]
pub struct PixelBatch {
    /// N, C, H, W for images; N, F, C, H, W for video clips of F frames.
    pub shape: Vec<usize>,
    /// The values.
    pub values: PixelValues,
}

/// A tensor an encoder returned: the leading dimension is the batch.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedTensor {
    /// The shape, batch first.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub values: Vec<f32>,
}

impl EncodedTensor {
    /// Checks that the tensor holds `batch` items and its shape matches its values; returns the
    /// per-item shape.
    pub(crate) fn item_shape(&self, batch: usize) -> Result<&[usize], String> {
        let count: Option<usize> = self
            .shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d));
        if count != Some(self.values.len()) {
            return Err(format!(
                "shape {:?} does not hold its {} values",
                self.shape,
                self.values.len()
            ));
        }
        match self.shape.split_first() {
            Some((&n, rest)) if n == batch => Ok(rest),
            _ => Err(format!(
                "returned shape {:?} for a batch of {batch}: the first dimension must be the batch",
                self.shape
            )),
        }
    }

    /// The values of item `k` (after [`item_shape`](Self::item_shape) succeeded).
    pub(crate) fn item(&self, k: usize, batch: usize) -> &[f32] {
        let per = self.values.len() / batch.max(1);
        &self.values[k * per..(k + 1) * per]
    }
}

/// An image encoder: a batch of images of one bucket in, one tensor per image out (a VAE's
/// latents, a CLIP vision model's embeddings).
pub trait ImageEncoder: Send {
    /// What identifies this encoder's output.
    fn identity(&self) -> EncoderIdentity;

    /// How the encoder wants its pixels. A CLIP encoder gets CLIP-normalized f32, or with
    /// [`PixelFormat::U8`] the image CLIP sees at its own size, one per batch, to preprocess
    /// itself (as AI Toolkit's adapters run their own image processor).
    fn pixel_format(&self) -> PixelFormat {
        PixelFormat::SignedUnit
    }

    /// Encodes a batch; the result's first dimension is the batch.
    fn encode(&mut self, batch: PixelBatch) -> Result<EncodedTensor, EncoderError>;
}

/// A text encoder: captions in, named tensors out, each with the batch as first dimension.
///
/// The output named `"mask"` (or `"attention_mask"`), when present, is the attention mask
/// (N×L, nonzero for real tokens): larder then stores each caption's sequence outputs (those
/// whose item shape starts with L) with the padding removed, and the loader pads them again to
/// the batch's longest caption and serves the mask with them. Without a mask every position is
/// kept, as models that use their padded sequence (T5 in Flux) need.
pub trait TextEncoder: Send {
    /// What identifies this encoder's output.
    fn identity(&self) -> EncoderIdentity;

    /// Encodes captions; returns (output name, tensor) pairs.
    fn encode(&mut self, captions: &[&str]) -> Result<Vec<(String, EncodedTensor)>, EncoderError>;

    /// Returns true if and only if the encoder takes each caption with its item's control
    /// images (AI Toolkit's `encode_control_in_text_embeddings`: Qwen-Image-Edit and other edit
    /// models whose text encoder sees the images). Prepare then encodes one embedding per
    /// caption and controls, through [`TextEncoder::encode_with_controls`].
    fn takes_controls(&self) -> bool {
        false
    }

    /// Encodes captions, each with its item's control image files in control order (the
    /// encoder reads them as its model expects). Called, when [`TextEncoder::takes_controls`],
    /// for the captions of items that have controls; the others go through
    /// [`TextEncoder::encode`].
    fn encode_with_controls(
        &mut self,
        captions: &[&str],
        controls: &[&[std::path::PathBuf]],
    ) -> Result<Vec<(String, EncodedTensor)>, EncoderError> {
        let _ = (captions, controls);
        Err("this text encoder does not take control images".into())
    }
}

/// The encoders of a prepare run, by field name.
#[derive(Default)]
pub struct Encoders {
    /// Image encoders: each stores its output as the item field of its name (`"latent"`).
    pub image: Vec<(String, Box<dyn ImageEncoder>)>,
    /// Text encoders: each stores its outputs as `<name>.<output>` (`"text.embeds"`).
    pub text: Vec<(String, Box<dyn TextEncoder>)>,
    /// CLIP vision encoders: like image encoders, fed CLIP-preprocessed images.
    pub clip: Vec<(String, Box<dyn ImageEncoder>)>,
}

impl std::fmt::Debug for Encoders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The encoders themselves are opaque (models, Python callables): their names show.
        let names = |v: &[(String, Box<dyn ImageEncoder>)]| {
            v.iter().map(|e| e.0.clone()).collect::<Vec<_>>()
        };
        f.debug_struct("Encoders")
            .field("image", &names(&self.image))
            .field("text", &self.text.iter().map(|e| &e.0).collect::<Vec<_>>())
            .field("clip", &names(&self.clip))
            .finish()
    }
}

impl Encoders {
    /// Returns true if and only if there is no encoder.
    pub fn is_empty(&self) -> bool {
        self.image.is_empty() && self.text.is_empty() && self.clip.is_empty()
    }

    /// Checks that names are usable field names and distinct.
    pub(crate) fn validate(&self) -> crate::Result<()> {
        let mut seen = std::collections::HashSet::new();
        let names = self
            .image
            .iter()
            .map(|e| &e.0)
            .chain(self.text.iter().map(|e| &e.0))
            .chain(self.clip.iter().map(|e| &e.0));
        for name in names {
            // Names the batch already uses: fields, and the metadata the Python batch adds.
            let reserved = [
                "pixels",
                "mask",
                "inpaint",
                "captions",
                "keys",
                "items",
                "dtypes",
                "bucket",
                "is_reg",
                "flipped",
                "network_weight",
                "loss_multiplier",
                "epoch",
                "index",
            ];
            let bad = name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                || reserved.contains(&name.as_str())
                || name.starts_with("control");
            if bad {
                return Err(crate::Error::InvalidArgument {
                    name: "encoders",
                    message: format!(
                        "{name:?} cannot name an encoder field: use letters, digits, '_' or '-', not one of {reserved:?} or control*"
                    ),
                });
            }
            if !seen.insert(name) {
                return Err(crate::Error::InvalidArgument {
                    name: "encoders",
                    message: format!("two encoders are named {name:?}"),
                });
            }
        }
        Ok(())
    }
}

/// Converts stored u8 pixels to [`PixelFormat::SignedUnit`] in `out` (of the same length):
/// `x / 127.5 - 1`, as torchvision's `ToTensor` followed by `Normalize([0.5], [0.5])` does.
pub(crate) fn signed_unit(pixels: &[u8], out: &mut [f32]) {
    for (o, &p) in out.iter_mut().zip(pixels) {
        *o = f32::from(p) / 127.5 - 1.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_text_changes_with_every_part() {
        let a = EncoderIdentity::new("vae fp16");
        let mut b = a.clone();
        b.scaling_factor = Some(0.13025);
        let mut c = b.clone();
        c.shift_factor = Some(0.0);
        let texts = [a.key_text(), b.key_text(), c.key_text()];
        assert_eq!(
            texts.iter().collect::<std::collections::HashSet<_>>().len(),
            3
        );
        assert!(b.key_text().contains("0.13025"), "{}", b.key_text());
    }

    #[test]
    fn signed_unit_maps_the_byte_range_onto_minus_one_to_one() {
        let mut out = [0f32; 3];
        signed_unit(&[0, 255, 128], &mut out);
        assert_eq!(out[0], -1.0);
        assert_eq!(out[1], 1.0);
        assert!((out[2] - 0.003_921_6).abs() < 1e-6);
    }

    #[test]
    fn a_batch_of_the_wrong_size_is_an_error_naming_the_shape() {
        let t = EncodedTensor {
            shape: vec![2, 3],
            values: vec![0.0; 6],
        };
        assert_eq!(t.item_shape(2), Ok(&[3usize][..]));
        assert!(t.item_shape(3).expect_err("wrong batch").contains("[2, 3]"));
        let bad = EncodedTensor {
            shape: vec![2, 4],
            values: vec![0.0; 6],
        };
        assert!(bad.item_shape(2).is_err());
    }
}
