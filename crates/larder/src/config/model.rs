//! The model a job trains, as far as the data path cares: the bucket divisibility, and whether
//! it takes its control images at their own size.
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
///
/// Names are the `arch` attributes of AI Toolkit's model classes; values are what each class's
/// `get_bucket_divisibility` returns, following inheritance. The legacy `StableDiffusion` class
/// (sd1, sd2, sd3, sdxl, ssd, vega, pixart, pixart_sigma, auraflow, lumina2, flux) computes it
/// from its VAE: 2^(VAE blocks - 1) = 8, doubled for Flux and SD3, doubled again for all.
/// `BaseModel`, which CogView4 and the ACE-Step audio models inherit unchanged, returns 8.
pub fn divisibility_for_arch(arch: &str) -> Option<u32> {
    // "flux:some-tag" names a variant of "flux"; AI Toolkit drops the tag.
    let arch = arch.split(':').next().unwrap_or(arch);
    ARCHITECTURES
        .iter()
        .find(|(name, _)| *name == arch)
        .map(|(_, d)| *d)
}

/// Every architecture name AI Toolkit accepts, with its bucket divisibility (see
/// [`divisibility_for_arch`]). `flex1` is AI Toolkit's alias of `flux`.
pub(crate) const ARCHITECTURES: &[(&str, u32)] = &[
    // The legacy StableDiffusion class.
    ("sd1", 16),
    ("sd2", 16),
    ("sdxl", 16),
    ("ssd", 16),
    ("vega", 16),
    ("pixart", 16),
    ("pixart_sigma", 16),
    ("auraflow", 16),
    ("lumina2", 16),
    ("sd3", 32),
    ("flux", 32),
    ("flex1", 32),
    // BaseModel's default: the VAE's downscale, without the patch size.
    ("cogview4", 8),
    ("ace_step_15", 8),
    ("ace_step_15_xl", 8),
    // Model classes that return their own value.
    ("flex2", 16),
    ("flux_kontext", 16),
    ("flux2", 16),
    ("flux2_klein_4b", 16),
    ("flux2_klein_9b", 16),
    ("hidream", 16),
    ("hidream_e1", 16),
    ("omnigen2", 16),
    ("wan21", 16),
    ("wan21_i2v", 16),
    ("wan22_14b", 16),
    ("wan22_14b_i2v", 16),
    ("krea2", 16),
    ("zimage", 16),
    ("zimage_l2p", 16),
    ("f-lite", 16),
    ("ideogram4", 16),
    ("boogu_image", 16),
    ("boogu_image_edit", 16),
    ("mageflow", 16),
    ("mageflow_edit", 16),
    ("prx_pixel", 16),
    ("chroma", 32),
    ("chroma_radiance", 32),
    ("zeta_chroma", 32),
    ("qwen_image", 32),
    ("qwen_image_edit", 32),
    ("qwen_image_edit_plus", 32),
    ("wan22_5b", 32),
    ("ltx2", 32),
    ("ltx2.3", 32),
    ("ltx2.5", 32),
    ("anima", 32),
    ("hidream_o1", 32),
    ("nucleus_image", 32),
    ("ernie_image", 32),
    ("minimax_h3", 32),
    ("minimax_h3_ref2va", 32),
];

/// Architectures whose AI Toolkit class sets `use_raw_control_images`: their control images
/// reach the model uncropped at their own size, one list per item (`control_tensor_list`).
const RAW_CONTROL_ARCHITECTURES: &[&str] = &[
    "qwen_image_edit_plus",
    "flux2",
    "flux2_klein_4b",
    "flux2_klein_9b",
    "boogu_image_edit",
    "mageflow_edit",
    "minimax_h3_ref2va",
];

/// Returns true if and only if the model of architecture `arch`, configured by the `model`
/// section `model`, takes its control images at their own size, as its AI Toolkit class
/// says: always for the classes in [`RAW_CONTROL_ARCHITECTURES`], and for Krea 2 when
/// `model_kwargs.edit` is set (its edit mode).
pub(crate) fn takes_raw_control_images(arch: &str, model: &Node) -> bool {
    let arch = arch.split(':').next().unwrap_or(arch);
    let krea2_edit = || {
        model
            .get("model_kwargs")
            .and_then(|k| k.get("edit"))
            .is_some_and(|edit| matches!(edit.value, super::yaml::Value::Bool(true)))
    };
    RAW_CONTROL_ARCHITECTURES.contains(&arch) || (arch == "krea2" && krea2_edit())
}

/// Frames per latent frame of the VAE of the model of architecture `arch`, where its AI Toolkit
/// class does not leave AI Toolkit's default of 8: Wan's VAE compresses time by 4
/// (`scale_factor_temporal`).
pub(crate) fn temporal_compression(arch: &str) -> Option<u32> {
    arch.split(':')
        .next()
        .unwrap_or(arch)
        .starts_with("wan")
        .then_some(4)
}

/// Returns true if and only if the model of architecture `arch` counts frames on a grid of its
/// own (its AI Toolkit class has `get_frame_count_snapper`): MiniMax H3.
pub(crate) fn own_frame_grid(arch: &str) -> bool {
    arch.split(':')
        .next()
        .unwrap_or(arch)
        .starts_with("minimax_h3")
}

/// The known architecture closest to a misspelt one, for error messages.
pub(crate) fn arch_hint(arch: &str) -> String {
    let names: Vec<&str> = ARCHITECTURES.iter().map(|(n, _)| *n).collect();
    super::keys::hint(arch.split(':').next().unwrap_or(arch), &names)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn divisibility_matches_ai_toolkit_model_classes() {
        // One of each source of the value: the legacy class (doubled for Flux), BaseModel's
        // default, a class constant, a VAE-times-patch product, and a tagged name.
        assert_eq!(divisibility_for_arch("sdxl"), Some(16));
        assert_eq!(divisibility_for_arch("flux"), Some(32));
        assert_eq!(divisibility_for_arch("flex1"), Some(32));
        assert_eq!(divisibility_for_arch("cogview4"), Some(8));
        assert_eq!(divisibility_for_arch("flex2"), Some(16));
        assert_eq!(divisibility_for_arch("zimage"), Some(16));
        assert_eq!(divisibility_for_arch("ltx2.3"), Some(32));
        assert_eq!(divisibility_for_arch("zeta_chroma"), Some(32));
        assert_eq!(divisibility_for_arch("mageflow_edit"), Some(16));
        assert_eq!(divisibility_for_arch("f-lite"), Some(16));
        assert_eq!(divisibility_for_arch("qwen_image:edit-2509"), Some(32));
    }

    #[test]
    fn names_ai_toolkit_does_not_register_are_unknown() {
        // AI Toolkit's Z-Image class is `zimage`; `z_image` falls through to the SD 1.5 loader.
        assert_eq!(divisibility_for_arch("z_image"), None);
        assert_eq!(arch_hint("z_image"), " (did you mean `zimage`?)");
        // The example model is not in AI_TOOLKIT_MODELS.
        assert_eq!(divisibility_for_arch("example"), None);
    }

    #[test]
    fn every_architecture_is_listed_once() {
        let mut names: Vec<&str> = ARCHITECTURES.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ARCHITECTURES.len());
    }

    #[test]
    fn raw_control_images_follow_the_model_class() {
        let model = |text: &str| super::super::yaml::parse(text).expect("valid yaml");
        let plain = model("arch: x\n");
        assert!(takes_raw_control_images("qwen_image_edit_plus", &plain));
        assert!(takes_raw_control_images("flux2_klein_4b", &plain));
        assert!(takes_raw_control_images(
            "qwen_image_edit_plus:2511",
            &plain
        ));
        // Qwen-Image-Edit (not Plus) and Kontext resize controls to the target's bucket.
        assert!(!takes_raw_control_images("qwen_image_edit", &plain));
        assert!(!takes_raw_control_images("flux_kontext", &plain));
        // Krea 2 takes them raw in its edit mode only.
        assert!(!takes_raw_control_images("krea2", &plain));
        let edit = model("arch: krea2\nmodel_kwargs:\n  edit: true\n");
        assert!(takes_raw_control_images("krea2", &edit));
        for name in RAW_CONTROL_ARCHITECTURES {
            assert!(
                divisibility_for_arch(name).is_some(),
                "{name} is a known architecture"
            );
        }
    }
}
