//! Planning: repeats, flips, resolutions, random crops.

use larder::{Config, Flip, Plan, scan};

use crate::{file, image};

fn plan_for(yaml: &str, images: &[(&str, u32, u32)]) -> (Config, Plan) {
    let dir = tempfile::tempdir().expect("tempdir");
    for &(name, w, h) in images {
        image(&dir.path().join("imgs"), name, w, h, Some("c"));
    }
    let config = Config::load(file(dir.path(), "c.yaml", yaml)).expect("config");
    let report = scan(&config).expect("scan");
    let plan = Plan::new(&config, &report).expect("plan");
    (config, plan)
}

#[test]
fn repeats_then_flip_x_then_flip_y_in_ai_toolkit_order() {
    let (_, plan) = plan_for(
        "datasets:\n  - folder_path: imgs\n    num_repeats: 2\n    flip_x: true\n    flip_y: true\n",
        &[("a.jpg", 64, 64), ("b.jpg", 64, 32)],
    );
    let order: Vec<(usize, u32, Flip)> = plan
        .items
        .iter()
        .map(|i| (i.image, i.repeat, i.flip))
        .collect();
    let block = |f| vec![(0, 0, f), (1, 0, f), (0, 1, f), (1, 1, f)];
    let expected: Vec<_> = [Flip::None, Flip::X, Flip::Y, Flip::XY]
        .into_iter()
        .flat_map(block)
        .collect();
    assert_eq!(order, expected);
}

#[test]
fn each_resolution_is_its_own_dataset() {
    // 128x64 at 32 (d=16): s = 0.354, sides 2.83 and 1.41 steps; of 32x16, 32x32, 48x16 (48x32
    // is over 32²), 32x32 hits the 1024-pixel target. At 64: 80x48 (3840) is closest to 4096.
    let (_, plan) = plan_for(
        "datasets:\n  - folder_path: imgs\n    resolution: [32, 64]\n",
        &[("a.jpg", 128, 64)],
    );
    let got: Vec<(u32, String)> = plan
        .items
        .iter()
        .map(|i| (i.resolution, i.placement.bucket.to_string()))
        .collect();
    assert_eq!(
        got,
        vec![(32, "32x32".to_owned()), (64, "80x48".to_owned())]
    );
}

#[test]
fn random_crops_are_seeded_per_item_and_stable_when_images_are_added() {
    let yaml = "datasets:\n  - folder_path: imgs\n    random_crop: true\n    num_repeats: 8\n    resolution: 64\n    seed: 5\n";
    let (_, a) = plan_for(yaml, &[("a.jpg", 300, 100)]);
    let (_, again) = plan_for(yaml, &[("a.jpg", 300, 100)]);
    assert_eq!(a, again);
    let crops: std::collections::HashSet<(u32, u32)> = a
        .items
        .iter()
        .map(|i| (i.placement.crop_x, i.placement.crop_y))
        .collect();
    assert!(
        crops.len() > 1,
        "every repeat draws its own crop: {crops:?}"
    );
    let (_, more) = plan_for(yaml, &[("a.jpg", 300, 100), ("0_first.jpg", 50, 50)]);
    let a_in_more: Vec<_> = more
        .items
        .iter()
        .filter(|i| i.image == 1)
        .map(|i| i.placement)
        .collect();
    assert_eq!(
        a_in_more,
        a.items.iter().map(|i| i.placement).collect::<Vec<_>>()
    );
    let (_, other_seed) = plan_for(&yaml.replace("seed: 5", "seed: 6"), &[("a.jpg", 300, 100)]);
    assert_ne!(a, other_seed);
}

#[test]
fn scale_can_leave_an_image_too_small_which_is_a_finding() {
    let (_, plan) = plan_for(
        "datasets:\n  - folder_path: imgs\n    scale: 0.01\n",
        &[("a.jpg", 50, 50), ("b.jpg", 400, 400)],
    );
    assert_eq!(plan.items.len(), 1);
    assert_eq!(plan.findings.len(), 1);
    assert_eq!(plan.findings[0].kind, larder::FindingKind::TooSmall);
}

#[test]
fn square_crop_and_unbucketed_datasets_give_resolution_squares() {
    let (_, plan) = plan_for(
        "datasets:\n  - folder_path: imgs\n    square_crop: true\n    resolution: 64\n  - folder_path: imgs\n    buckets: false\n    resolution: 32\n",
        &[("a.jpg", 100, 50)],
    );
    let got: Vec<String> = plan
        .items
        .iter()
        .map(|i| i.placement.bucket.to_string())
        .collect();
    assert_eq!(got, vec!["64x64", "32x32"]);
}
