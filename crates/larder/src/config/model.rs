//! The model a job trains, as far as the data path cares: the bucket divisibility.
//!
//! AI Toolkit ignores a dataset's `bucket_tolerance` in training and overwrites it with the
//! model's divisibility (VAE downscale times the transformer's patch size). The table follows AI
//! Toolkit's model classes; see docs/config.md.

use super::extract::At;
use super::yaml::Node;
use crate::Result;

/// Bucket divisibility when neither a model nor `larder.divisibility` says otherwise: the value
/// AI Toolkit uses for its default architecture (SD 1.5) and for SDXL.
pub const DEFAULT_DIVISIBILITY: u32 = 16;

/// Returns the bucket divisibility AI Toolkit uses for the architecture `arch`, or `None` when
/// the name is not known.
pub fn divisibility_for_arch(arch: &str) -> Option<u32> {
    // "flux:some-tag" names a variant of "flux"; AI Toolkit drops the tag.
    let arch = arch.split(':').next().unwrap_or(arch);
    Some(match arch {
        "sd1" | "sd2" | "sdxl" | "ssd" | "vega" | "pixart" | "pixart_sigma" | "auraflow"
        | "lumina2" => 16,
        "sd3" | "flux" | "flex1" | "flex2" => 32,
        "flux_kontext" | "hidream" | "hidream_e1" | "omnigen2" | "wan21" | "wan21_i2v"
        | "wan22_14b" | "wan22_14b_i2v" | "flux2" | "krea2" => 16,
        "chroma"
        | "qwen_image"
        | "qwen_image_edit"
        | "qwen_image_edit_plus"
        | "wan22_5b"
        | "z_image"
        | "ltx2"
        | "anima" => 32,
        _ => return None,
    })
}

/// The legacy boolean flags of the `model` section, in the order AI Toolkit tests them.
const LEGACY_FLAGS: [(&str, &str); 10] = [
    ("is_v2", "sd2"),
    ("is_v3", "sd3"),
    ("is_xl", "sdxl"),
    ("is_pixart", "pixart"),
    ("is_pixart_sigma", "pixart_sigma"),
    ("is_auraflow", "auraflow"),
    ("is_flux", "flux"),
    ("is_lumina2", "lumina2"),
    ("is_vega", "vega"),
    ("is_ssd", "ssd"),
];

/// Reads the architecture named by a `model` section: `arch`, else the first legacy `is_*`
/// flag that is set, else `sd1`, as AI Toolkit derives it.
pub(crate) fn arch_of(at: &At<'_>, model: &Node) -> Result<(String, u64)> {
    at.map(model)?;
    if let Some(node) = model.get("arch")
        && let Some(arch) = at.child("arch").opt_string(node)?
    {
        return Ok((arch, node.line));
    }
    for (flag, arch) in LEGACY_FLAGS {
        if let Some(node) = model.get(flag)
            && at.child(flag).bool(node)?
        {
            return Ok((arch.to_owned(), node.line));
        }
    }
    Ok(("sd1".to_owned(), model.line))
}
