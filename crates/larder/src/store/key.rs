//! Content-addressed keys.
//!
//! An entry's key is a BLAKE3 hash of everything that determines its bytes: the source file's
//! content (not its name), the geometry (bucket, resize size, crop, flip), the field and its
//! parameters, the codec, and the identity of the pipeline that produced it. Equal keys mean
//! equal tensors, so a prepare computes exactly the entries whose key is not stored yet: edit an
//! image and only its entries get new keys; change a parameter and only the entries it reaches
//! do; change nothing and nothing is computed.

use crate::plan::{Flip, Placement};

/// Hex digits kept from the 256-bit hash: 128 bits, ample against accidental collisions.
const KEY_HEX: usize = 32;

/// A key built from length-prefixed parts, so that no two different part lists hash alike.
#[derive(Debug)]
pub(crate) struct KeyBuilder(blake3::Hasher);

impl KeyBuilder {
    pub fn new(domain: &str) -> Self {
        let mut k = KeyBuilder(blake3::Hasher::new());
        k.part(domain.as_bytes());
        k
    }

    pub fn part(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.update(&(bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
        self
    }

    pub fn text(&mut self, s: &str) -> &mut Self {
        self.part(s.as_bytes())
    }

    pub fn num(&mut self, n: u64) -> &mut Self {
        self.part(&n.to_le_bytes())
    }

    pub fn finish(&self) -> String {
        self.0.finalize().to_hex()[..KEY_HEX].to_owned()
    }
}

/// The key of an item's geometry: which source content, cut how. Items that are repeats of one
/// image with the same crop share it, and so share their stored tensors.
pub(crate) fn item_key(content_hash: &str, placement: &Placement, flip: Flip) -> String {
    KeyBuilder::new("larder/item/v1")
        .text(content_hash)
        .num(placement.bucket.width.into())
        .num(placement.bucket.height.into())
        .num(placement.scale_to_width.into())
        .num(placement.scale_to_height.into())
        .num(placement.crop_x.into())
        .num(placement.crop_y.into())
        .text(flip.name())
        .finish()
}

/// The key of one field of an item: the item key plus the field, the content of the field's own
/// source file (a mask or control image), its conversion parameters, the codec and the pipeline.
pub(crate) fn entry_key(
    item_key: &str,
    field: &str,
    source_hash: &str,
    params: &str,
    codec: &str,
    pipeline: &str,
) -> String {
    KeyBuilder::new("larder/entry/v1")
        .text(item_key)
        .text(field)
        .text(source_hash)
        .text(params)
        .text(codec)
        .text(pipeline)
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Bucket;

    fn placement(crop_x: u32) -> Placement {
        Placement {
            bucket: Bucket {
                width: 64,
                height: 64,
            },
            scale_to_width: 80,
            scale_to_height: 64,
            crop_x,
            crop_y: 0,
        }
    }

    #[test]
    fn every_parameter_changes_the_key() {
        let base = item_key("abc", &placement(8), Flip::None);
        assert_eq!(base.len(), 32);
        assert_eq!(base, item_key("abc", &placement(8), Flip::None));
        assert_ne!(base, item_key("abd", &placement(8), Flip::None));
        assert_ne!(base, item_key("abc", &placement(9), Flip::None));
        assert_ne!(base, item_key("abc", &placement(8), Flip::X));
        let e = entry_key(&base, "pixels", "abc", "", "u8", "p1");
        assert_ne!(e, entry_key(&base, "mask", "abc", "", "u8", "p1"));
        assert_ne!(e, entry_key(&base, "pixels", "abc", "", "u8+zstd:3", "p1"));
        assert_ne!(e, entry_key(&base, "pixels", "abc", "", "u8", "p2"));
        assert_ne!(e, entry_key(&base, "pixels", "abc", "invert", "u8", "p1"));
    }

    #[test]
    fn parts_are_length_prefixed() {
        let a = KeyBuilder::new("d").text("ab").text("c").finish();
        let b = KeyBuilder::new("d").text("a").text("bc").finish();
        assert_ne!(a, b);
    }
}
