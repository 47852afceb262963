//! The keys each section of a config may hold, and "did you mean" hints for the others.
//!
//! AI Toolkit reads every section with `dict.get`, so a misspelt key is silently ignored and
//! its default takes over: `modle:` trains with divisibility 16 instead of Flux's 32, and
//! `dataset:` trains on nothing. larder knows the keys of every section whose keys it reads
//! and warns about the others, naming the closest known key.
//!
//! The lists follow AI Toolkit's readers: `toolkit/job.py` (job types), the `get_conf` calls of
//! `jobs/*Job.py` (`config`), of `jobs/process/*.py` and `extensions_built_in/**` (processes),
//! and `ModelConfig` and `DatasetConfig` in `toolkit/config_modules.py`. Sections larder does
//! not read (`train`, `network`, `save`, `sample`, `logging`, `meta`, ...) are not checked: their
//! key sets change with every AI Toolkit release, and a warning about a valid key would teach
//! users to ignore warnings.

use super::ConfigWarning;
use super::extract::At;
use super::yaml::Node;
use crate::Result;

/// Top-level keys of an AI Toolkit job file, plus larder's own section.
pub(crate) const JOB_FILE: &[&str] = &["job", "config", "meta", "larder"];

/// Top-level keys of a plain `datasets:` file.
pub(crate) const PLAIN_FILE: &[&str] = &["datasets", "model", "larder"];

/// The values of `job` that `toolkit/job.py` accepts.
pub(crate) const JOB_TYPES: &[&str] = &["extract", "train", "mod", "generate", "extension"];

/// Keys of the `config` section, read by the job classes.
pub(crate) const CONFIG: &[&str] = &[
    "name",
    "process",
    "training_folder",
    "device",
    "log_dir",
    "is_v2",
    "dtype",
    "base_model",
    "extract_model",
    "extract_unet",
    "extract_text_encoder",
    "output_folder",
    "gradient_accumulation_steps",
    "mixed_precision",
];

/// Keys of one `config.process[i]` entry: the union over AI Toolkit's process types (trainers,
/// sliders, extractors, generators, mergers), since a key valid for one type is no typo.
pub(crate) const PROCESS: &[&str] = &[
    "type",
    "name",
    "datasets",
    "model",
    "network",
    "train",
    "save",
    "sample",
    "first_sample",
    "logging",
    "trigger_word",
    "guidance",
    "embedding",
    "decorator",
    "adapter",
    "device",
    "training_folder",
    "training_seed",
    "log_dir",
    "performance_log_every",
    "sqlite_db_path",
    "torch_profiler",
    "do_lorm",
    "lorm",
    "lorm_extract_mode",
    "lorm_extract_mode_param",
    "slider",
    "replacements",
    "caption",
    "dtype",
    "output_folder",
    "output_path",
    "input_path",
    "save_path",
    "save_dtype",
    "filename",
    "mode",
    "linear",
    "conv",
    "generate",
    "base_model",
    "extract_model",
    "extract_unet",
    "extract_text_encoder",
    "models_to_merge",
    "copy_inputs_to",
    "replace_meta",
    "scale_target",
    "current_weight",
    "target_weight",
    "is_v2",
    "is_xl",
    "only_if_contains",
    "blocks_to_train",
    "resolution",
    "batch_size",
    "learning_rate",
    "optimizer",
    "optimizer_params",
    "max_steps",
    "epochs",
    "save_every",
    "sample_every",
    "sample_sources",
    "sample_resolution",
    "log_every",
    "gradient_accumulation_steps",
    "mixed_precision",
    "augmentations",
    "random_scaling",
    "rescale",
    "dropout",
    "pretrained_path",
    "train_encoder",
    "upscale_sample",
    "zoom",
    "vae_path",
    "vae_type",
    "vae_config",
    "target_latent_vae_path",
    "eq_vae",
    "disable_cp",
    "use_critic",
    "critic",
    "critic_weight",
    "use_sparse_bias",
    "sparsity",
    "content_weight",
    "style_weight",
    "clip_weight",
    "tv_weight",
    "pattern_weight",
    "mse_weight",
    "mae_weight",
    "kld_weight",
    "lpips_weight",
    "lpm_weight",
    "ltv_weight",
    "mv_loss_weight",
];

/// Keys of a `model` section (`ModelConfig`).
pub(crate) const MODEL: &[&str] = &[
    "name_or_path",
    "arch",
    "is_v2",
    "is_v3",
    "is_xl",
    "is_pixart",
    "is_pixart_sigma",
    "is_auraflow",
    "is_flux",
    "is_lumina2",
    "is_ssd",
    "is_vega",
    "is_v_pred",
    "use_flux_cfg",
    "dtype",
    "vae_path",
    "refiner_name_or_path",
    "refiner_start_at",
    "lora_path",
    "assistant_lora_path",
    "inference_lora_path",
    "unconditional_lora_path",
    "latent_space_version",
    "use_text_encoder_1",
    "use_text_encoder_2",
    "experimental_xl",
    "text_encoder_bits",
    "unet_path",
    "unet_sample_size",
    "vae_device",
    "vae_dtype",
    "te_device",
    "te_dtype",
    "quantize",
    "quantize_te",
    "qtype",
    "qtype_te",
    "low_vram",
    "attn_masking",
    "ignore_if_contains",
    "only_if_contains",
    "quantize_kwargs",
    "split_model_over_gpus",
    "split_model_other_module_param_count_scale",
    "te_name_or_path",
    "auto_memory",
    "layer_offloading",
    "layer_offloading_transformer_percent",
    "layer_offloading_text_encoder_percent",
    "extras_name_or_path",
    "accuracy_recovery_adapter",
    "compile",
    "block_compile",
    "compile_mode",
    "compile_fullgraph",
    "compile_dynamic",
    "cache_size_limit",
    "model_kwargs",
    "model_paths",
    "in_context",
];

/// Keys of larder's own top-level `larder:` section.
pub(crate) const LARDER: &[&str] = &[
    "seed",
    "store",
    "divisibility",
    "bucket_strategy",
    "kohya_buckets",
    "bucket_list",
    "max_image_pixels",
    "raw_control_images",
    "temporal_compression",
];

/// Keys of one `datasets:` entry: AI Toolkit's `DatasetConfig` and larder's own. Every key here
/// has a branch in `dataset::parse_dataset` (a unit test there checks it).
pub(crate) const DATASET: &[&str] = &[
    // AI Toolkit keys larder acts on or validates.
    "folder_path",
    "dataset_path",
    "type",
    "caption_ext",
    "caption_type",
    "default_caption",
    "trigger_word",
    "random_triggers",
    "random_triggers_max",
    "replacements",
    "caption_dropout_rate",
    "token_dropout_rate",
    "keep_tokens",
    "shuffle_tokens",
    "use_short_captions",
    "resolution",
    "bucket_tolerance",
    "buckets",
    "scale",
    "random_crop",
    "square_crop",
    "flip_x",
    "flip_y",
    "num_repeats",
    "batch_size",
    "control_path",
    "control_path_1",
    "control_path_2",
    "control_path_3",
    "control_transparent_color",
    "full_size_control_images",
    "mask_path",
    "alpha_mask",
    "invert_mask",
    "mask_min_value",
    "inpaint_path",
    "is_reg",
    "network_weight",
    "loss_multiplier",
    "cache_latents",
    "cache_latents_to_disk",
    "cache_text_embeddings",
    "cache_clip_vision_to_disk",
    "num_workers",
    "persistent_workers",
    "prefetch_factor",
    "gpu_prefetch_batches",
    "fast_image_size",
    "num_frames",
    "shrink_video_to_frames",
    "fps",
    "do_i2v",
    "auto_frame_count",
    "trim_auto_frame_count_tail",
    "do_audio",
    "audio_normalize",
    "control_from_same_folder",
    "num_controls_from_same_folder",
    "clip_image_path",
    // AI Toolkit keys read, typed and stored, not acted on yet.
    "prior_reg",
    "diff_output_preservation",
    "diff_output_preservation_class",
    "cache_tensors_to_disk",
    "cache_latents_num_workers",
    // AI Toolkit keys larder does not implement yet (a warning when set).
    "audio_preserve_pitch",
    "augments",
    "augmentations",
    "shuffle_augmentations",
    "clip_image_from_same_folder",
    "clip_image_augmentations",
    "clip_image_shuffle_augmentations",
    "unconditional_path",
    "controls",
    "random_scale",
    "standardize_images",
    "extra_values",
    "guidance_type",
    "poi",
    "replay_transforms",
    "load_image_when_caching_latents",
    "resize_method",
    "debug",
    // larder's own.
    "seed",
    "bucket_strategy",
    "kohya_buckets",
    "bucket_list",
    "max_image_pixels",
];

/// The entry of `known` that `word` most likely misspells, if any is close enough.
///
/// Closeness is the optimal-string-alignment distance (a swapped pair of letters is one edit,
/// so `arhc` is one edit from `arch`): at most one edit for names of up to four letters, two for
/// longer ones. Ties go to the candidate of the same length (`modle` is `model`, not `mode`).
pub(crate) fn did_you_mean<'k>(word: &str, known: &[&'k str]) -> Option<&'k str> {
    let len = word.chars().count();
    known
        .iter()
        .filter_map(|k| {
            let klen = k.chars().count();
            let limit = if klen <= 4 { 1 } else { 2 };
            let d = distance(word, k);
            (d > 0 && d <= limit).then_some((d, klen.abs_diff(len), *k))
        })
        .min()
        .map(|(_, _, k)| k)
}

/// `" (did you mean `X`?)"` when `word` is close to an entry of `known`, else nothing.
pub(crate) fn hint(word: &str, known: &[&str]) -> String {
    did_you_mean(word, known)
        .map(|k| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default()
}

/// Warns once for each key of the mapping `node` at `at` that is not in `known`.
pub(crate) fn warn_unknown(
    at: &At<'_>,
    node: &Node,
    known: &[&str],
    warnings: &mut Vec<ConfigWarning>,
) -> Result<()> {
    for (key, _) in at.map(node)? {
        let name = key.as_key().unwrap_or_default();
        if !known.contains(&name) {
            warnings.push(unknown_in(&at.child(name), key, known));
        }
    }
    Ok(())
}

/// The warning for the unknown key `key` of a section whose keys are `known`.
pub(crate) fn unknown_in(at: &At<'_>, key: &Node, known: &[&str]) -> ConfigWarning {
    let name = key.as_key().unwrap_or_default();
    ConfigWarning::new(
        at,
        key.line,
        format!("unknown key, ignored{}", hint(name, known)),
    )
}

/// Optimal string alignment distance: insertions, deletions, substitutions and swaps of two
/// neighbouring characters each count one.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Three rows of the dynamic-programming table: two back, one back, current.
    let mut two: Vec<usize> = vec![0; b.len() + 1];
    let mut one: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (one[j - 1] + cost).min(one[j] + 1).min(cur[j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cur[j] = cur[j].min(two[j - 2] + 1);
            }
        }
        two = std::mem::replace(&mut one, cur);
    }
    one[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_find_the_key_they_misspell() {
        assert_eq!(did_you_mean("modle", PROCESS), Some("model"));
        assert_eq!(did_you_mean("dataset", PROCESS), Some("datasets"));
        assert_eq!(did_you_mean("arhc", MODEL), Some("arch"));
        assert_eq!(
            did_you_mean("shufle_tokens", DATASET),
            Some("shuffle_tokens")
        );
        assert_eq!(did_you_mean("num_frame", DATASET), Some("num_frames"));
        assert_eq!(
            did_you_mean("max_image_pixel", LARDER),
            Some("max_image_pixels")
        );
        assert_eq!(did_you_mean("confg", JOB_FILE), Some("config"));
        // Far from everything: no guess.
        assert_eq!(did_you_mean("colour_grading", DATASET), None);
        // Short names allow one edit only.
        assert_eq!(did_you_mean("xy", &["type"]), None);
    }

    #[test]
    fn distance_counts_a_swap_as_one_edit() {
        assert_eq!(distance("arhc", "arch"), 1);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("same", "same"), 0);
    }

    #[test]
    fn lists_have_no_duplicates() {
        for list in [
            JOB_FILE, PLAIN_FILE, JOB_TYPES, CONFIG, PROCESS, MODEL, LARDER, DATASET,
        ] {
            let mut sorted = list.to_vec();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), list.len(), "{list:?}");
        }
    }
}
