//! What each model family costs the data path: the weights a worker process would hold, the
//! latent geometry, and the text encoders' output.
//!
//! Sizes are parameter counts times two bytes (bf16/fp16, the dtype the weights are published
//! in); AI Toolkit's `quantize: true` roughly halves the transformer again. Parameter counts,
//! latent channels, VAE downscale and encoder shapes come from the published model configs and
//! pipelines (diffusers `pipeline_*.py`, the Wan and Black Forest Labs reference code); each
//! family's `source` says which, and docs/diagnose.md lists them. Counts are rounded to the
//! nearest million: these figures size RAM, they do not load checkpoints.

/// One set of weights of a family (denoiser, VAE, a text encoder).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Component {
    /// What it is, e.g. `"transformer"` or `"text_encoder_2 (T5-XXL)"`.
    pub name: &'static str,
    /// Parameters.
    pub params: u64,
}

impl Component {
    /// Bytes of the weights in bf16/fp16.
    pub fn bytes(&self) -> u64 {
        self.params * 2
    }
}

/// The output of one text encoder for one caption, as a trainer caches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TextEncoder {
    /// Which encoder.
    pub name: &'static str,
    /// Tokens per caption (the padded length, or the maximum when `variable`).
    pub seq: u32,
    /// Width of each token's hidden state.
    pub width: u32,
    /// Width of the pooled embedding (0 when the family uses none).
    pub pooled: u32,
    /// The cached sequence has the caption's own length (up to `seq`) rather than a padded
    /// one: Qwen-Image keeps only the valid tokens.
    pub variable: bool,
}

impl TextEncoder {
    /// Elements cached for a caption of `tokens` tokens.
    pub fn elements(&self, tokens: u32) -> u64 {
        let seq = if self.variable {
            tokens.clamp(1, self.seq)
        } else {
            self.seq
        };
        u64::from(seq) * u64::from(self.width) + u64::from(self.pooled)
    }
}

/// A model family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Family {
    /// The name `--model` takes, e.g. `"flux"`.
    pub name: &'static str,
    /// A readable name, e.g. `"Flux.1 (dev/schnell)"`.
    pub title: &'static str,
    /// AI Toolkit `model.arch` values of this family.
    pub archs: &'static [&'static str],
    /// The weights.
    pub components: &'static [Component],
    /// Latent channels of the VAE.
    pub latent_channels: u32,
    /// Spatial downscale of the VAE (pixels per latent along a side).
    pub vae_factor: u32,
    /// The text encoders whose outputs are cached.
    pub text_encoders: &'static [TextEncoder],
    /// Where the figures come from.
    pub source: &'static str,
}

impl Family {
    /// Bytes of all weights in bf16/fp16.
    pub fn model_bytes(&self) -> u64 {
        self.components.iter().map(Component::bytes).sum()
    }

    /// Latent elements of one `width`×`height` image.
    pub fn latent_elements(&self, width: u32, height: u32) -> u64 {
        u64::from(width / self.vae_factor)
            * u64::from(height / self.vae_factor)
            * u64::from(self.latent_channels)
    }

    /// Text-embedding elements of one caption of `tokens` tokens, all encoders together.
    pub fn text_elements(&self, tokens: u32) -> u64 {
        self.text_encoders.iter().map(|t| t.elements(tokens)).sum()
    }
}

const CLIP_L: Component = Component {
    name: "text_encoder (CLIP ViT-L/14)",
    params: 123_000_000,
};
const CLIP_G: Component = Component {
    name: "text_encoder_2 (OpenCLIP ViT-bigG/14)",
    params: 695_000_000,
};
const T5_XXL: Component = Component {
    name: "text_encoder (T5 v1.1 XXL encoder)",
    params: 4_762_000_000,
};
const SD_VAE: Component = Component {
    name: "vae (AutoencoderKL, 4 channels)",
    params: 84_000_000,
};
const VAE_16: Component = Component {
    name: "vae (AutoencoderKL, 16 channels)",
    params: 84_000_000,
};
const WAN_VAE: Component = Component {
    name: "vae (Wan 2.1 VAE)",
    params: 127_000_000,
};
const UMT5_XXL: Component = Component {
    name: "text_encoder (umT5-XXL encoder)",
    params: 5_681_000_000,
};
const CLIP_L_SEQ: TextEncoder = TextEncoder {
    name: "CLIP-L",
    seq: 77,
    width: 768,
    pooled: 0,
    variable: false,
};
const UMT5_SEQ: TextEncoder = TextEncoder {
    name: "umT5-XXL",
    seq: 512,
    width: 4096,
    pooled: 0,
    variable: false,
};

/// Every family larder knows, in release order.
pub const FAMILIES: &[Family] = &[
    Family {
        name: "sd15",
        title: "Stable Diffusion 1.5",
        archs: &["sd1"],
        components: &[
            Component {
                name: "unet",
                params: 860_000_000,
            },
            SD_VAE,
            CLIP_L,
        ],
        latent_channels: 4,
        vae_factor: 8,
        text_encoders: &[CLIP_L_SEQ],
        source: "runwayml/stable-diffusion-v1-5 model_index.json; diffusers StableDiffusionPipeline (77 CLIP tokens, width 768)",
    },
    Family {
        name: "sd2",
        title: "Stable Diffusion 2.x",
        archs: &["sd2"],
        components: &[
            Component {
                name: "unet",
                params: 866_000_000,
            },
            SD_VAE,
            Component {
                name: "text_encoder (OpenCLIP ViT-H/14)",
                params: 340_000_000,
            },
        ],
        latent_channels: 4,
        vae_factor: 8,
        text_encoders: &[TextEncoder {
            name: "OpenCLIP-H",
            seq: 77,
            width: 1024,
            pooled: 0,
            variable: false,
        }],
        source: "stabilityai/stable-diffusion-2-1 configs; diffusers StableDiffusionPipeline",
    },
    Family {
        name: "sdxl",
        title: "Stable Diffusion XL",
        archs: &["sdxl"],
        components: &[
            Component {
                name: "unet",
                params: 2_567_000_000,
            },
            SD_VAE,
            CLIP_L,
            CLIP_G,
        ],
        latent_channels: 4,
        vae_factor: 8,
        text_encoders: &[
            CLIP_L_SEQ,
            TextEncoder {
                name: "OpenCLIP-bigG",
                seq: 77,
                width: 1280,
                pooled: 1280,
                variable: false,
            },
        ],
        source: "stabilityai/stable-diffusion-xl-base-1.0 configs; diffusers StableDiffusionXLPipeline (prompt_embeds 77x2048, pooled 1280)",
    },
    Family {
        name: "sd3",
        title: "Stable Diffusion 3 Medium",
        archs: &["sd3"],
        components: &[
            Component {
                name: "transformer (MMDiT)",
                params: 2_028_000_000,
            },
            VAE_16,
            CLIP_L,
            CLIP_G,
            T5_XXL,
        ],
        latent_channels: 16,
        vae_factor: 8,
        text_encoders: &[
            // CLIP-L and CLIP-G are concatenated to 77x2048 and padded to T5's width: the
            // cached prompt_embeds are (77 + 256) x 4096 and the pooled vector 768 + 1280.
            TextEncoder {
                name: "CLIP-L + CLIP-G (padded to 4096)",
                seq: 77,
                width: 4096,
                pooled: 2048,
                variable: false,
            },
            TextEncoder {
                name: "T5-XXL",
                seq: 256,
                width: 4096,
                pooled: 0,
                variable: false,
            },
        ],
        source: "stabilityai/stable-diffusion-3-medium-diffusers configs; diffusers StableDiffusion3Pipeline (max_sequence_length=256)",
    },
    Family {
        name: "flux",
        title: "Flux.1 (dev, schnell, Kontext)",
        archs: &["flux", "flex1", "flex2", "flux_kontext"],
        components: &[
            Component {
                name: "transformer",
                params: 11_901_000_000,
            },
            VAE_16,
            CLIP_L,
            T5_XXL,
        ],
        latent_channels: 16,
        vae_factor: 8,
        text_encoders: &[
            TextEncoder {
                name: "T5-XXL",
                seq: 512,
                width: 4096,
                pooled: 0,
                variable: false,
            },
            TextEncoder {
                name: "CLIP-L (pooled)",
                seq: 0,
                width: 0,
                pooled: 768,
                variable: false,
            },
        ],
        source: "black-forest-labs/FLUX.1-dev configs (z_channels 16, context_in_dim 4096, vec_in_dim 768); diffusers FluxPipeline (max_sequence_length=512)",
    },
    Family {
        name: "qwen-image",
        title: "Qwen-Image (and Edit)",
        archs: &["qwen_image", "qwen_image_edit", "qwen_image_edit_plus"],
        components: &[
            Component {
                name: "transformer (MMDiT)",
                params: 20_430_000_000,
            },
            WAN_VAE,
            Component {
                name: "text_encoder (Qwen2.5-VL-7B)",
                params: 8_292_000_000,
            },
        ],
        latent_channels: 16,
        vae_factor: 8,
        text_encoders: &[TextEncoder {
            name: "Qwen2.5-VL-7B",
            seq: 1024,
            width: 3584,
            pooled: 0,
            variable: true,
        }],
        source: "Qwen/Qwen-Image configs; diffusers QwenImagePipeline (tokenizer_max_length=1024, template tokens dropped, hidden size 3584)",
    },
    Family {
        name: "wan21-14b",
        title: "Wan 2.1 14B",
        archs: &["wan21", "wan21_i2v"],
        components: &[
            Component {
                name: "transformer",
                params: 14_289_000_000,
            },
            WAN_VAE,
            UMT5_XXL,
        ],
        latent_channels: 16,
        vae_factor: 8,
        text_encoders: &[UMT5_SEQ],
        source: "Wan-Video/Wan2.1 wan/configs/wan_t2v_14B.py (vae_stride (4, 8, 8), text_len 512, umT5-XXL width 4096)",
    },
    Family {
        name: "wan22-14b",
        title: "Wan 2.2 A14B (two 14B experts)",
        archs: &["wan22_14b", "wan22_14b_i2v"],
        components: &[
            Component {
                name: "transformer (high-noise expert)",
                params: 14_289_000_000,
            },
            Component {
                name: "transformer_2 (low-noise expert)",
                params: 14_289_000_000,
            },
            WAN_VAE,
            UMT5_XXL,
        ],
        latent_channels: 16,
        vae_factor: 8,
        text_encoders: &[UMT5_SEQ],
        source: "Wan-Video/Wan2.2 wan/configs/wan_t2v_A14B.py (two experts, vae_stride (4, 8, 8), text_len 512)",
    },
    Family {
        name: "wan22-5b",
        title: "Wan 2.2 TI2V 5B",
        archs: &["wan22_5b"],
        components: &[
            Component {
                name: "transformer",
                params: 5_000_000_000,
            },
            Component {
                name: "vae (Wan 2.2 VAE, 48 channels)",
                params: 705_000_000,
            },
            UMT5_XXL,
        ],
        latent_channels: 48,
        vae_factor: 16,
        text_encoders: &[UMT5_SEQ],
        source: "Wan-Video/Wan2.2 wan/configs/wan_ti2v_5B.py (vae_stride (4, 16, 16), in_dim 48, text_len 512)",
    },
];

/// The family called `name` (as `--model` takes it), or the one an AI Toolkit `model.arch`
/// value belongs to. Case and `-`/`_` are ignored; an arch's `:tag` suffix is dropped.
pub fn family(name: &str) -> Option<&'static Family> {
    let norm = |s: &str| s.to_ascii_lowercase().replace('_', "-");
    let wanted = norm(name.split(':').next().unwrap_or(name));
    FAMILIES
        .iter()
        .find(|f| norm(f.name) == wanted || f.archs.iter().any(|a| norm(a) == wanted))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_found_by_name_and_by_arch() {
        assert_eq!(family("flux").map(|f| f.name), Some("flux"));
        assert_eq!(family("FLUX_KONTEXT:dev").map(|f| f.name), Some("flux"));
        assert_eq!(
            family("qwen_image_edit").map(|f| f.name),
            Some("qwen-image")
        );
        assert_eq!(family("wan22_5b").map(|f| f.name), Some("wan22-5b"));
        assert_eq!(family("sd1").map(|f| f.name), Some("sd15"));
        assert!(family("dalle").is_none());
    }

    #[test]
    fn geometry_and_text_sizes_follow_the_published_shapes() {
        let flux = family("flux").expect("flux");
        // A 1024x1024 Flux latent is 16x128x128.
        assert_eq!(flux.latent_elements(1024, 1024), 16 * 128 * 128);
        // T5 512x4096 plus CLIP's pooled 768.
        assert_eq!(flux.text_elements(10), 512 * 4096 + 768);
        let sdxl = family("sdxl").expect("sdxl");
        assert_eq!(sdxl.text_elements(10), 77 * 768 + 77 * 1280 + 1280);
        let qwen = family("qwen-image").expect("qwen");
        // Variable length: 10 tokens of 3584, capped at 1024 tokens.
        assert_eq!(qwen.text_elements(10), 10 * 3584);
        assert_eq!(qwen.text_elements(5000), 1024 * 3584);
        // Flux's weights: (11.901 + 0.084 + 0.123 + 4.762) billion parameters, 2 bytes each.
        assert_eq!(flux.model_bytes(), 2 * 16_870_000_000);
        let wan5 = family("wan22-5b").expect("wan");
        assert_eq!(wan5.latent_elements(1280, 704), 48 * 80 * 44);
    }
}
