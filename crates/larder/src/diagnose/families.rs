//! What each model family costs: the weights the trainer loads, the latent geometry, and the
//! text encoders' output that a cache holds per caption.
//!
//! Sizes are parameter counts times two bytes (bf16/fp16, the dtype the weights are published
//! in); AI Toolkit's `quantize: true` roughly halves the transformer again. Parameter counts,
//! latent channels, VAE downscale and encoder shapes come from the published model configs and
//! pipelines (diffusers `pipeline_*.py`, the Wan and Black Forest Labs reference code); each
//! family's `source` says which, and docs/diagnose.md lists them. Counts are rounded to the
//! nearest million: these figures size RAM, they do not load checkpoints.

use std::path::Path;

use super::advice::{Advice, Level};

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
    /// Pieces of `model.name_or_path` (lowercase, `_` read as `-`) that pick this family
    /// among those sharing an arch: SD3 Medium, SD3.5 Medium and SD3.5 Large are all
    /// `arch: sd3`. Empty when the arch alone decides.
    pub name_hints: &'static [&'static str],
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

/// What SD3 and SD3.5 cache per caption. CLIP-L and CLIP-G are concatenated to 77x2048 and
/// padded to T5's width: the cached prompt_embeds are (77 + 256) x 4096 and the pooled vector
/// 768 + 1280.
const SD3_TEXT: &[TextEncoder] = &[
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
];
/// What SDXL and its distillations cache per caption: 77 tokens of 768 + 1280, and CLIP-G's
/// pooled 1280.
const SDXL_TEXT: &[TextEncoder] = &[
    CLIP_L_SEQ,
    TextEncoder {
        name: "OpenCLIP-bigG",
        seq: 77,
        width: 1280,
        pooled: 1280,
        variable: false,
    },
];
const T5_512: TextEncoder = TextEncoder {
    name: "T5-XXL",
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
        name_hints: &[],
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
        name_hints: &[],
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
        name_hints: &[],
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
        text_encoders: SDXL_TEXT,
        source: "stabilityai/stable-diffusion-xl-base-1.0 configs; diffusers StableDiffusionXLPipeline (prompt_embeds 77x2048, pooled 1280)",
    },
    Family {
        name: "ssd",
        title: "Segmind SSD-1B",
        archs: &["ssd"],
        name_hints: &[],
        components: &[
            Component {
                name: "unet (1.3B)",
                params: 1_300_000_000,
            },
            SD_VAE,
            CLIP_L,
            CLIP_G,
        ],
        latent_channels: 4,
        vae_factor: 8,
        text_encoders: SDXL_TEXT,
        source: "segmind/SSD-1B model card (1.3B-parameter UNet distilled from SDXL; SDXL's VAE and text encoders)",
    },
    Family {
        name: "vega",
        title: "Segmind Vega",
        archs: &["vega"],
        name_hints: &[],
        components: &[
            Component {
                name: "unet (745M)",
                params: 745_000_000,
            },
            SD_VAE,
            CLIP_L,
            CLIP_G,
        ],
        latent_channels: 4,
        vae_factor: 8,
        text_encoders: SDXL_TEXT,
        source: "segmind/Segmind-Vega model card (745M-parameter UNet distilled from SDXL; SDXL's VAE and text encoders)",
    },
    Family {
        name: "pixart",
        title: "PixArt-α / PixArt-Σ",
        archs: &["pixart", "pixart_sigma"],
        name_hints: &[],
        components: &[
            Component {
                name: "transformer (PixArt-XL/2, 0.6B)",
                params: 600_000_000,
            },
            SD_VAE,
            T5_XXL,
        ],
        latent_channels: 4,
        vae_factor: 8,
        text_encoders: &[TextEncoder {
            name: "T5-XXL",
            seq: 256,
            width: 4096,
            pooled: 0,
            variable: false,
        }],
        source: "PixArt-alpha/PixArt-XL-2-1024-MS and PixArt-Sigma-XL-2-1024-MS configs (0.6B transformer, 4-channel VAE); AI Toolkit stable_diffusion_model.py encodes T5 prompts at max_length=256",
    },
    Family {
        name: "sd3",
        title: "Stable Diffusion 3 Medium",
        archs: &["sd3"],
        // "stabilityai/stable-diffusion-3-medium-diffusers", or a local "sd3_medium" folder.
        name_hints: &["3-medium", "sd3-medium"],
        components: &[
            Component {
                name: "transformer (MMDiT, 2B)",
                params: 2_028_000_000,
            },
            VAE_16,
            CLIP_L,
            CLIP_G,
            T5_XXL,
        ],
        latent_channels: 16,
        vae_factor: 8,
        text_encoders: SD3_TEXT,
        source: "stabilityai/stable-diffusion-3-medium-diffusers configs; diffusers StableDiffusion3Pipeline (max_sequence_length=256)",
    },
    Family {
        name: "sd35-medium",
        title: "Stable Diffusion 3.5 Medium",
        archs: &["sd3"],
        name_hints: &["3.5-medium", "35-medium"],
        components: &[
            Component {
                name: "transformer (MMDiT-X, 2.5B)",
                params: 2_500_000_000,
            },
            VAE_16,
            CLIP_L,
            CLIP_G,
            T5_XXL,
        ],
        latent_channels: 16,
        vae_factor: 8,
        text_encoders: SD3_TEXT,
        source: "stabilityai/stable-diffusion-3.5-medium model card (2.5B-parameter MMDiT-X) and configs; same VAE and text encoders as SD3",
    },
    Family {
        name: "sd35-large",
        title: "Stable Diffusion 3.5 Large",
        archs: &["sd3"],
        // Also matches "stable-diffusion-3.5-large-turbo", which has the same weights' shape.
        name_hints: &["3.5-large", "35-large"],
        components: &[
            Component {
                name: "transformer (MMDiT, 8.1B)",
                params: 8_100_000_000,
            },
            VAE_16,
            CLIP_L,
            CLIP_G,
            T5_XXL,
        ],
        latent_channels: 16,
        vae_factor: 8,
        text_encoders: SD3_TEXT,
        source: "stabilityai/stable-diffusion-3.5-large model card (8.1B-parameter MMDiT) and configs; same VAE and text encoders as SD3",
    },
    Family {
        name: "flux",
        title: "Flux.1 (dev, schnell, Kontext)",
        archs: &["flux", "flex1", "flex2", "flux_kontext"],
        name_hints: &[],
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
            T5_512,
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
        name: "lumina2",
        title: "Lumina-Image 2.0",
        archs: &["lumina2"],
        name_hints: &[],
        components: &[
            Component {
                name: "transformer (Lumina2, 2.6B)",
                params: 2_600_000_000,
            },
            VAE_16,
            Component {
                name: "text_encoder (Gemma-2-2B)",
                params: 2_614_000_000,
            },
        ],
        latent_channels: 16,
        vae_factor: 8,
        // Counted at the full 256 tokens AI Toolkit asks for: an upper bound when the
        // pipeline keeps only a caption's own tokens.
        text_encoders: &[TextEncoder {
            name: "Gemma-2-2B",
            seq: 256,
            width: 2304,
            pooled: 0,
            variable: false,
        }],
        source: "Alpha-VLLM/Lumina-Image-2.0 model card and configs (2.6B transformer, Flux's 16-channel VAE, Gemma-2-2B with hidden size 2304); AI Toolkit stable_diffusion_model.py (max_sequence_length=256)",
    },
    Family {
        name: "chroma",
        title: "Chroma (Flux-derived, 8.9B)",
        archs: &["chroma"],
        name_hints: &[],
        components: &[
            Component {
                name: "transformer (8.9B)",
                params: 8_900_000_000,
            },
            VAE_16,
            T5_XXL,
        ],
        latent_channels: 16,
        vae_factor: 8,
        // T5 only: AI Toolkit's Chroma model replaces CLIP with a stub and caches no pooled
        // vector.
        text_encoders: &[T5_512],
        source: "lodestones/Chroma model card (8.9B parameters: Flux.1-schnell's 19 double and 38 single blocks with the modulation layers replaced); AI Toolkit extensions_built_in/diffusion_models/chroma/chroma_model.py (T5-XXL only, max_length 512, Flux's VAE)",
    },
    Family {
        name: "hidream",
        title: "HiDream-I1 (and E1)",
        archs: &["hidream", "hidream_e1"],
        name_hints: &[],
        components: &[
            Component {
                name: "transformer (sparse DiT, 17B)",
                params: 17_000_000_000,
            },
            VAE_16,
            CLIP_L,
            CLIP_G,
            T5_XXL,
            Component {
                name: "text_encoder_4 (Llama-3.1-8B-Instruct)",
                params: 8_030_000_000,
            },
        ],
        latent_channels: 16,
        vae_factor: 8,
        text_encoders: &[
            TextEncoder {
                name: "T5-XXL",
                seq: 128,
                width: 4096,
                pooled: 0,
                variable: false,
            },
            // Every layer's hidden state is kept: 32 layers of 128 tokens x 4096.
            TextEncoder {
                name: "Llama-3.1-8B (32 layers' hidden states)",
                seq: 32 * 128,
                width: 4096,
                pooled: 0,
                variable: false,
            },
            TextEncoder {
                name: "CLIP-L + CLIP-G (pooled)",
                seq: 0,
                width: 0,
                pooled: 768 + 1280,
                variable: false,
            },
        ],
        source: "HiDream-ai/HiDream-I1-Full model card (17B parameters) and configs; AI Toolkit extensions_built_in/diffusion_models/hidream (four text encoders, max_sequence_length 128, Llama hidden_states[1:] stacked, pooled CLIP-L + CLIP-G)",
    },
    Family {
        name: "qwen-image",
        title: "Qwen-Image (and Edit)",
        archs: &["qwen_image", "qwen_image_edit", "qwen_image_edit_plus"],
        name_hints: &[],
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
        name_hints: &[],
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
        name_hints: &[],
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
        name_hints: &[],
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

/// What larder knows of the model a config trains.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "figures", rename_all = "snake_case")]
pub enum ModelFigures {
    /// A family of [`FAMILIES`].
    Known {
        /// The family.
        #[serde(serialize_with = "family_name")]
        family: &'static Family,
        /// Why this family was taken when `model.name_or_path` did not say which of the
        /// families sharing its arch it is (for example SD3 Medium or SD3.5 Large); `None` when
        /// the arch, or the name, decided.
        assumed: Option<String>,
    },
    /// An architecture the config accepts but larder has no figures for.
    Unknown {
        /// The `model.arch` value.
        arch: String,
    },
}

fn family_name<S: serde::Serializer>(f: &&'static Family, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(f.name)
}

impl ModelFigures {
    /// The family, when known.
    pub fn family(&self) -> Option<&'static Family> {
        match self {
            ModelFigures::Known { family, .. } => Some(family),
            ModelFigures::Unknown { .. } => None,
        }
    }

    /// What a user should know about these figures: that a family was assumed, or that the
    /// arch has none. `None` when the figures are the model's own.
    pub fn advice(&self) -> Option<Advice> {
        match self {
            ModelFigures::Known { assumed: None, .. } => None,
            ModelFigures::Known {
                family,
                assumed: Some(why),
            } => Some(Advice {
                level: Level::Info,
                rule: "model-assumed",
                advice: format!(
                    "assumed {} ({}): set model.name_or_path to the model's repository, or pass --model, if it is another",
                    family.title, family.name
                ),
                reason: why.clone(),
            }),
            ModelFigures::Unknown { arch } => Some(Advice {
                level: Level::Warn,
                rule: "model-figures-unknown",
                advice: format!(
                    "the model figures for arch {arch:?} are unknown to larder: model weights, latents and text embeddings are not estimated, and the data figures count decoded pixels; pass --model FAMILY to size them as a known family"
                ),
                reason: format!(
                    "larder's family table (docs/diagnose.md, model families) has no parameter counts, latent geometry or text encoders for {arch:?}"
                ),
            }),
        }
    }
}

/// The figures of the model `arch` names, told apart by `name_or_path` where families share
/// an arch. An arch with no family is [`ModelFigures::Unknown`], not an error: every
/// architecture the config accepts can be diagnosed, with or without model figures.
pub fn resolve(arch: &str, name_or_path: Option<&str>) -> ModelFigures {
    let norm = |s: &str| s.to_ascii_lowercase().replace('_', "-");
    let wanted = norm(arch.split(':').next().unwrap_or(arch));
    let candidates: Vec<&'static Family> = FAMILIES
        .iter()
        .filter(|f| f.archs.iter().any(|a| norm(a) == wanted))
        .collect();
    let Some(&first) = candidates.first() else {
        return ModelFigures::Unknown {
            arch: arch.to_owned(),
        };
    };
    if candidates.len() == 1 {
        return ModelFigures::Known {
            family: first,
            assumed: None,
        };
    }
    let name = name_or_path.map(norm).unwrap_or_default();
    if let Some(&hit) = candidates
        .iter()
        .find(|f| f.name_hints.iter().any(|h| name.contains(h)))
    {
        return ModelFigures::Known {
            family: hit,
            assumed: None,
        };
    }
    let titles: Vec<&str> = candidates.iter().map(|f| f.title).collect();
    let said = match name_or_path {
        Some(n) => format!("model.name_or_path {n:?} does not say"),
        None => "the config has no model.name_or_path to say".to_owned(),
    };
    ModelFigures::Known {
        family: first,
        assumed: Some(format!(
            "arch {arch:?} is shared by {} and {said} which: the figures are {}'s",
            titles.join(", "),
            first.title
        )),
    }
}

/// The `model.name_or_path` of a config file: in the first process of an AI Toolkit job file
/// that has a `model` section, or in a top-level `model` section, as larder's config reader
/// finds the model. `None` when the file names none or is not YAML (a folder, for one).
pub fn name_or_path_of(config: &Path) -> Option<String> {
    let text = std::fs::read_to_string(config).ok()?;
    let root: serde_json::Value = serde_saphyr::from_str(&text).ok()?;
    let model = match root.get("config") {
        Some(c) => c
            .get("process")?
            .as_array()?
            .iter()
            .find_map(|p| p.get("model"))?,
        None => root.get("model")?,
    };
    model.get("name_or_path")?.as_str().map(str::to_owned)
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
        assert_eq!(family("sd35-large").map(|f| f.name), Some("sd35-large"));
    }

    #[test]
    fn diagnose_refused_chroma_hidream_and_lumina2() {
        // Regression: these archs passed scan and prepare but diagnose said "unknown model
        // family". Each now has figures from its source.
        for (arch, name, transformer) in [
            ("chroma", "chroma", 8_900_000_000),
            ("hidream", "hidream", 17_000_000_000),
            ("hidream_e1", "hidream", 17_000_000_000),
            ("lumina2", "lumina2", 2_600_000_000),
        ] {
            let f = resolve(arch, None).family().expect(arch);
            assert_eq!(f.name, name);
            assert_eq!(f.components[0].params, transformer, "{arch}");
            assert_eq!(resolve(arch, None).advice(), None, "{arch}");
        }
        // Chroma caches T5 only: 512 x 4096, no pooled CLIP vector.
        assert_eq!(
            family("chroma").expect("chroma").text_elements(9),
            512 * 4096
        );
        // HiDream: T5 128 x 4096, Llama's 32 layers x 128 x 4096, CLIP-L + CLIP-G pooled.
        let hidream = family("hidream").expect("hidream");
        assert_eq!(
            hidream.text_elements(9),
            128 * 4096 + 32 * 128 * 4096 + 2048
        );
        let encoders = hidream
            .components
            .iter()
            .filter(|c| c.name.starts_with("text_encoder"))
            .count();
        assert_eq!(encoders, 4);
        // Lumina2: Gemma-2-2B, 256 x 2304.
        assert_eq!(
            family("lumina2").expect("lumina2").text_elements(9),
            256 * 2304
        );
    }

    #[test]
    fn every_ai_toolkit_arch_is_diagnosable() {
        // The `arch` names of AI Toolkit's model classes. Each must resolve: to a family whose
        // figures apply, or to "unknown figures" with an advice that says so, never a refusal.
        let archs = [
            "sd1",
            "sd2",
            "sdxl",
            "ssd",
            "vega",
            "pixart",
            "pixart_sigma",
            "auraflow",
            "lumina2",
            "sd3",
            "flux",
            "flex1",
            "flex2",
            "flux_kontext",
            "flux2",
            "flux2_klein_4b",
            "flux2_klein_9b",
            "hidream",
            "hidream_e1",
            "hidream_o1",
            "omnigen2",
            "wan21",
            "wan21_i2v",
            "wan22_14b",
            "wan22_14b_i2v",
            "wan22_5b",
            "krea2",
            "zimage",
            "zimage_l2p",
            "f-lite",
            "ideogram4",
            "chroma",
            "chroma_radiance",
            "zeta_chroma",
            "qwen_image",
            "qwen_image_edit",
            "qwen_image_edit_plus",
            "ltx2",
            "anima",
            "cogview4",
            "ernie_image",
        ];
        let mut known = 0;
        for arch in archs {
            match resolve(arch, None) {
                ModelFigures::Known { family, .. } => {
                    assert!(family.archs.contains(&arch), "{arch}");
                    known += 1;
                }
                unknown @ ModelFigures::Unknown { .. } => {
                    let advice = unknown.advice().expect("an unknown arch is a finding");
                    assert_eq!(advice.rule, "model-figures-unknown");
                    assert_eq!(advice.level, Level::Warn);
                    assert!(advice.advice.contains(arch), "{}", advice.advice);
                }
            }
        }
        assert_eq!(known, 24);
    }

    #[test]
    fn every_family_arch_is_one_the_config_accepts() {
        // The wizard writes `arch: <first arch>`; a family arch the config rejected would make
        // a job file larder itself cannot read.
        for f in FAMILIES {
            for arch in f.archs {
                assert!(
                    crate::config::divisibility_for_arch(arch).is_some(),
                    "{arch} of {}",
                    f.name
                );
            }
        }
    }

    #[test]
    fn sd3_variants_are_told_apart_by_name_or_path() {
        // Regression: SD 3.5 Large was reported as SD3 Medium with a 4.1 GB transformer.
        let large = resolve("sd3", Some("stabilityai/stable-diffusion-3.5-large"));
        assert_eq!(large.family().map(|f| f.name), Some("sd35-large"));
        assert_eq!(large.advice(), None);
        assert_eq!(
            large.family().map(|f| f.components[0].bytes()),
            Some(16_200_000_000)
        );
        let medium = resolve("sd3", Some("stabilityai/stable-diffusion-3.5-medium"));
        assert_eq!(medium.family().map(|f| f.name), Some("sd35-medium"));
        let sd3 = resolve(
            "sd3",
            Some("stabilityai/stable-diffusion-3-medium-diffusers"),
        );
        assert_eq!(sd3.family().map(|f| f.name), Some("sd3"));
        assert_eq!(sd3.advice(), None);
        // A local folder named like the release, with `_` for `-`.
        let local = resolve("sd3", Some("/models/SD3.5_Large_Turbo"));
        assert_eq!(local.family().map(|f| f.name), Some("sd35-large"));
        // A name that does not tell: SD3 Medium is assumed, and the advice says so.
        let unsure = resolve("sd3", Some("/models/my-finetune"));
        assert_eq!(unsure.family().map(|f| f.name), Some("sd3"));
        let advice = unsure.advice().expect("the assumption is reported");
        assert_eq!(advice.rule, "model-assumed");
        assert!(
            advice
                .advice
                .starts_with("assumed Stable Diffusion 3 Medium")
        );
        assert!(
            advice.reason.contains("\"/models/my-finetune\""),
            "{}",
            advice.reason
        );
        assert!(
            advice.reason.contains("Stable Diffusion 3.5 Large"),
            "{}",
            advice.reason
        );
        assert!(resolve("sd3", None).advice().is_some());
    }

    #[test]
    fn name_or_path_is_read_where_the_config_reader_finds_the_model() {
        let tmp = tempfile::tempdir().expect("tmp");
        let job = tmp.path().join("job.yaml");
        std::fs::write(
            &job,
            "job: extension\nconfig:\n  process:\n    - type: x\n    - model:\n        name_or_path: stabilityai/stable-diffusion-3.5-large\n        arch: sd3\n",
        )
        .expect("write");
        assert_eq!(
            name_or_path_of(&job).as_deref(),
            Some("stabilityai/stable-diffusion-3.5-large")
        );
        let plain = tmp.path().join("plain.yaml");
        std::fs::write(&plain, "datasets: []\nmodel:\n  name_or_path: a/b\n").expect("write");
        assert_eq!(name_or_path_of(&plain).as_deref(), Some("a/b"));
        std::fs::write(&plain, "datasets: []\n").expect("write");
        assert_eq!(name_or_path_of(&plain), None);
        assert_eq!(name_or_path_of(tmp.path()), None);
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
